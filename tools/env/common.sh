# Sourced by tools/setup_env.sh and tools/setup_env_compat.sh: what both environment builders share.
#
# Each checkout gets its own venv (.venv, .venv-compat) inside it, with this checkout installed editable, so two
# clones never run each other's code. The venv is built from a cache shared by all checkouts on the machine
# ($MMOVERLOCK_CACHE, default ~/.cache/mmoverlock), which makes a build in a new checkout take seconds:
#   - uv-<version>/: uv (pinned in requirements/lock/uv.txt), the installer, itself installed from PyPI on first use;
#   - uv/: uv's package cache (UV_CACHE_DIR): every locked package downloaded once, then hard-linked into each
#     venv (copied where the checkout is on another file system);
#   - wheels/mmcv-<mmcv>-torch<torch>-py<python>/: mmcv compiled with its ops against that torch build, once
#     (~10 min on 2 cores), in a throw-away build venv, with pip against the locked torch.
# uv does not read pip's configuration: the find-links that pip has (PIP_FIND_LINKS, pip.conf; e.g. a directory
# holding a local torch CPU wheel) are passed to it, so it installs what pip would.
# A venv is rebuilt from scratch (seconds when the cache is warm) when its key changes: the lock files, the
# builder scripts, the python, the torch index or find-links, or the checkout's path.
#
# Sets root (the checkout, also the working directory), lock, python, cache and pyver. The caller sets tag (the
# log prefix), venv (the venv's path), lock_files (installed with their dependencies; pin() reads them),
# nodeps_files (installed without), key_files (more inputs of the key), and may define lane_extras (run in the
# new venv after the installs), import_check (python statements the finished venv must run) and cuda_torch_note
# (printed after the torch line when the installed torch is a CUDA build), then calls build_env.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
script="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$root"
lock=requirements/lock
python=${PYTHON:-python3}
cache=${MMOVERLOCK_CACHE:-$HOME/.cache/mmoverlock}
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
uv_version=$(sed -n 's/^uv==//p' $lock/uv.txt)
nodeps_files=()
key_files=()
import_check=
cuda_torch_note=

export UV_CACHE_DIR="$cache/uv" UV_PYTHON_DOWNLOADS=never UV_NO_CONFIG=1
uv="$cache/uv-$uv_version/bin/uv"

pin() { grep -hE "^$1==" "${lock_files[@]}" | head -n1; }
pins() { grep -hvE '^(#|$)' "$@"; }
vpip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }
log() { echo "[$tag] $*"; }

# pip's find-links (environment and configuration files), for uv
find_links=()
for link in $("$python" -m pip config list 2>/dev/null | sed -n "s/^[^=]*\.find-links='\(.*\)'$/\1/p" | tr ' ' '\n' \
              | sort -u); do
    find_links+=(--find-links "$link")
done
index_args=("${find_links[@]}")
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    # the best version over both indexes: a `+cpu` build there beats PyPI's build of the same version
    index_args+=(--extra-index-url "$TORCH_INDEX_URL" --index-strategy unsafe-best-match)
fi

# uv_install PYTHON ARGS...: uv pip install into the venv of PYTHON, with the index options above
uv_install() {
    local target=$1
    shift
    "$uv" pip install --quiet --python "$target" "${index_args[@]}" "$@"
}

# with_lock NAME COMMAND...: run COMMAND holding $cache/.lock-NAME (two checkouts building at once wait for
# each other instead of building the same thing twice)
with_lock() {
    local name=$1
    shift
    mkdir -p "$cache"
    (
        flock 9
        "$@"
    ) 9>"$cache/.lock-$name"
}

install_uv() {
    [ -x "$uv" ] && return 0
    log "installing uv $uv_version into $cache (first use)"
    rm -rf "$cache/uv-$uv_version"
    "$python" -m venv "$cache/uv-$uv_version"
    "$cache/uv-$uv_version/bin/python" -m pip --disable-pip-version-check -q install "uv==$uv_version"
}

# build_mmcv_wheel TORCH OUT: compile mmcv (the locked version, with its ops) against torch==TORCH into the folder
# OUT. A build venv with that torch and the old setuptools mmcv's setup.py needs (lock/mmcv-build.txt, with
# ninja for a parallel build), pip wheel without build isolation (against that torch), no pip cache (a cached
# mmcv wheel may have been compiled against another torch), no debug information (-g0: the compile is ~1/3
# faster, the code the same).
build_mmcv_wheel() {
    local torch_version=$1 out=$2
    [ -n "$(ls "$out"/mmcv-*.whl 2>/dev/null)" ] && return 0
    local build="$cache/build/$(basename "$out")" start=$SECONDS
    log "compiling $(pin mmcv) against torch $torch_version (once per torch build: ~10 min on 2 cores)"
    rm -rf "$build" "$out.tmp"
    "$uv" venv --quiet --seed --python "$python" "$build"
    uv_install "$build/bin/python" "torch==$torch_version" "$(pin numpy)"
    # without dependencies: newer torch asks a newer setuptools at run time, which the build does not need
    uv_install "$build/bin/python" --no-deps -r $lock/mmcv-build.txt
    PATH="$build/bin:$PATH" MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} CFLAGS="${CFLAGS:-} -g0" \
        "$build/bin/python" -m pip --disable-pip-version-check -q wheel --no-deps --no-build-isolation \
        --no-cache-dir "$(pin mmcv)" -w "$out.tmp"
    mv "$out.tmp" "$out"
    rm -rf "$build"
    log "mmcv compiled in $((SECONDS - start)) s: $(ls "$out")"
}

env_key() {
    {
        cat "${lock_files[@]}" "${nodeps_files[@]}" "${key_files[@]}" $lock/uv.txt $lock/mmcv-build.txt \
            tools/env/common.sh "$script"
        echo "$root" "$(command -v "$python")" "$pyver" "${TORCH_INDEX_URL:-}" "${find_links[*]}"
    } | sha256sum | cut -c1-16
}

# build_env: make $venv up to date (see the top of this file)
build_env() {
    local key start=$SECONDS
    key=$(env_key)
    if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.mmoverlock-env-key" 2>/dev/null)" = "$key" ]; then
        return 0
    fi
    log "building $venv"
    if [ -L "$venv" ]; then
        log "(replacing the link to a shared venv of an earlier layout, $(readlink "$venv"), which stays as it is)"
        rm "$venv"
    fi
    rm -rf "$venv"
    with_lock uv install_uv
    "$uv" venv --quiet --seed --python "$python" "$venv"
    # torch first: its build names the mmcv wheel
    uv_install "$venv/bin/python" "$(pin torch)" "$(pin numpy)"
    # torch_version: the distribution's (2.1.2 for PyPI's CUDA 12.1 build, whose torch.__version__ is 2.1.2+cu121)
    local torch_version torch_build torch_cuda
    read -r torch_version torch_build torch_cuda < <("$venv/bin/python" -c \
        'import importlib.metadata as m, torch; print(m.version("torch"), torch.__version__, torch.version.cuda)')
    if [ "$torch_cuda" = None ]; then
        log "torch $torch_build (CPU-only build)"
    else
        log "torch $torch_build (CUDA $torch_cuda build$cuda_torch_note)"
    fi
    local wheels="$cache/wheels/mmcv-$(pin mmcv | sed 's/^mmcv==//')-torch$torch_version-py$pyver"
    with_lock "$(basename "$wheels")" build_mmcv_wheel "$torch_version" "$wheels"
    pins "${lock_files[@]}" | grep -v '^mmcv==' > "$venv/.requirements.txt"
    uv_install "$venv/bin/python" -r "$venv/.requirements.txt" "$(ls "$wheels"/mmcv-*.whl)"
    if [ ${#nodeps_files[@]} -gt 0 ]; then
        pins "${nodeps_files[@]}" > "$venv/.requirements-nodeps.txt"
        uv_install "$venv/bin/python" --no-deps -r "$venv/.requirements-nodeps.txt"
    fi
    if declare -F lane_extras >/dev/null; then lane_extras; fi
    uv_install "$venv/bin/python" --no-deps --no-build-isolation -e "$root"
    (cd / && "$venv/bin/python" -c "$import_check
import mmcv.ops, mmoverlock
print('[$tag] mmcv', mmcv.__version__, 'with its ops; mmoverlock imported from', mmoverlock.__file__)")
    echo "$cache" > "$venv/.mmoverlock-cache"
    echo "$key" > "$venv/.mmoverlock-env-key"
    log "$venv built in $((SECONDS - start)) s"
}
