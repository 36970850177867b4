"""Deployed OverLoCK against mmpretrain's ConvNeXt on CPU, path by path, in one process (issue #36's table).

For each pair (OverLoCK-T / ConvNeXt-T, OverLoCK-S / ConvNeXt-S; classification-layout backbones returning
their last stage, OverLoCK re-parameterised with ``switch_to_deploy()``) and each thread count, the paths:

* ``fp32``: eager, channels-last input and weights, no grad;
* ``bf16``: the same under ``torch.autocast('cpu', dtype=torch.bfloat16)`` (fast only on a CPU with
  AVX512-BF16 or AMX: the tool prints which the CPU has);
* ``ort``: ONNX Runtime fp32, CPU provider, each model exported by ``mmoverlock.deploy.onnx.export``
  (``torch.onnx.export``, opset 17, TorchScript exporter; dynamic batch, height and width), the session's
  intra-op threads = the thread count;
* ``ort-fixed``: the same with each model exported for the benchmark's input size only
  (``export(..., fixed_size=True)``: dynamic batch; ContMix's small-map aggregation as per-window MatMuls);
* ``compile-fp32`` / ``compile-bf16`` (information, off unless named in ``--paths``): ``torch.compile`` with
  inductor on the fp32 / bf16 eager path (compile time not counted).

The two models of a pair alternate run by run (``--repeats`` each after ``--warmup``), so that load from
other processes falls on both alike; each row prints both medians and the ratio OverLoCK / ConvNeXt. Time is
process CPU time with one thread (robust on a shared machine), wall-clock with more. Every path's output is
compared with the model's fp32 eager output (max abs difference over the output's largest magnitude).

``--profile``: a ``torch.profiler`` profile of each model's fp32 and bf16 eager run, split into op classes
(1x1 convs / matmuls, depthwise convs, other convs, aggregation, norms, activations, casts, padding, other):
each op's self CPU time goes to the class of its outermost classified caller (a convolution's oneDNN call
to the convolution, autocast's copies to casts).

    python tools/analysis/benchmark_deploy.py                       # T and S, batch 4 at 224x224, 1 and all threads
    python tools/analysis/benchmark_deploy.py --profile --threads 1
    python tools/analysis/benchmark_deploy.py --paths fp32 bf16 ort ort-fixed compile-fp32 compile-bf16
    python tools/analysis/benchmark_deploy.py --quick               # OverLoCK-T / ConvNeXt-T, batch 1 at 64x64
"""
import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from typing import Dict, List, Optional

try:
    import mmoverlock.cli.quiet_warnings  # noqa: F401  (first: third-party import warnings)
except ImportError as err:   # a python without the environment: one line, not a traceback
    raise SystemExit(f"benchmark_deploy.py: error: {err} ({sys.executable}); run the tools with the "
                     f"environment's python: source .venv/bin/activate (made by make env)") from None
import torch

TOOL = 'benchmark_deploy'
PAIRS = {'T': ('t', 'tiny'), 'S': ('s', 'small')}
PATHS = ('fp32', 'bf16', 'ort', 'ort-fixed', 'compile-fp32', 'compile-bf16')
#: each path's largest accepted |output - fp32 eager output| / max |fp32 eager output|
TOLERANCE = {'fp32': 1e-5, 'bf16': 5e-2, 'ort': 1e-4, 'ort-fixed': 1e-4, 'compile-fp32': 1e-4,
             'compile-bf16': 5e-2}
OP_CLASSES = ('1x1 conv / matmul', 'depthwise conv', 'other conv', 'aggregation', 'norm', 'activation', 'cast',
              'padding', 'other')


def parse_args(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=list(PAIRS), choices=list(PAIRS),
                        help='OverLoCK variants, each against the ConvNeXt of its size')
    parser.add_argument('--paths', nargs='+', default=['fp32', 'bf16', 'ort', 'ort-fixed'], choices=PATHS)
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--size', type=int, default=224, help='input side in pixels')
    parser.add_argument('--threads', nargs='+', default=['1', 'all'],
                        help="intra-op thread counts: numbers or 'all' (torch's default, the cores)")
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--profile', action='store_true', help='per-op-class profile of the eager paths')
    parser.add_argument('--quick', action='store_true',
                        help='a smoke run: T only, batch 1 at 64x64, 1 warm-up and 2 runs per path')
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batch, args.size, args.warmup, args.repeats = ['T'], 1, 64, 1, 2
    for name in ('batch', 'size', 'repeats'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} {getattr(args, name)}: must be >= 1')
    if args.warmup < 0:
        parser.error(f'--warmup {args.warmup}: must be >= 0')
    threads = []
    for value in args.threads:
        if value == 'all':
            threads.append(os.cpu_count() or 1)
        elif value.isdigit() and int(value) >= 1:
            threads.append(int(value))
        else:
            parser.error(f"--threads {value}: must be a number >= 1 or 'all'")
    args.threads = list(dict.fromkeys(threads))
    return args


def cpu_summary() -> str:
    """The CPU model and whether it has the bf16 instructions autocast's speed depends on."""
    model, flags = 'unknown CPU', set()
    with contextlib.suppress(OSError), open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name') and model == 'unknown CPU':
                model = line.split(':', 1)[1].strip()
            elif line.startswith('flags') and not flags:
                flags = set(line.split(':', 1)[1].split())
    bf16 = ', '.join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in ('avx512_bf16', 'amx_bf16'))
    load = ' '.join(f'{v:.2f}' for v in os.getloadavg())
    return f'{model}, {os.cpu_count()} logical CPUs; {bf16}; load average {load}'


def build_pair(variant: str):
    """(OverLoCK deployed, ConvNeXt) backbones in eval mode, PyTorch's default init (timing only)."""
    from mmpretrain.models.backbones import ConvNeXt

    from mmoverlock import OverLoCK
    overlock_arch, convnext_arch = PAIRS[variant]
    overlock = OverLoCK(overlock_arch, out_indices=(3, ), layout='classification')
    overlock.eval()
    overlock.switch_to_deploy()
    convnext = ConvNeXt(convnext_arch)
    convnext.eval()   # mmpretrain's ConvNeXt.train() returns None: do not chain
    return {f'OverLoCK-{variant}': overlock, f'ConvNeXt-{variant}': convnext}


def last_output(outputs) -> torch.Tensor:
    """The last stage's map of a backbone's tuple output (or the first output of an ONNX Runtime run)."""
    out = outputs[-1] if isinstance(outputs, (tuple, list)) else outputs
    return torch.as_tensor(out).float()


def make_runner(path: str, model: torch.nn.Module, images: torch.Tensor, threads: int, folder: str):
    """A no-argument callable running ``model`` on ``images`` by ``path``; returns its output."""
    if path in ('ort', 'ort-fixed'):
        import onnxruntime as ort

        from mmoverlock.deploy.onnx import export
        onnx_file = os.path.join(folder, f'{type(model).__name__}_{id(model)}_{path}.onnx')
        if not os.path.exists(onnx_file):
            export(model, images.shape[-2:], onnx_file, batch=images.shape[0], fixed_size=path == 'ort-fixed')
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(onnx_file, options, providers=['CPUExecutionProvider'])
        feed = {'input': images.contiguous().numpy()}
        return lambda: session.run(None, feed)
    net = model.to(memory_format=torch.channels_last)
    inputs = images.contiguous(memory_format=torch.channels_last)
    if path.startswith('compile'):
        net = torch.compile(net, backend='inductor')
    bf16 = path.endswith('bf16')

    def run():
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            return net(inputs)
    return run


def measure_pair(runners: Dict[str, callable], warmup: int, repeats: int, cpu_time: bool) -> Dict[str, float]:
    """Median ms of each runner, the runners alternating call by call (process CPU time or wall clock)."""
    from mmoverlock.utils.timing import Stopwatch
    clock = 'process' if cpu_time else 'wall'
    times = {name: [] for name in runners}
    for i in range(warmup + repeats):
        for name, run in runners.items():
            with Stopwatch(clock=clock) as watch:
                run()
            if i >= warmup:
                times[name].append(watch.ms)
    return {name: statistics.median(values) for name, values in times.items()}


def classify(event) -> Optional[str]:
    """The op class of a profiler event, from its name (and a convolution's weight shape), or None."""
    name = event.name
    if 'na2d' in name:
        return 'aggregation'
    if name in ('aten::conv2d', 'aten::convolution', 'aten::_convolution'):
        shapes = event.input_shapes
        weight = shapes[1] if len(shapes) > 1 else []
        if len(weight) == 4 and weight[2] * weight[3] == 1:
            return '1x1 conv / matmul'
        if len(weight) == 4 and weight[1] == 1:
            return 'depthwise conv'
        return 'other conv'
    if name in ('aten::linear', 'aten::addmm', 'aten::mm', 'aten::bmm', 'aten::matmul', 'aten::baddbmm'):
        return '1x1 conv / matmul'
    if any(k in name for k in ('batch_norm', 'layer_norm', 'group_norm')):
        return 'norm'
    if any(k in name for k in ('gelu', 'relu', 'silu', 'sigmoid', 'tanh', 'softmax', 'hardswish')):
        return 'activation'
    if name in ('aten::to', 'aten::_to_copy', 'aten::copy_'):
        return 'cast'
    if 'pad' in name:
        return 'padding'
    return None


def profile_classes(run, repeats: int = 2) -> Dict[str, float]:
    """ms per run of each op class (:data:`OP_CLASSES`) in a ``torch.profiler`` profile of ``run``."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(repeats):
            run()
    totals = dict.fromkeys(OP_CLASSES, 0.)
    for event in prof.events():
        label, node = None, event
        while node is not None:   # the outermost classified caller decides
            label = classify(node) or label
            node = node.cpu_parent
        totals[label or 'other'] += event.self_cpu_time_total / 1e3 / repeats
    return totals


def main(argv: Optional[List[str]] = None) -> dict:
    from mmoverlock.cli.errors import one_line_errors
    args = parse_args(argv)
    with one_line_errors(f'tools/analysis/{TOOL}.py', __file__):
        return run(args)


def run(args) -> dict:
    print(f'{TOOL}: {cpu_summary()}')
    print(f'{TOOL}: torch {torch.__version__}, batch {args.batch} at {args.size}x{args.size}, '
          f'{args.repeats} runs per model after {args.warmup} warm-up, alternating')
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size)
    results = {'rows': [], 'errors': {}, 'profile': {}}
    with tempfile.TemporaryDirectory() as folder:
        for variant in args.models:
            models = build_pair(variant)
            reference = {}
            for name, model in models.items():
                with torch.no_grad():
                    reference[name] = last_output(model(images))
            for threads in args.threads:
                torch.set_num_threads(threads)
                cpu_time = threads == 1
                for path in args.paths:
                    runners = {name: make_runner(path, model, images, threads, folder)
                               for name, model in models.items()}
                    for name, runner in runners.items():   # also the compile step, outside the timing
                        ref = reference[name]
                        error = ((last_output(runner()) - ref).abs().max() / ref.abs().max()).item()
                        results['errors'][(name, path)] = error
                    ms = measure_pair(runners, args.warmup, args.repeats, cpu_time)
                    (overlock, o_ms), (convnext, c_ms) = ms.items()
                    row = dict(variant=variant, threads=threads, path=path, overlock_ms=o_ms, convnext_ms=c_ms,
                               ratio=o_ms / c_ms)
                    results['rows'].append(row)
                    errors = ', '.join(f"{name} {results['errors'][(name, path)]:.1e}" for name in models)
                    print(f"{TOOL}: {threads} thread(s) {path:<12} {overlock} {o_ms:9.1f} ms  {convnext} "
                          f"{c_ms:9.1f} ms  ratio {row['ratio']:.2f}x  ({'CPU' if cpu_time else 'wall'} time; "
                          f'max error vs fp32 eager / scale: {errors})')
            if args.profile:
                torch.set_num_threads(args.threads[0])
                for path in ('fp32', 'bf16'):
                    for name, model in models.items():
                        classes = profile_classes(make_runner(path, model, images, args.threads[0], folder))
                        results['profile'][(name, path)] = classes
                        total = sum(classes.values())
                        split = ', '.join(f'{label} {ms:.1f} ({ms / total * 100:.0f}%)'
                                          for label, ms in classes.items() if ms > 0)
                        print(f'{TOOL}: profile {name} {path}, {args.threads[0]} thread(s): {total:.1f} ms '
                              f'per run: {split}')
    print(f'{TOOL}: load average at the end {" ".join(f"{v:.2f}" for v in os.getloadavg())}')
    return results


if __name__ == '__main__':
    main()
