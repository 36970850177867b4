#!/usr/bin/env bash
# Build (once) and link the Python environment mmoverlock is tested in.
#
# The environment lives in a cache outside the checkout so a fresh clone (CI, a new worktree) reuses it:
#   - the venv folder is keyed by requirements/core.txt (torch + mmcv compiled from source, ~10 min);
#   - the rest (requirements/pins.txt, the torchvision shim) is re-synced when its own hash changes.
# Env: MMOVERLOCK_CACHE (default ~/.cache/mmoverlock), PYTHON (default python3), MAX_JOBS (mmcv build).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
cache=${MMOVERLOCK_CACHE:-$HOME/.cache/mmoverlock}
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
venv="$cache/venv-py$pyver-$(sha256sum < requirements/core.txt | cut -c1-12)"
rest_key=$(cat requirements/pins.txt tools/env/torchvision_cpu_shim.py | sha256sum | cut -c1-12)

pin() { grep -hE "^$1==" requirements/core.txt requirements/pins.txt | head -n1; }
vpip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }

if [ ! -f "$venv/.core-complete" ]; then
    echo "[setup_env] building $venv (first use on this machine: mmcv compiles, ~10 min)"
    rm -rf "$venv"
    mkdir -p "$cache"
    "$python" -m venv "$venv"
    vpip install "$(pin torch)" "$(pin wheel)" "$(pin numpy)"
    # mmcv 2.1.0 ships only sources: compile its C++ ops against the torch above, with an old setuptools
    # (pip notes that torch wants a newer one; the run-time setuptools is restored right after).
    vpip install "$(sed -n 's/^# mmcv-build: //p' requirements/core.txt)" 2>&1 \
        | grep -v "dependency conflicts\|requires setuptools" || true
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        vpip install --no-build-isolation "$(pin mmcv)" "$(pin mmengine)" "$(pin opencv-python)" "$(pin numpy)"
    vpip install "$(pin setuptools)" "$(pin torch)"
    "$venv/bin/python" -c 'import mmcv.ops; print("[setup_env] mmcv", mmcv.__version__, "built with ops")'
    touch "$venv/.core-complete"
fi

if [ "$(cat "$venv/.rest-key" 2>/dev/null)" != "$rest_key" ]; then
    echo "[setup_env] syncing requirements/pins.txt into $venv"
    # torchvision without its deps: it would otherwise pull another torch.
    grep -vE '^(#|$|torchvision==)' requirements/pins.txt > "$venv/.reqs"
    vpip install -r "$venv/.reqs" "$(pin torch)" "$(pin numpy)" "$(pin opencv-python)"
    vpip install --no-deps "$(pin torchvision)"
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    cp tools/env/torchvision_cpu_shim.py "$site/_mmoverlock_torchvision_shim.py"
    echo "import _mmoverlock_torchvision_shim" > "$site/_mmoverlock_torchvision_shim.pth"
    "$venv/bin/python" -c 'import torchvision, mmdet.models, mmseg.models, mmpretrain.models' \
        && echo "[setup_env] mmdet, mmseg, mmpretrain import"
    echo "$rest_key" > "$venv/.rest-key"
fi

ln -sfn "$venv" .venv
# Editable install of this checkout, redone only when the shared venv points at another checkout.
here=$(cd / && "$root/.venv/bin/python" -c 'import mmoverlock, os; print(os.path.dirname(os.path.dirname(mmoverlock.__file__)))' \
       2>/dev/null || true)
if [ "$here" != "$root" ]; then
    "$root/.venv/bin/python" -m pip --disable-pip-version-check -q install --no-deps --no-build-isolation -e . >/dev/null
fi
