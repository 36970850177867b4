#!/usr/bin/env python
"""Train a det / seg / cls config with mmengine's Runner (the task follows the config's default_scope).

The run is the config's: mmdet's, mmseg's and mmpretrain's own tools/train.py give the same one. On a machine
without CUDA the GPU recipe is adapted (SyncBN -> BN, AMP -> fp32, DDP over gloo), and that is printed in one
line, by the first process only. The data paths, the checkpoint and the optimizer constructor are checked
before the Runner is built; mmoverlock's checks end the run in one line (``--check-only``: only those checks,
what tools/dist_train.sh runs before it starts the processes).

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [auto|CKPT]] [--auto-scale-lr]
                                 [--cfg-options k=v ...] [--launcher none|pytorch|slurm] [--check-only]
"""
import argparse
import os.path as osp
import sys

try:
    import mmoverlock.cli.quiet_warnings  # noqa: F401  (first: third-party import warnings)
except ImportError as err:   # a python without the environment: one line, not a traceback
    raise SystemExit(f"tools/train.py: error: {err} ({sys.executable}); run the tools with the environment's "
                     f"python: source .venv/bin/activate (made by make env), or PYTHON=.venv/bin/python "
                     f"tools/dist_train.sh ...") from None

import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from mmoverlock.cli.checks import (check_checkpoint, check_data, check_optim_constructor, check_writable,
                                   resume_target)
from mmoverlock.cli.device import is_main_process, prepare_for_device, set_launcher_env
from mmoverlock.cli.errors import one_line_errors
from mmoverlock.cli.interruption import interruption_line
from mmoverlock.cli.launch import end_of_run, rank_failures
from mmoverlock.utils.config import task_of


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector, segmentor or classifier')
    parser.add_argument('config', help='config file')
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default work_dirs/CONFIG_NAME)')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision (AmpOptimWrapper)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by the actual batch size over auto_scale_lr.base_batch_size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help="resume: 'auto' (the latest checkpoint in the work dir) or a checkpoint path")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. model.backbone.drop_path_rate=0.3')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    parser.add_argument('--check-only', action='store_true',
                        help='check the config, its data paths and checkpoint, then exit (no Runner)')
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
    if args.amp:
        if not torch.cuda.is_available():
            raise ValueError("--amp needs CUDA (mmengine's AmpOptimWrapper runs on GPU, NPU or MLU only); "
                             "drop --amp on CPU")
        optim = cfg.optim_wrapper
        if optim.get('type', 'OptimWrapper') not in ('OptimWrapper', 'AmpOptimWrapper'):
            raise ValueError(f"--amp: optim_wrapper type {optim.type} cannot be switched to AmpOptimWrapper")
        optim.type = 'AmpOptimWrapper'
        optim.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise ValueError('--auto-scale-lr: the config has no auto_scale_lr.base_batch_size')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        resume_latest(cfg, notice=not args.check_only and is_main_process())
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, check_checkpoint(args.resume, '--resume')
    elif cfg.get('load_from'):
        check_checkpoint(cfg.load_from, 'load_from')
    check_optim_constructor(cfg)
    validates = bool(cfg.get('val_cfg')) and bool(cfg.get('val_dataloader'))
    check_data(cfg, ['train_dataloader'] + (['val_dataloader'] if validates else []),
               ['val_evaluator'] if validates else [], task)
    if args.check_only:
        return cfg
    adapted = prepare_for_device(cfg, args.launcher)
    if adapted and is_main_process():
        print(f'tools/train.py: {adapted}', flush=True)
    return cfg


def resume_latest(cfg: Config, notice: bool) -> None:
    """``--resume`` without a path: from the checkpoint the work dir's ``last_checkpoint`` names; with nothing
    to resume, say so and start a new run (a job requeued with the same command finds nothing the first time;
    mmengine would log 'Auto resumed from the latest checkpoint None.' and drop the config's load_from)."""
    checkpoint = resume_target(cfg.work_dir)
    if checkpoint is not None:
        cfg.resume, cfg.load_from = True, check_checkpoint(checkpoint, '--resume')
        return
    cfg.resume = False
    start = 'from scratch'
    if cfg.get('load_from'):
        start = f'from load_from={check_checkpoint(cfg.load_from, "load_from")}'
    if notice:
        print(f'tools/train.py: --resume: nothing to resume in {cfg.work_dir} (no last_checkpoint there); '
              f'starting a new run {start}', flush=True)


def main(argv=None):
    args = parse_args(argv)
    set_launcher_env(args.launcher, args.local_rank)
    try:
        cfg = build_cfg(args)
    except (FileNotFoundError, ValueError) as err:   # bad arguments: one line, no traceback
        raise SystemExit(f'tools/train.py: error: {err}' if is_main_process() else 1) from None
    if args.check_only:
        return None
    command = sys.argv[1:] if argv is None else list(argv)
    with rank_failures('tools/train.py', cfg.work_dir), \
            interruption_line('tools/train.py', cfg.work_dir, command), one_line_errors('tools/train.py'):
        runner = Runner.from_cfg(cfg)
        runner.train()
    end_of_run()   # distributed: every process has finished and flushed, exit 0 (no return)
    return runner


if __name__ == '__main__':
    main()
