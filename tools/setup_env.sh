#!/usr/bin/env bash
# Build .venv, this checkout's own Python environment for mmoverlock, from the CPU lock (requirements/lock/):
# torch 2.13 CPU, mmcv 2.1.0 compiled with its ops, the OpenMMLab task libraries, timm, triton, and this
# checkout, editable. Built from the cache described in tools/env/common.sh: the first build on a machine
# compiles mmcv (~10 min on 2 cores); a new checkout then takes seconds, and an up-to-date one returns at once.
# torch: uv takes the newest build the pin matches, so a local CPU wheel (a `+cpu` local version, in pip's
# find-links, e.g. PIP_FIND_LINKS) wins over PyPI's CUDA build; TORCH_INDEX_URL (e.g. PyTorch's CPU index)
# adds an index for it. The script says which build it installed.
# Env: MMOVERLOCK_CACHE (default ~/.cache/mmoverlock), PYTHON (the interpreter the venv is made from, default
# python3), MAX_JOBS (mmcv build), TORCH_INDEX_URL.
set -euo pipefail

source "$(dirname "$0")/env/common.sh"
tag=setup_env
venv="$root/.venv"
lock_files=($lock/cpu-core.txt $lock/cpu.txt)
# without their dependencies: torchvision and timm would otherwise pull another torch
nodeps_files=($lock/cpu-nodeps.txt)
key_files=(tools/env/torchvision_cpu_shim.py)
import_check='import torchvision, timm, mmdet.models, mmseg.models, mmpretrain.models'
cuda_torch_note=": GBs of CUDA libraries this CPU environment does not use; TORCH_INDEX_URL can point at a CPU-only index"

lane_extras() {
    local site
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    cp tools/env/torchvision_cpu_shim.py "$site/_mmoverlock_torchvision_shim.py"
    echo "import _mmoverlock_torchvision_shim" > "$site/_mmoverlock_torchvision_shim.pth"
}

build_env
tools/env/fetch_timm_tests.sh "$cache" "$venv/bin/python"   # timm's model tests, for tests/test_timm_suite.py
