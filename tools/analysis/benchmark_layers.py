#!/usr/bin/env python
"""The CPU layer choices of ``mmoverlock/models/layers.py``, measured against the plain PyTorch op they replace.

* GRN's spatial L2 norm of a channels-last map: a square-sum (what GRN runs there) against
  ``torch.linalg.vector_norm`` over (H, W);
* ``PointwiseConv2d``: a 1x1 conv of a channels-last map as ``F.linear`` on the NHWC view against ``F.conv2d``.

One process, the two candidates of a row interleaved, median of ``--repeats`` after one warm-up; the ratio is
baseline / ours (above 1: ours is faster). Shapes: the Focus-Net stage-3 MLP of OverLoCK-T at 224x224
(batch 8: 384 -> 1536 channels, 14x14) and a stage-1 map of a COCO batch (2 x 64 x 200 x 334).

    python tools/analysis/benchmark_layers.py [--threads 1] [--repeats 10]
"""
import argparse
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

from mmoverlock.utils.timing import measure


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall milliseconds of ``repeats`` calls after one untimed call (:mod:`mmoverlock.utils.timing`)."""
    return measure(fn, warmup=1, repeats=repeats).median


def rows(repeats: int) -> List[tuple]:
    out = []
    for shape in ((8, 1536, 14, 14), (2, 64, 200, 334)):
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        ours = median_ms(lambda: x.float().square().sum(dim=(-1, -2), keepdim=True).sqrt(), repeats)
        base = median_ms(lambda: torch.linalg.vector_norm(x, ord=2, dim=(-1, -2), keepdim=True), repeats)
        out.append(('GRN spatial norm', 'x'.join(map(str, shape)), 'square-sum', ours, 'vector_norm', base))
    for (b, c_in, c_out, h, w) in ((8, 384, 1536, 14, 14), (2, 64, 256, 200, 334)):
        x = torch.randn(b, c_in, h, w).contiguous(memory_format=torch.channels_last)
        weight, bias = torch.randn(c_out, c_in, 1, 1) * 0.02, torch.zeros(c_out)
        ours = median_ms(lambda: F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias).permute(0, 3, 1, 2),
                         repeats)
        base = median_ms(lambda: F.conv2d(x, weight, bias), repeats)
        out.append(('1x1 conv', f'{b}x{c_in}x{h}x{w} -> {c_out}', 'linear on NHWC', ours, 'conv2d', base))
    return out


def main(argv: Optional[List[str]] = None) -> List[tuple]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--threads', type=int, default=1, help='intra-op threads (default 1)')
    parser.add_argument('--repeats', type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = rows(args.repeats)
    print('| Layer | Input (channels-last) | Ours | ms | Baseline | ms | Baseline / ours |')
    print('|---|---|---|---:|---|---:|---:|')
    for layer, shape, ours_name, ours, base_name, base in results:
        print(f'| {layer} | {shape} | {ours_name} | {ours:.2f} | {base_name} | {base:.2f} | {base / ours:.2f} |')
    return results


if __name__ == '__main__':
    main()
