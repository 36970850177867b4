#!/usr/bin/env bash
# Distributed testing with torchrun, as mmdet's tools/dist_test.sh:
#   tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py options, e.g. --eval bbox segm]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR and PORT from the environment.
# torchrun runs as mmoverlock.cli.launch (torchrun itself; a failed process ends the run in one line: the
# process's own error, then the launcher's, exit status 1, no tracebacks).
# PYTHON: the interpreter (default: python on PATH); the environment's is .venv/bin/python (make env):
#   PYTHON=.venv/bin/python tools/dist_test.sh ...   (or source .venv/bin/activate first)
# Before torchrun starts the processes, one process checks what can be checked without them (the python has
# torch and mmoverlock, the config, its data paths, the checkpoint file: test.py --check-only) and says what is
# wrong in one line.
set -e
if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT GPUS [test.py options]" >&2
    exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-python}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "$0: error: PYTHON=$PYTHON is not a command; run the tools with the environment's python:" \
         "PYTHON=.venv/bin/python $0 ... (make env builds it), or source .venv/bin/activate first" >&2
    exit 1
fi
# the checks before the Runner, once (the processes repeat them, silently when they pass)
PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
"$PYTHON" "$(dirname "$0")/test.py" "$CONFIG" "$CHECKPOINT" --check-only "${@:4}" || exit $?

PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
"$PYTHON" -m mmoverlock.cli.launch \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$(dirname "$0")/test.py" \
    "$CONFIG" \
    "$CHECKPOINT" \
    --launcher pytorch "${@:4}"
