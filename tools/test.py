#!/usr/bin/env python
"""Test a det / seg / cls checkpoint (the task follows the config's default_scope).

    python tools/test.py CONFIG CHECKPOINT [--eval bbox segm | mIoU | accuracy] [--out results.pkl]
                         [--show-dir DIR] [--tta] [--work-dir DIR] [--cfg-options k=v ...] [--launcher ...]

``--eval`` takes the mmdet-2 / mmseg-0 names and maps them onto the config's test evaluator; ``--out``,
``--show-dir`` and ``--tta`` are the options of mmdet's / mmseg's own tools/test.py. Everything else is the
config's. Without CUDA, SyncBN -> BN (printed in one line, by the first process only). The checkpoint and the
test data paths are checked before the Runner is built, whether the checkpoint fits the model before the first
image; mmoverlock's checks end the run in one line (``--check-only``: the checks before the Runner only).
"""
import argparse
import os.path as osp
import sys

try:
    import mmoverlock.cli.quiet_warnings  # noqa: F401  (first: third-party import warnings)
except ImportError as err:   # a python without the environment: one line, not a traceback
    raise SystemExit(f"tools/test.py: error: {err} ({sys.executable}); run the tools with the environment's "
                     f"python: source .venv/bin/activate (made by make env), or PYTHON=.venv/bin/python "
                     f"tools/dist_test.sh ...") from None

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from mmoverlock.cli.checks import check_checkpoint, check_data, check_writable
from mmoverlock.cli.device import is_main_process, prepare_for_device, set_launcher_env
from mmoverlock.cli.errors import one_line_errors
from mmoverlock.cli.launch import end_of_run, rank_failures
from mmoverlock.cli.options import EVAL_METRICS, apply_eval, apply_out, apply_show_dir, apply_tta
from mmoverlock.utils.config import task_of


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
    parser.add_argument('--check-only', action='store_true',
                        help='check the config, its data paths and the checkpoint file, then exit (no Runner)')
    return parser.parse_args(argv)


def build_cfg(args) -> Config:
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    task = task_of(cfg)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    check_writable(cfg.work_dir, '--work-dir' if args.work_dir else 'work_dir', folder=True)
    if args.out:
        check_writable(args.out, '--out', folder=False)
    cfg.load_from = check_checkpoint(args.checkpoint)
    apply_eval(cfg, args.eval, task)
    apply_out(cfg, args.out, task)
    apply_show_dir(cfg, args.show_dir, task)
    if args.tta:
        apply_tta(cfg)
    check_data(cfg, ['test_dataloader'], ['test_evaluator'], task)
    if args.check_only:
        return cfg
    adapted = prepare_for_device(cfg, args.launcher)
    if adapted and is_main_process():
        print(f'tools/test.py: {adapted}', flush=True)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    set_launcher_env(args.launcher, args.local_rank)
    try:
        cfg = build_cfg(args)
    except (FileNotFoundError, ValueError) as err:   # bad arguments: one line, no traceback
        raise SystemExit(f'tools/test.py: error: {err}' if is_main_process() else 1) from None
    if args.check_only:
        return None
    with rank_failures('tools/test.py', cfg.work_dir), one_line_errors('tools/test.py'):
        runner = Runner.from_cfg(cfg)
        metrics = runner.test()
    end_of_run()   # distributed: every process has finished and flushed, exit 0 (no return)
    return metrics


if __name__ == '__main__':
    main()
