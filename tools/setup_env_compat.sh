#!/usr/bin/env bash
# Build .venv-compat, this checkout's compatibility environment: torch 2.1 + its Triton 2.1 + mmcv 2.1.0
# (requirements/lock/compat-core.txt, compat.txt), the oldest stack mmoverlock supports (docs/compat.md), with
# this checkout installed editable. Built from the same cache as tools/setup_env.sh's .venv
# (tools/env/common.sh): torch is PyPI's CUDA 12.1 build (~3.5 GB, downloaded once into the cache), and mmcv is
# compiled against it once into its own wheel (the wheel is keyed by the torch build, so the main lane's never
# serves here). Env: MMOVERLOCK_CACHE (default ~/.cache/mmoverlock), PYTHON (default python3), MAX_JOBS (mmcv
# build).
set -euo pipefail

source "$(dirname "$0")/env/common.sh"
tag=setup_env_compat
venv="$root/.venv-compat"
lock_files=($lock/compat-core.txt $lock/compat.txt)
import_check='import torchvision, mmdet.models, mmseg.models, mmpretrain.models'

build_env
"$venv/bin/python" -c 'import torch, triton; print("[setup_env_compat] torch", torch.__version__, "triton",
                       triton.__version__)'
