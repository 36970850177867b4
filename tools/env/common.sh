# Sourced by tools/setup_env.sh and tools/setup_env_compat.sh: what both environment builders share.
# Sets root (the checkout, also the working directory), lock, python, cache and pyver; the caller sets
# lock_files (the lock files pin() reads) and venv before calling pin / vpip / link_venv.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
lock=requirements/lock
python=${PYTHON:-python3}
cache=${MMOVERLOCK_CACHE:-$HOME/.cache/mmoverlock}
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

pin() { grep -hE "^$1==" "${lock_files[@]}" | head -n1; }
pins() { grep -vE '^(#|$)' "$1"; }
vpip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }

# link_venv LINK: link $venv as LINK in the checkout and install this checkout into it, editable, unless the
# (shared) venv already points at this checkout
link_venv() {
    ln -sfn "$venv" "$1"
    local here
    here=$(cd / && "$root/$1/bin/python" -c \
           'import mmoverlock, os; print(os.path.dirname(os.path.dirname(mmoverlock.__file__)))' 2>/dev/null || true)
    if [ "$here" != "$root" ]; then
        "$root/$1/bin/python" -m pip --disable-pip-version-check -q install --no-deps --no-build-isolation \
            -e . >/dev/null
    fi
}
