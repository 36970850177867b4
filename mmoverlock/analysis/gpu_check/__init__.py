"""The GPU check: ContMix's aggregation and OverLoCK training on one GPU, in one command and one table.

``tools/analysis/gpu_check.py`` is its command line (``--rows``, ``--device``, ...; its docstring has the commands).
Each row is a module named for what it checks; ``--rows`` names them by letter:

* **a** -- :mod:`~mmoverlock.analysis.gpu_check.aggregation`: ``na2d_av`` forward+backward at the Focus-Net
  stage-3/4 shapes (Triton kernels, the CPU kernels on the device, unfold, a cuDNN depthwise conv, bias+softmax);
* **b** -- :mod:`~mmoverlock.analysis.gpu_check.backbone_training`: a training step of the OverLoCK-T detection
  backbone against ConvNeXt-T, AMP off and on;
* **c** -- :mod:`~mmoverlock.analysis.gpu_check.detector`: one training iteration of the shipped Cascade Mask
  R-CNN OverLoCK-T (needs mmdet and mmcv's compiled ops);
* **d** -- :mod:`~mmoverlock.analysis.gpu_check.determinism`: the op's and the backbone's results bitwise equal
  over two runs (ops non-deterministic by design named);
* **e** -- :mod:`~mmoverlock.analysis.gpu_check.depthwise`: the backbone's depthwise convs by PyTorch, Triton, the
  FFT weight gradient and the automatic choice; the training step with ``depthwise_choice`` 'auto' and 'torch';
* **f** -- :mod:`~mmoverlock.analysis.gpu_check.kernel_selfcheck`: the fused kernels' first-use check, per dtype.

Time is the median of ``--repeats`` runs after ``--warmup`` (:func:`mmoverlock.utils.timing.measure`, CUDA
synchronised; Triton's compilation falls in the warm-up); memory is ``torch.cuda.max_memory_allocated`` growth over
the inputs (CUDA only). A row that cannot run says why in its note. Rows are printed as they finish; a row that
raises becomes a 'failed' line and the run exits non-zero at the end, so a crash loses no finished row. Rows a, b
and d need only torch, triton, numpy and mmengine (and mmoverlock); row c needs mmdet and mmcv. On a CPU
(``--device cpu``) the non-Triton rows run, for checking the script (at 224x224, batch 1, fp32, one run), and row
f under Triton's interpreter (``TRITON_INTERPRET=1``, Triton >= 3.0).
"""
import argparse
import json
import sys
from typing import List, Optional

import torch

from mmoverlock.utils.timing import Stopwatch

from . import aggregation, backbone_training, depthwise, detector, determinism, kernel_selfcheck
from .common import DTYPES, feature_size, training_step  # noqa: F401  (public names of the check)
from .determinism import nondeterministic_ops  # noqa: F401

# ----------------------------------------------------------------------------------------------- main
ROWS = {'a': aggregation.rows, 'b': backbone_training.rows, 'c': detector.rows, 'd': determinism.rows,
        'e': depthwise.rows, 'f': kernel_selfcheck.rows}
#: the rows a plain run measures, in order: the first-use check before any row has compiled its kernels
DEFAULT_ROWS = ['f', 'a', 'b', 'c', 'd', 'e']


TABLE_HEADER = ['| row | case | implementation | dtype | ms | peak MiB | note |', '|---|---|---|---|---:|---:|---|']


def format_rows(rows: List[dict]) -> List[str]:
    """The table lines of ``rows`` (no header)."""
    lines = []
    for r in rows:
        ms = f"{r['ms']:.2f}" if 'ms' in r else '-'
        peak = f"{r['peak_mib']:.0f}" if r.get('peak_mib') is not None else '-'
        lines.append(f"| {r['row']} | {r['case']} | {r.get('impl', '-')} | {r.get('dtype', '-')} | {ms} | {peak} | "
                     f"{r.get('note', '')} |")
    return lines


#: what a run measures unless told: the COCO training batch on a GPU; a quick check of the script on a CPU
GPU_DEFAULTS = dict(image=(800, 1333), batch=2, dtypes=list(DTYPES), warmup=2, repeats=5)
CPU_DEFAULTS = dict(image=(224, 224), batch=1, dtypes=['fp32'], warmup=0, repeats=1)


def parse_args(argv=None, description: Optional[str] = None):
    """The command line's arguments, with the defaults of the device filled in (``description``: the --help
    text, the tool's docstring)."""
    parser = argparse.ArgumentParser(prog='gpu_check.py', description=description or __doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda', help="'cuda' (default) or 'cpu' (the non-Triton rows)")
    parser.add_argument('--rows', nargs='+', default=DEFAULT_ROWS, choices=list(ROWS),
                        help=f"default {' '.join(DEFAULT_ROWS)} (row f first: its time is the first use's)")
    parser.add_argument('--image', type=int, nargs=2, metavar=('H', 'W'), help='default 800 1333 (CPU: 224 224)')
    parser.add_argument('--batch', type=int, help='default 2 (CPU: 1)')
    parser.add_argument('--dtypes', nargs='+', choices=list(DTYPES), help='default fp32 bf16 (CPU: fp32)')
    parser.add_argument('--warmup', type=int, help='default 2 (CPU: 0)')
    parser.add_argument('--repeats', type=int, help='default 5 (CPU: 1)')
    parser.add_argument('--json', help='also write the rows to this file')
    args = parser.parse_args(argv)
    if args.device not in ('cpu', 'cuda'):
        parser.error(f"--device {args.device!r}: expected 'cuda' or 'cpu'")
    defaults = CPU_DEFAULTS if args.device == 'cpu' else GPU_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device here; use --device cpu for the non-Triton rows')
    return args


def main(argv=None, description: Optional[str] = None) -> List[dict]:
    """Run the rows ``argv`` asks for (the tool's command line), print the table, return the rows."""
    args = parse_args(argv, description)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    print(f'# gpu_check on {name}: torch {torch.__version__}, image {args.image[0]}x{args.image[1]}, batch '
          f'{args.batch}, median of {args.repeats} after {args.warmup} warm-up', flush=True)
    # each row's lines are printed (and the JSON rewritten) as soon as the row finishes, so a row that fails
    # loses nothing measured before it; its failure becomes a line of the table and the run exits non-zero
    print('\n'.join(TABLE_HEADER), flush=True)
    rows, failed = [], []
    for key in args.rows:
        watch = Stopwatch()
        try:
            with watch:
                new = ROWS[key](args, device)
        except Exception as err:   # a failing row must not lose the others: reported, then the exit code
            first = str(err).strip().splitlines()[0] if str(err).strip() else ''
            new = [dict(row=key, case='-', note=f'failed: {type(err).__name__}: {first}')]
            failed.append(key)
        rows += new
        print('\n'.join(format_rows(new)), flush=True)
        print(f'# row {key}: {watch.ms / 1e3:.0f} s', file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(dict(device=name, torch=torch.__version__, args=vars(args), rows=rows), f, indent=1)
    if failed:
        raise SystemExit(f'gpu_check: row(s) {" ".join(failed)} failed (see the table); the other rows are above')
    return rows
