#!/usr/bin/env bash
# Build (once) and link the compatibility environment: torch 2.1 + its Triton 2.1 + mmcv 2.1.0
# (requirements/lock/compat-core.txt, compat.txt), the oldest stack mmoverlock supports (docs/compat.md).
#
# Cached like tools/setup_env.sh's main environment, beside it:
#   - the venv folder (compat-venv-py<ver>-<hash>) is keyed by lock/compat-core.txt (torch, triton, and mmcv
#     compiled from source against that torch, ~10 min);
#   - the rest (lock/compat.txt) is re-synced when its own hash changes.
# mmcv is built with --no-cache-dir: pip's wheel cache may hold an mmcv 2.1.0 wheel compiled against the main
# lane's torch, whose C++ ops would not load against torch 2.1.
# Linked as .venv-compat. Env: MMOVERLOCK_CACHE (default ~/.cache/mmoverlock), PYTHON (default python3),
# MAX_JOBS (mmcv build).
set -euo pipefail

source "$(dirname "$0")/env/common.sh"
lock_files=($lock/compat-core.txt $lock/compat.txt)
venv="$cache/compat-venv-py$pyver-$(sha256sum < $lock/compat-core.txt | cut -c1-12)"
rest_key=$(sha256sum < $lock/compat.txt | cut -c1-12)

if [ ! -f "$venv/.core-complete" ]; then
    echo "[setup_env_compat] building $venv (first use on this machine: mmcv compiles, ~10 min)"
    start=$(date +%s)
    rm -rf "$venv"
    mkdir -p "$cache"
    "$python" -m venv "$venv"
    vpip install "$(pin torch)" "$(pin triton)" "$(pin setuptools)" "$(pin wheel)" "$(pin numpy)"
    "$venv/bin/python" -c 'import torch; print("[setup_env_compat] torch", torch.__version__, "CUDA", torch.version.cuda)'
    # mmcv 2.1.0 ships only sources: compile its C++ ops against torch 2.1, never reusing a cached wheel.
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        vpip install --no-cache-dir --no-build-isolation "$(pin mmcv)" "$(pin mmengine)" "$(pin opencv-python)" \
        "$(pin numpy)" "$(pin torch)"
    "$venv/bin/python" -c 'import mmcv.ops; print("[setup_env_compat] mmcv", mmcv.__version__, "built with ops")'
    touch "$venv/.core-complete"
    echo "[setup_env_compat] core built in $(( $(date +%s) - start )) s"
fi

if [ "$(cat "$venv/.rest-key" 2>/dev/null)" != "$rest_key" ]; then
    echo "[setup_env_compat] syncing $lock/compat.txt into $venv"
    pins $lock/compat.txt > "$venv/.reqs"
    vpip install -r "$venv/.reqs" "$(pin torch)" "$(pin triton)" "$(pin numpy)" "$(pin opencv-python)" \
        "$(pin setuptools)"
    "$venv/bin/python" -c 'import torchvision, mmdet.models, mmseg.models, mmpretrain.models' \
        && echo "[setup_env_compat] mmdet, mmseg, mmpretrain import"
    echo "$rest_key" > "$venv/.rest-key"
fi

link_venv .venv-compat
"$root/.venv-compat/bin/python" -c 'import torch, triton; print("[setup_env_compat] torch", torch.__version__,
                                    "triton", triton.__version__)'
