#!/usr/bin/env python
"""Make the built-in demo data set (:mod:`mmoverlock.demo.shapes_data`): coloured shapes on textured backgrounds.

    python tools/make_demo_data.py [--out data/demo] [--seed 0] [--num-train 400] [--num-val 60] [--size 160]
"""
import argparse
import time
from typing import List, Optional

from mmoverlock.demo.shapes_data import make_demo_data


def parse_args(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(description='Make the synthetic shapes data set of the demo')
    parser.add_argument('--out', default='data/demo', help='output folder (default data/demo)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--num-train', type=int, default=400)
    parser.add_argument('--num-val', type=int, default=60)
    parser.add_argument('--size', type=int, default=160, help='image side in pixels')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None):
    args = parse_args(argv)
    start = time.time()
    counts = make_demo_data(args.out, args.num_train, args.num_val, args.size, args.seed)
    summary = ', '.join(f"{split}: {c['images']} images / {c['instances']} shapes" for split, c in counts.items())
    print(f'demo data in {args.out} ({summary}) made in {time.time() - start:.1f} s')
    return counts


if __name__ == '__main__':
    main()
