#!/usr/bin/env python
"""Test a det / seg / cls checkpoint (the task follows the config's default_scope).

    python tools/test.py CONFIG CHECKPOINT [--eval bbox segm | mIoU | accuracy] [--out results.pkl]
                         [--show-dir DIR] [--tta] [--work-dir DIR] [--cfg-options k=v ...] [--launcher ...]

``--eval`` takes the mmdet-2 / mmseg-0 names and maps them onto the config's test evaluator; ``--out``,
``--show-dir`` and ``--tta`` are the options of mmdet's / mmseg's own tools/test.py. Everything else is the
config's. Without CUDA, SyncBN -> BN (printed in one line).
"""
import argparse
import os.path as osp

import quiet_warnings  # noqa: F401  (before mmengine: third-party import warnings)

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from mmoverlock.utils.runtime import (EVAL_METRICS, apply_eval, apply_out, apply_show_dir, apply_tta,
                                      check_checkpoint, prepare_for_device, set_launcher_env, task_of)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file (ours, or an official one after conversion)')
    parser.add_argument('--eval', nargs='+', choices=sorted(EVAL_METRICS), metavar='METRIC',
                        help=f'metrics, mmdet-2 style: {", ".join(EVAL_METRICS)}')
    parser.add_argument('--out', help='dump raw predictions to this .pkl file')
    parser.add_argument('--show-dir', help='draw predictions into this folder')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation (the config\'s tta_model)')
    parser.add_argument('--work-dir', help='where the test logs go')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config entries')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser.parse_args(argv)


def build_cfg(args) -> Config:
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    task = task_of(cfg)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = check_checkpoint(args.checkpoint)
    apply_eval(cfg, args.eval, task)
    apply_out(cfg, args.out, task)
    apply_show_dir(cfg, args.show_dir, task)
    if args.tta:
        apply_tta(cfg)
    adapted = prepare_for_device(cfg, args.launcher)
    if adapted:
        print(f'tools/test.py: {adapted}', flush=True)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    set_launcher_env(args.launcher, args.local_rank)
    try:
        cfg = build_cfg(args)
    except (FileNotFoundError, ValueError) as err:   # bad arguments: one line, no traceback
        raise SystemExit(f'tools/test.py: error: {err}') from None
    runner = Runner.from_cfg(cfg)
    return runner.test()


if __name__ == '__main__':
    main()
