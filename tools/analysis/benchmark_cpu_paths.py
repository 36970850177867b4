"""The three CPU kernels of ``na2d_av`` on the same shapes: where the op's thresholds between them come from.

The op picks its CPU kernel by map size (``mmoverlock.ops.na2d_cpu_path``): the per-window matmuls where the pixels
share at most ``WINDOW_CLASSES_MAX`` distinct clamped windows, the dense operator where
H*W <= ``DENSE_MAX_RATIO`` * k*k, the tap loop otherwise. This tool runs every kernel that applies to a shape
(the per-window matmuls at any map size, though the op only takes them for few windows) forward + backward
and prints the time of each against the one the op picks.

Shapes: OverLoCK-T's Focus-Net aggregations at 224x224 (stage 3: G8 C16 14x14 k13; stage 4: G16 C16 7x7 k7)
and, around the dense / tap-loop threshold, maps of 2 to 8 times k*k for k = 7 and 13 (G8 C16).
Time is process CPU time (one intra-op thread; :func:`mmoverlock.utils.timing.measure`), the median of
``--repeats`` runs after one warm-up.

    python tools/analysis/benchmark_cpu_paths.py
"""
import argparse
from typing import List

import torch

from mmoverlock.utils.timing import measure as measure_time

#: (label, B, G, C, H, W, k)
SHAPES = [
    ('T stage 3, 224x224', 1, 8, 16, 14, 14, 13),
    ('T stage 4, 224x224', 1, 16, 16, 7, 7, 7),
    ('HW = 2 k^2', 1, 8, 16, 10, 10, 7), ('HW = 3 k^2', 1, 8, 16, 12, 12, 7),
    ('HW = 4 k^2', 1, 8, 16, 14, 14, 7), ('HW = 6 k^2', 1, 8, 16, 17, 17, 7),
    ('HW = 8 k^2', 1, 8, 16, 20, 20, 7),
    ('HW = 3 k^2', 1, 8, 16, 23, 22, 13), ('HW = 4 k^2', 1, 8, 16, 26, 26, 13),
    ('HW = 6 k^2', 1, 8, 16, 32, 32, 13),
]


def time_ms(fn, repeats: int) -> float:
    """Median milliseconds of process CPU time of ``repeats`` calls of ``fn`` after one untimed call."""
    return measure_time(fn, warmup=1, repeats=repeats, clock='process').median


def measure(repeats: int) -> List[dict]:
    from mmoverlock.ops import NA2D_CPU_PATHS, na2d_cpu_path, window_classes
    rows = []
    for label, b, g, c, h, w, k in SHAPES:
        torch.manual_seed(0)
        attn = torch.randn(b, g, k * k, h, w).softmax(2)
        value = torch.randn(b, g, c, h, w)
        grad = torch.randn_like(value)
        chosen = na2d_cpu_path(h, w, k)
        times = {}
        for name, (forward, backward) in NA2D_CPU_PATHS.items():
            def step(forward=forward, backward=backward):
                forward(attn, value, k)
                backward(grad, attn, value, k, True, True)
            times[name] = time_ms(step, repeats)
        distinct = len(window_classes(h, k)) * len(window_classes(w, k))
        rows.append(dict(shape=f'{label}: G{g} C{c} {h}x{w} k{k}', chosen=chosen, distinct_windows=distinct,
                         **times))
    return rows


def main(argv=None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = measure(args.repeats)
    print(f'# na2d_av CPU kernels, forward + backward: torch {torch.__version__}, one thread, process CPU time, '
          f'median of {args.repeats}')
    print('| shape | distinct windows | op picks | windows ms | dense ms | tap loop ms |')
    print('|---|---:|---|---:|---:|---:|')
    for r in rows:
        print(f"| {r['shape']} | {r['distinct_windows']} | {r['chosen']} | {r['windows']:.2f} | {r['dense']:.2f} | "
              f"{r['taps']:.2f} |")
    return rows


if __name__ == '__main__':
    main()
