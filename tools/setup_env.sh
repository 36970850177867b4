#!/usr/bin/env bash
# Build (once) and link the Python environment mmoverlock is tested in: the CPU lock (requirements/lock/).
#
# The environment lives in a cache outside the checkout so a fresh clone (CI, a new worktree) reuses it:
#   - the venv folder is keyed by the compiled core (lock/cpu-core.txt + lock/mmcv-build.txt: torch, and mmcv
#     compiled from source against it, ~10 min);
#   - the rest (lock/cpu.txt, lock/cpu-nodeps.txt, the torchvision shim) is re-synced when its own hash changes.
# torch: pip takes the newest build the pin matches, so a local CPU wheel (a `+cpu` local version, e.g. in
# PIP_FIND_LINKS) wins over PyPI's CUDA build; TORCH_INDEX_URL (e.g. PyTorch's CPU index) adds an index for it.
# The script says which build it installed.
# Env: MMOVERLOCK_CACHE (default ~/.cache/mmoverlock), PYTHON (the interpreter the venv is made from, default
# python3), MAX_JOBS (mmcv build), TORCH_INDEX_URL.
set -euo pipefail

source "$(dirname "$0")/env/common.sh"
lock_files=($lock/cpu-core.txt $lock/cpu.txt $lock/cpu-nodeps.txt)
venv="$cache/venv-py$pyver-$(cat $lock/cpu-core.txt $lock/mmcv-build.txt | sha256sum | cut -c1-12)"
rest_key=$(cat $lock/cpu.txt $lock/cpu-nodeps.txt tools/env/torchvision_cpu_shim.py | sha256sum | cut -c1-12)
torch_index=()
if [ -n "${TORCH_INDEX_URL:-}" ]; then torch_index=(--extra-index-url "$TORCH_INDEX_URL"); fi

if [ ! -f "$venv/.core-complete" ]; then
    echo "[setup_env] building $venv (first use on this machine: mmcv compiles, ~10 min)"
    rm -rf "$venv"
    mkdir -p "$cache"
    "$python" -m venv "$venv"
    vpip install "${torch_index[@]}" "$(pin torch)" "$(pin wheel)" "$(pin numpy)"
    "$venv/bin/python" -c 'import torch; print("[setup_env] torch", torch.__version__, "(CUDA " + torch.version.cuda
                           + " build: GBs of CUDA libraries this CPU environment does not use; TORCH_INDEX_URL can"
                           + " point at a CPU-only index)" if torch.version.cuda else "(CPU-only build)")'
    # mmcv 2.1.0 ships only sources: compile its C++ ops against the torch above, with the old setuptools its
    # build needs (pip notes that torch wants a newer one; the run-time setuptools is restored right after).
    vpip install -r $lock/mmcv-build.txt 2>&1 | grep -v "dependency conflicts\|requires setuptools" || true
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        vpip install --no-build-isolation "$(pin mmcv)" "$(pin mmengine)" "$(pin opencv-python)" "$(pin numpy)"
    vpip install "${torch_index[@]}" "$(pin setuptools)" "$(pin torch)"
    "$venv/bin/python" -c 'import mmcv.ops; print("[setup_env] mmcv", mmcv.__version__, "built with ops")'
    touch "$venv/.core-complete"
fi

if [ "$(cat "$venv/.rest-key" 2>/dev/null)" != "$rest_key" ]; then
    echo "[setup_env] syncing $lock/cpu.txt and $lock/cpu-nodeps.txt into $venv"
    pins $lock/cpu.txt > "$venv/.reqs"
    vpip install "${torch_index[@]}" -r "$venv/.reqs" "$(pin torch)" "$(pin numpy)" "$(pin opencv-python)"
    # without their dependencies: torchvision and timm would otherwise pull another torch
    pins $lock/cpu-nodeps.txt > "$venv/.reqs-nodeps"
    vpip install --no-deps -r "$venv/.reqs-nodeps"
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    cp tools/env/torchvision_cpu_shim.py "$site/_mmoverlock_torchvision_shim.py"
    echo "import _mmoverlock_torchvision_shim" > "$site/_mmoverlock_torchvision_shim.pth"
    "$venv/bin/python" -c 'import torchvision, timm, mmdet.models, mmseg.models, mmpretrain.models' \
        && echo "[setup_env] mmdet, mmseg, mmpretrain, timm import"
    echo "$rest_key" > "$venv/.rest-key"
fi

link_venv .venv
tools/env/fetch_timm_tests.sh "$cache" "$venv/bin/python"   # timm's model tests, for tests/test_timm_suite.py
