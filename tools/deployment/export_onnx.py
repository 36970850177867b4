"""Export an OverLoCK model to ONNX (opset 17, dynamic batch/height/width, or a fixed height/width) and check it
with onnxruntime.

The backbone is re-parameterised (``switch_to_deploy()``) first. ContMix exports as standard ops: the
neighbourhood aggregation as a Slice/Pad/Mul/Add tap loop, the region pooling and the small-map resize rule
as branch-free shape arithmetic, so one graph is right for maps both below and above the kernel size.

What is exported (without ``--backbone-only``):

* mmseg (EncoderDecoder): backbone + neck + decode head, logits resized to the input: (B, classes, H, W);
* mmpretrain (ImageClassifier): class logits (B, classes);
* mmdet: backbone + neck features (``extract_feat``). Two-stage heads with RoIAlign / NMS need mmdeploy's
  custom-op rewriting and are not exported by this script.

    python tools/deployment/export_onnx.py CONFIG CKPT --shape 512 512 [--out F] [--backbone-only]
    python tools/deployment/export_onnx.py CONFIG CKPT --shape 224 224 --fixed-size   # one input size, faster

``--fixed-size`` exports for the ``--shape`` height and width only (the batch stays dynamic): ContMix's
aggregation of small maps (stage 3 and 4 at classification sizes) becomes per-window MatMuls or one dense
matrix instead of the k*k-tap chain, and the small-map resize rule is resolved at export; onnxruntime runs
OverLoCK-T at 224x224 1.5x faster (docs/benchmarks.md). The check then runs at the export size only.

CKPT may be ``none`` (the config's initial weights: for checking the export, not for deployment).
"""
import argparse
import os.path as osp
import sys
import time
from typing import List, Optional

try:
    import mmoverlock.cli.quiet_warnings  # noqa: F401  (first: third-party import warnings)
except ImportError as err:   # a python without the environment: one line, not a traceback
    raise SystemExit(f"export_onnx.py: error: {err} ({sys.executable}); run the tools with the environment's "
                     f"python: source .venv/bin/activate (made by make env)") from None
from mmoverlock.cli.errors import one_line_errors
from mmoverlock.deploy.onnx import (OPSET, build_model, check_shape, export, export_target, half_size,
                                    ort_session)

TOOL = 'export_onnx'


def parse_args(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint', help="a .pth file, or 'none' for the config's initial weights")
    parser.add_argument('--shape', type=int, nargs=2, required=True, metavar=('H', 'W'), help='export input size')
    parser.add_argument('--check-shape', type=int, nargs=2, default=None, metavar=('H', 'W'),
                        help='second size checked with onnxruntime (default: half the export size, each side '
                             'at least 32)')
    parser.add_argument('--out', default=None, help='ONNX file (default: <config name>.onnx)')
    parser.add_argument('--backbone-only', action='store_true', help='export the backbone (its out_indices maps)')
    parser.add_argument('--fixed-size', action='store_true',
                        help='export for the --shape height and width only (dynamic batch): faster in onnxruntime')
    args = parser.parse_args(argv)
    if args.fixed_size and args.check_shape:
        parser.error(f'--check-shape {args.check_shape[0]} {args.check_shape[1]}: a --fixed-size graph runs at '
                     f'--shape {args.shape[0]} {args.shape[1]} only; drop one of the two')
    for value in args.shape + (args.check_shape or []):
        if value < 32:
            parser.error(f'--shape/--check-shape {value}: each side must be >= 32 (the backbone has stride 32)')
    return args


def say(message: str) -> None:
    print(f'{TOOL}: {message}', flush=True)


def main(argv: Optional[List[str]] = None) -> List[dict]:
    """Each phase says what it starts and, when done, how long it took: a real-size model spends minutes in
    the export and in the onnxruntime checks."""
    args = parse_args(argv)
    out = args.out or osp.splitext(osp.basename(args.config))[0] + ('_backbone' if args.backbone_only else '') + '.onnx'
    shapes = [list(args.shape)] + ([] if args.fixed_size else [list(args.check_shape or half_size(args.shape))])
    with one_line_errors(f'tools/deployment/{TOOL}.py', __file__):
        t0 = time.perf_counter()
        say(f'building the model of {args.config} (weights: {args.checkpoint}) ...')
        model = build_model(args.config, args.checkpoint)
        net = export_target(model, args.backbone_only)
        say(f'model built and re-parameterised in {time.perf_counter() - t0:.1f} s')

        t0 = time.perf_counter()
        axes = 'dynamic batch, fixed height/width' if args.fixed_size else 'dynamic batch/height/width'
        say(f'exporting to {out} at 1x3x{shapes[0][0]}x{shapes[0][1]} (opset {OPSET}, {axes}; '
            f'minutes for a real-size model) ...')
        export(net, shapes[0], out, fixed_size=args.fixed_size)
        say(f'exported {out} ({osp.getsize(out) / 2**20:.1f} MB) in {time.perf_counter() - t0:.1f} s')

        t0 = time.perf_counter()
        session = ort_session(out)
        say(f'loaded into onnxruntime in {time.perf_counter() - t0:.1f} s')
        results = []
        for shape in shapes:
            t0 = time.perf_counter()
            say(f'checking onnxruntime vs PyTorch at {shape[0]}x{shape[1]} ...')
            r = check_shape(net, session, shape)
            say(f"onnxruntime vs PyTorch at {shape[0]}x{shape[1]}: max abs error {r['max_abs_err']:.3e} "
                f"(output scale {r['output_scale']:.3g}) in {time.perf_counter() - t0:.1f} s")
            results.append(r)
    return results


if __name__ == '__main__':
    main()
