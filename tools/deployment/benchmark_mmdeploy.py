"""Speed of an mmdeploy ONNX Runtime model against PyTorch eager on CPU, both measured in one process.

    python tools/deployment/benchmark_mmdeploy.py DEPLOY_CFG MODEL_CFG CKPT IMG --onnx end2end.onnx
        [--threads 1] [--warmup 3] [--repeats 20]

DEPLOY_CFG / MODEL_CFG / CKPT / IMG: as given to mmdeploy's ``tools/deploy.py``; ``--onnx``: the graph it
wrote (``WORK_DIR/end2end.onnx``). CKPT may be ``none`` (the config's initial weights). Both models come from
mmdeploy's task processor and take the same data (IMG through the model config's test pipeline, the deploy
config's input shape): PyTorch runs mmdet's / mmseg's ``test_step`` (preprocessing, the model, its
postprocessing), ONNX Runtime runs mmdeploy's backend model's ``test_step`` (preprocessing, the graph, mmdeploy's
postprocessing: masks pasted into the image). The two alternate, ``--repeats`` times each after ``--warmup``,
so that load from other processes falls on both alike. ``--threads``: torch's intra-op threads and the ONNX
Runtime session's.

Prints the median and interquartile range of each in ms and the ratio PyTorch / ONNX Runtime, and how many
detections above score 0.3 (or pixels, for segmentation) the two share.
"""
import argparse
import statistics
import sys
from typing import List, Optional

try:
    import mmoverlock.cli.quiet_warnings  # noqa: F401  (first: third-party import warnings)
except ImportError as err:   # a python without the environment: one line, not a traceback
    raise SystemExit(f"benchmark_mmdeploy.py: error: {err} ({sys.executable}); run the tools with the "
                     f"environment's python: source .venv/bin/activate (made by make env)") from None
from mmoverlock.cli.errors import one_line_errors
from mmoverlock.utils.timing import Stopwatch

TOOL = 'benchmark_mmdeploy'


def parse_args(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('deploy_cfg')
    parser.add_argument('model_cfg')
    parser.add_argument('checkpoint', help="a .pth file, or 'none' for the config's initial weights")
    parser.add_argument('img', help='the image both models run on')
    parser.add_argument('--onnx', required=True, help='the ONNX file mmdeploy wrote (WORK_DIR/end2end.onnx)')
    parser.add_argument('--threads', type=int, default=1, help='intra-op threads of torch and ONNX Runtime')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=20)
    args = parser.parse_args(argv)
    for name in ('threads', 'repeats'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} {getattr(args, name)}: must be >= 1')
    if args.warmup < 0:
        parser.error(f'--warmup {args.warmup}: must be >= 0')
    return args


def ort_session(onnx_file: str, threads: int):
    """A CPU session of ``onnx_file`` with ``threads`` intra-op threads, all graph optimisations."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_file, options, providers=['CPUExecutionProvider'])


def use_session(backend_model, sess) -> None:
    """Run mmdeploy's backend model on ``sess`` (mmdeploy's ORT wrapper makes its own with all threads)."""
    wrapper = backend_model.wrapper
    wrapper.sess = sess
    wrapper.io_binding = sess.io_binding()
    wrapper._input_metas = {i.name: i for i in sess.get_inputs()}


def agreement(torch_result, ort_result, score_thr: float = 0.3) -> str:
    """How far the two outputs agree, in one line."""
    import torch
    if 'pred_instances' in torch_result:
        a, b = torch_result.pred_instances, ort_result.pred_instances
        a, b = a[a.scores > score_thr], b[b.scores > score_thr]
        line = f'detections above score {score_thr}: PyTorch {len(a)}, ONNX Runtime {len(b)}'
        if len(a) == len(b) and len(a):
            a, b = a[a.scores.argsort(descending=True)], b[b.scores.argsort(descending=True)]
            line += (f'; max |box diff| {(a.bboxes - b.bboxes.to(a.bboxes)).abs().max().item():.2e} px, '
                     f'max |score diff| {(a.scores - b.scores.to(a.scores)).abs().max().item():.2e}, '
                     f'labels equal: {torch.equal(a.labels, b.labels.to(a.labels))}')
            if 'masks' in a and 'masks' in b:
                diff = (a.masks.bool() != b.masks.to(a.masks.device).bool()).sum().item()
                line += f', mask pixels differing {diff} of {a.masks.bool().sum().item()}'
        return line
    a, b = torch_result.pred_sem_seg.data, ort_result.pred_sem_seg.data.to(torch_result.pred_sem_seg.data)
    return f'pixels with the same class: {(a == b).float().mean().item() * 100:.2f}%'


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    with one_line_errors(f'tools/deployment/{TOOL}.py', __file__):
        return run(args)


def run(args) -> dict:
    import torch
    from mmdeploy.apis.utils import build_task_processor
    from mmdeploy.utils import get_input_shape, load_config

    torch.set_num_threads(args.threads)
    deploy_cfg, model_cfg = load_config(args.deploy_cfg, args.model_cfg)
    processor = build_task_processor(model_cfg, deploy_cfg, 'cpu')
    checkpoint = None if args.checkpoint.lower() == 'none' else args.checkpoint
    torch_model = processor.build_pytorch_model(checkpoint).eval()
    backend_model = processor.build_backend_model([args.onnx], processor.update_data_preprocessor)
    use_session(backend_model, ort_session(args.onnx, args.threads))
    data, inputs = processor.create_input(args.img, get_input_shape(deploy_cfg))
    times = {'PyTorch': [], 'ONNX Runtime': []}
    models = {'PyTorch': torch_model, 'ONNX Runtime': backend_model}
    results = {}
    with torch.no_grad():
        for i in range(args.warmup + args.repeats):
            for name, model in models.items():
                with Stopwatch() as watch:
                    results[name] = model.test_step(data)[0]
                if i >= args.warmup:
                    times[name].append(watch.ms)
    shape = tuple((inputs[0] if isinstance(inputs, (list, tuple)) else inputs).shape)
    print(f'{TOOL}: input {shape}, {args.threads} thread(s), {args.repeats} runs each after '
          f'{args.warmup} warm-up, alternating')
    summary = {}
    for name, values in times.items():
        q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0], ) * 3
        summary[name] = median
        print(f'{TOOL}: {name:<13} median {median:8.1f} ms  (interquartile {q1:.1f}-{q3:.1f})')
    summary['ratio'] = summary['PyTorch'] / summary['ONNX Runtime']
    print(f'{TOOL}: PyTorch / ONNX Runtime = {summary["ratio"]:.2f}x')
    print(f'{TOOL}: {agreement(results["PyTorch"], results["ONNX Runtime"])}')
    return summary


if __name__ == '__main__':
    main()
