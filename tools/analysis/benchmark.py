"""Backbone speed and memory: OverLoCK-XT/T against mmpretrain's ConvNeXt-T and ResNet-50, one process.

Measures, per model and input:

* **infer**: latency per image (eval mode, no grad; OverLoCK re-parameterised with ``switch_to_deploy()``
  as deployed -- the other two have nothing to fuse);
* **train**: one training step (forward, ``sum of output means`` backward, fused AdamW step) -- time per
  step and peak memory growth (CPU: peak RSS over the RSS before the step, via ``/proc/self/clear_refs`` after
  ``malloc_trim`` so memory freed by earlier models does not hide the growth;
  CUDA: ``torch.cuda.max_memory_allocated`` growth);
* ``--compile``: OverLoCK-T inference under ``torch.compile`` too (compile time and speed-up over eager);
* ``--onnxruntime``: inference of every model exported to ONNX (``tools/deployment/export_onnx.py``: opset 17,
  dynamic batch/H/W, OverLoCK deployed) and run by ONNX Runtime's CPU provider with the same thread count
  (``intra_op_num_threads``; all graph optimisations), in the same table (model name ``+ ORT``).

Every model is the classification-layout backbone returning its last stage. Warm-up runs are excluded;
the figure is the median of ``--repeats`` runs. On CPU with one thread the time is process CPU time (robust
on a shared machine; wall-clock is printed beside it); otherwise wall-clock (CUDA synchronised). Ratios are
against ConvNeXt-T measured in the same run.

    python tools/analysis/benchmark.py                   # 224^2 batch 8 and 800x1333 batch 1 (slow on CPU)
    python tools/analysis/benchmark.py --quick           # 224^2 inference + train at batch 2, a few minutes
    python tools/analysis/benchmark.py --device cuda --compile
"""
import argparse
import copy
import ctypes
import gc
import os.path as osp
import sys
import tempfile

import torch

from mmoverlock.utils.timing import Stopwatch, measure, synchronize

INPUTS = {'224': ((224, 224), 8), '800x1333': ((800, 1333), 1)}


def build_models(names, device, memory_format):
    """name -> eval-mode backbone (deployed where it applies), on ``device`` in ``memory_format``."""
    from mmpretrain.models.backbones import ConvNeXt, ResNet

    from mmoverlock import OverLoCK

    def overlock(arch):
        return lambda: OverLoCK(arch, out_indices=(3, ), layout='classification')

    factories = {
        'OverLoCK-XT': overlock('xt'),
        'OverLoCK-T': overlock('t'),
        'ConvNeXt-T': lambda: ConvNeXt('tiny'),
        'ResNet-50': lambda: ResNet(50),
    }
    models = {}
    for name in names:
        model = factories[name]()   # PyTorch's default init: the weights do not matter for timing
        model.to(device=device, memory_format=memory_format)
        model.eval()   # mmpretrain's ConvNeXt.train() returns None: do not chain
        models[name] = model
    return models


def sync(device):
    """Wait for the device's queued work (CUDA; :func:`mmoverlock.utils.timing.synchronize`)."""
    synchronize(device)


def rss_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'no {field} in /proc/self/status')


class PeakMemory:
    """Peak memory growth (bytes) during the block: RSS on CPU, allocated memory on CUDA."""

    def __init__(self, device):
        self.device, self.peak = device, 0

    def __enter__(self):
        gc.collect()
        sync(self.device)
        if self.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            # hand memory freed by earlier models back to the OS, or later models reuse it unseen
            ctypes.CDLL('libc.so.6').malloc_trim(0)
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')   # reset VmHWM to the current RSS
            self.base = rss_kib('VmRSS') * 1024
        return self

    def __exit__(self, *exc):
        sync(self.device)
        now = (torch.cuda.max_memory_allocated(self.device) if self.device.type == 'cuda'
               else rss_kib('VmHWM') * 1024)
        self.peak = now - self.base


def timed(fn, device, warmup, repeats, cpu_time):
    """Median seconds of ``repeats`` calls after ``warmup`` calls (process CPU time with ``cpu_time``, else wall
    time; CUDA synchronised around each call): :func:`mmoverlock.utils.timing.measure`."""
    return measure(fn, device, warmup=warmup, repeats=repeats, clock='process' if cpu_time else 'wall').median / 1e3


def inference_fn(model, images):
    def run():
        with torch.no_grad():
            model(images)
    return run


def train_fn(model, images):
    # fused AdamW (CPU and CUDA): torch's default per-tensor loop costs OverLoCK-T's ~1,700 parameter tensors
    # about 0.3 s a step on one CPU thread (ConvNeXt-T has ~180 tensors); fused, about 0.1 s
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)

    def run():
        outs = model(images)
        loss = sum(o.float().mean() for o in outs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return run


def onnxruntime_fn(model, images, threads, folder):
    """Export ``model`` (eval, deployed) to ONNX and return a callable running it in ONNX Runtime."""
    import onnxruntime as ort

    from mmoverlock.deploy.onnx import export
    path = osp.join(folder, f'{type(model).__name__}_{id(model)}.onnx')
    export(model, images.shape[-2:], path, batch=images.shape[0])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    feed = {'input': images.contiguous().numpy()}
    return lambda: session.run(None, feed)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--models', nargs='+', default=['OverLoCK-XT', 'OverLoCK-T', 'ConvNeXt-T', 'ResNet-50'])
    parser.add_argument('--inputs', nargs='+', default=list(INPUTS), choices=list(INPUTS))
    parser.add_argument('--modes', nargs='+', default=['infer', 'train'], choices=['infer', 'train'])
    parser.add_argument('--train-batch', type=int, default=None, help='override the train batch size')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--memory-format', default='channels_last', choices=['channels_last', 'contiguous'],
                        help='of every model and input (channels_last: oneDNN depthwise convs are ~30x '
                             'faster in it on CPU)')
    parser.add_argument('--compile', action='store_true', help='also OverLoCK-T inference under torch.compile')
    parser.add_argument('--onnxruntime', action='store_true',
                        help='also every model exported to ONNX and run by ONNX Runtime (CPU)')
    parser.add_argument('--quick', action='store_true',
                        help='224^2 only, train batch 2, 1 warm-up + 2 runs: a few minutes on a CPU')
    args = parser.parse_args()
    if args.quick:
        args.inputs, args.repeats, args.warmup = ['224'], 2, 1
        args.train_batch = args.train_batch or 2
    if args.device not in ('cpu', 'cuda') or (args.device == 'cuda' and not torch.cuda.is_available()):
        parser.error(f"--device {args.device!r}: expected 'cpu' or 'cuda' (with a CUDA device available)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    memory_format = {'channels_last': torch.channels_last, 'contiguous': torch.contiguous_format}[
        args.memory_format]
    cpu_time = device.type == 'cpu' and torch.get_num_threads() == 1
    clock = 'process CPU time' if cpu_time else 'wall-clock'
    print(f'device {device}, {torch.get_num_threads()} thread(s), {args.memory_format}, torch {torch.__version__}; '
          f'median of {args.repeats} after {args.warmup} warm-up, {clock}; ratios vs ConvNeXt-T\n', flush=True)
    models = build_models(args.models, device, memory_format)   # train form; inference deploys a copy

    rows = []
    for input_name in args.inputs:
        size, batch = INPUTS[input_name]
        for mode in args.modes:
            b = args.train_batch if (mode == 'train' and args.train_batch) else batch
            images = torch.randn(b, 3, *size, device=device).contiguous(memory_format=memory_format)
            for name, model in models.items():
                if mode == 'infer':
                    net = copy.deepcopy(model)
                    if hasattr(net, 'switch_to_deploy'):
                        net.switch_to_deploy()
                    net.to(memory_format=memory_format).eval()
                    fn = inference_fn(net, images)
                else:
                    net = copy.deepcopy(model)
                    net.train()
                    fn = train_fn(net, images)
                wall = None
                try:
                    with PeakMemory(device) as mem:
                        seconds = timed(fn, device, args.warmup, args.repeats, cpu_time)
                    if cpu_time:
                        wall = timed(fn, device, 0, 1, False)
                except RuntimeError as e:   # e.g. CUDA out of memory
                    print(f'  {name} {input_name} {mode}: {str(e).splitlines()[0]}', file=sys.stderr)
                    continue
                rows.append(dict(input=input_name, batch=b, mode=mode, model=name, seconds=seconds, wall=wall,
                                 peak=mem.peak))
                print(f'  measured {name} {input_name} b{b} {mode}: {seconds * 1e3:.0f} ms', file=sys.stderr,
                      flush=True)
                del net, fn
            if args.onnxruntime and mode == 'infer':
                with tempfile.TemporaryDirectory() as folder:
                    for name, model in models.items():
                        net = copy.deepcopy(model)
                        if hasattr(net, 'switch_to_deploy'):
                            net.switch_to_deploy()
                        net.eval()   # (mmpretrain's ConvNeXt.train() returns None: no chaining)
                        fn = onnxruntime_fn(net, images, torch.get_num_threads(), folder)
                        seconds = timed(fn, device, args.warmup, args.repeats, cpu_time)
                        rows.append(dict(input=input_name, batch=b, mode=mode, model=f'{name} + ORT', seconds=seconds,
                                         wall=None, peak=None))
                        print(f'  measured {name} + ORT {input_name} b{b}: {seconds * 1e3:.0f} ms', file=sys.stderr,
                              flush=True)
            if args.compile and mode == 'infer' and 'OverLoCK-T' in models:
                net = copy.deepcopy(models['OverLoCK-T'])
                net.switch_to_deploy()
                net.to(memory_format=memory_format).eval()
                compiled = torch.compile(net)
                with Stopwatch(device) as watch, torch.no_grad():
                    compiled(images)
                compile_s = watch.ms / 1e3
                seconds = timed(inference_fn(compiled, images), device, args.warmup, args.repeats, cpu_time)
                rows.append(dict(input=input_name, batch=b, mode=mode, model='OverLoCK-T (compiled)',
                                 seconds=seconds, wall=None, peak=None, compile_s=compile_s))
                del net, compiled

    print('| input | batch | mode | model | ms / image (infer) or / step (train) | vs ConvNeXt-T | '
          'peak memory MiB | memory vs ConvNeXt-T |')
    print('|---|---|---|---|---|---|---|---|')
    for row in rows:
        baseline = 'ConvNeXt-T + ORT' if row['model'].endswith('+ ORT') else 'ConvNeXt-T'
        base = next((r for r in rows if r['model'] == baseline and r['input'] == row['input']
                     and r['mode'] == row['mode']), None)
        per = row['batch'] if row['mode'] == 'infer' else 1
        ms = row['seconds'] * 1e3 / per
        ratio = f"{row['seconds'] / base['seconds']:.2f}" if base else '-'
        mem = f"{row['peak'] / 2 ** 20:.0f}" if row['peak'] is not None else '-'
        mem_ratio = (f"{row['peak'] / base['peak']:.2f}" if base and row['peak'] is not None and base['peak'] > 0
                     else '-')
        note = f" (wall {row['wall'] * 1e3 / per:.0f})" if row.get('wall') else ''
        if 'compile_s' in row:
            eager = next(r for r in rows if r['model'] == 'OverLoCK-T' and r['input'] == row['input']
                         and r['mode'] == 'infer')
            note = f" (compile {row['compile_s']:.0f} s; speed-up over eager {eager['seconds'] / row['seconds']:.2f}x)"
        print(f"| {row['input']} | {row['batch']} | {row['mode']} | {row['model']} | {ms:.1f}{note} | {ratio} | "
              f"{mem} | {mem_ratio} |")


if __name__ == '__main__':
    main()
