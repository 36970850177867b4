"""Host (CPU) time per call of ``na2d_av``'s Python layers, on tiny tensors, against a plain aten call.

What a GPU step pays on the CPU for each aggregation call, before any kernel runs: the op's dispatch, its
checks and autograd, and the Triton launchers' Python work. Measured on a CPU, without a GPU:

* **aten mul** -- ``torch.mul`` of two tiny tensors: the baseline every ratio is against (same process);
* **CPU kernel, forward / forward + backward** -- the op's CPU kernels called directly (a 3x3 map with k=3:
  one window, one small matmul);
* **op, forward** -- ``na2d_av_channels_first`` without autograd; **op, forward + backward** -- with autograd,
  ``torch.autograd.grad`` of both inputs. The op's own cost is these minus the kernel's;
* **CUDA kernel body, forward / backward (mocked launch)** -- the op's CUDA kernels
  (``mmoverlock.ops.na2d_av_device_kernels()``) on ``meta`` tensors with the Triton kernels replaced by a stub
  that evaluates the launch grid, counts the launch and returns (``launches``: per call, 1 forward, 2 backward):
  the checks, output allocation, argument packing and the launchers' Python work. Triton's own launch (its
  argument binding and the driver call) is not included: it needs a GPU. The kernels' first-use check
  (``mmoverlock.ops.selfcheck``) counts as passed on ``meta`` beforehand: what is timed is its per-call cost
  after first use, a lookup (the check itself: ``gpu_check.py`` row f).

Time is process CPU time (robust on a shared machine; :func:`mmoverlock.utils.timing.measure`), the median of
``--repeats`` batches of ``--calls`` calls, in microseconds per call, one intra-op thread.

    python tools/analysis/benchmark_op_overhead.py
    python tools/analysis/benchmark_op_overhead.py --calls 2000 --repeats 7 --json overhead.json
"""
import argparse
import contextlib
import json
import os
from typing import Callable, Dict, List

import torch

from mmoverlock.utils.timing import measure as measure_time


def per_call_us(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Median over ``repeats`` batches of the process CPU time per call of ``fn``, in microseconds (after up to
    200 untimed calls)."""
    return measure_time(fn, warmup=min(calls, 200), repeats=repeats, calls=calls, clock='process').median * 1e3


class _NoLaunch:
    """Stands for a Triton kernel: ``kernel[grid](*args, **meta)`` evaluates the grid (as Triton does on every
    launch), counts the launch in ``counter`` and returns without launching."""

    def __init__(self, counter: List[int]):
        self.counter = counter

    def __getitem__(self, grid):
        def launch(*args, **meta):
            if callable(grid):
                grid(dict(meta, BLOCK_P=64, BLOCK_H=8, BLOCK_W=16))
            self.counter[0] += 1
        return launch


@contextlib.contextmanager
def mocked_triton_launches(na2d_triton):
    """Every Triton kernel of ``na2d_triton`` (its tables ``KERNELS`` and ``TUNED_KERNELS``) replaced by
    :class:`_NoLaunch`, restored on exit; yields the launch counter ([launches])."""
    counter = [0]
    saved = {table: dict(getattr(na2d_triton, table)) for table in ('KERNELS', 'TUNED_KERNELS')}
    for table in saved:
        getattr(na2d_triton, table).update({name: _NoLaunch(counter) for name in saved[table]})
    try:
        yield counter
    finally:
        for table, kernels in saved.items():
            getattr(na2d_triton, table).update(kernels)


def measure(calls: int, repeats: int) -> List[Dict[str, object]]:
    """The table's rows: {call, us (per call), vs_aten}, and ``launches`` (per call) for the mocked launches."""
    from mmoverlock.ops import (fused_kernel_checks, na2d_av_channels_first, na2d_av_cpu_kernels,
                                na2d_av_device_kernels, selfcheck)
    cpu_forward, cpu_backward = na2d_av_cpu_kernels()
    device_forward, device_backward = na2d_av_device_kernels()
    na2d_triton = next(c for c in fused_kernel_checks() if c['kernel'] == 'na2d_av')['modules']()

    selfcheck.run_check('na2d_av', torch.device('meta'), torch.float32, lambda device, dtype: ([], []),
                        'its CPU kernels')                 # the first use on meta: nothing to compare
    k = 3
    attn = torch.rand(1, 1, k * k, 3, 3).softmax(2)
    value = torch.rand(1, 1, 1, 3, 3)
    grad = torch.ones_like(value)
    attn_grad, value_grad = attn.clone().requires_grad_(), value.clone().requires_grad_()

    def kernel_forward_backward():
        cpu_forward(attn, value, k)
        cpu_backward(grad, attn, value, k, True, True)

    def op_forward_backward():
        out = na2d_av_channels_first(attn_grad, value_grad, k)
        torch.autograd.grad(out, (attn_grad, value_grad), grad)

    attn_meta, value_meta, grad_meta = (t.to('meta') for t in (attn, value, grad))
    rows = [
        ('aten mul (baseline)', lambda: torch.mul(value, value)),
        ('CPU kernel, forward', lambda: cpu_forward(attn, value, k)),
        ('CPU kernel, forward + backward', kernel_forward_backward),
        ('op, forward', lambda: na2d_av_channels_first(attn, value, k)),
        ('op, forward + backward', op_forward_backward),
        ('CUDA kernel body, forward (mocked launch)', lambda: device_forward(attn_meta, value_meta, k)),
        ('CUDA kernel body, backward (mocked launch)',
         lambda: device_backward(grad_meta, attn_meta, value_meta, k, True, True)),
    ]
    results = []
    with mocked_triton_launches(na2d_triton) as launches:
        for name, fn in rows:
            results.append(dict(call=name, us=per_call_us(fn, calls, repeats)))
            if 'mocked launch' in name:
                launches[0] = 0
                fn()
                results[-1]['launches'] = launches[0]
    base = results[0]['us']
    by_name = {r['call']: r['us'] for r in results}
    for r in results:
        r['vs_aten'] = r['us'] / base
    by_name_overhead = {
        'op layers, forward (op - kernel)': by_name['op, forward'] - by_name['CPU kernel, forward'],
        'op layers, forward + backward (op - kernel)':
            by_name['op, forward + backward'] - by_name['CPU kernel, forward + backward'],
    }
    for name, us in by_name_overhead.items():
        results.append(dict(call=name, us=us, vs_aten=us / base))
    return results


def format_table(results: List[Dict[str, object]]) -> str:
    lines = ['| call | us per call | vs aten mul |', '|---|---:|---:|']
    lines += [f"| {r['call']} | {r['us']:.1f} | {r['vs_aten']:.1f}x |" for r in results]
    return '\n'.join(lines)


def main(argv=None) -> List[Dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--calls', type=int, default=1000, help='calls per timed batch')
    parser.add_argument('--repeats', type=int, default=5, help='timed batches (the median is reported)')
    parser.add_argument('--json', help='also write the rows to this file')
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import mmoverlock.ops
    results = measure(args.calls, args.repeats)
    print(f'# na2d_av host time per call: torch {torch.__version__}, {mmoverlock.ops.__file__}, process CPU time, '
          f'median of {args.repeats} x {args.calls} calls')
    print(format_table(results))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == '__main__':
    os.environ.pop('TRITON_INTERPRET', None)    # the launchers' GPU path (autotuned kernels), not the interpreter's
    main()
