#!/usr/bin/env python
"""Collect the results of trained / tested work_dirs into the paper's tables (markdown).

    python tools/analysis/collect_results.py work_dirs/mask_rcnn_overlock_t_1x_coco work_dirs/... [--all]
    python tools/analysis/collect_results.py work_dirs/*  --out results.md

Each work_dir is one config (``tools/train.py`` / ``tools/test.py`` name it after the config); a work_dir's
result is its latest test run, else its last validation; a ``--tta`` test of a segmentation model fills the
multi-scale mIoU column. Every model gets an ``official`` row and an ``ours`` row (difference to the official
number in brackets); competitor rows are shown as their repositories report them. Missing values are blank.
"""
import argparse
import sys

from mmoverlock.analysis.results import merge, read_work_dir, tables


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Collect results into the paper tables')
    parser.add_argument('work_dirs', nargs='+', help='work_dirs of trained / tested configs')
    parser.add_argument('--all', action='store_true', help='print all three tables, even without results')
    parser.add_argument('--out', help='also write the tables to this markdown file')
    return parser.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    try:
        results = merge([read_work_dir(d) for d in args.work_dirs])
    except FileNotFoundError as err:
        raise SystemExit(f'collect_results.py: error: {err}') from None
    text = tables(results, tasks=('cls', 'det', 'seg') if args.all else None)
    if not text:
        text = 'No results found in ' + ', '.join(args.work_dirs) + ' (no test json, scalars.json or eval lines).'
    print(text)
    for res in results.values():
        if res.metrics and res.task is None:
            print(f'note: {res.name}: metrics of no known task: {sorted(res.metrics)}', file=sys.stderr)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')
    return text


if __name__ == '__main__':
    main(sys.argv[1:])
