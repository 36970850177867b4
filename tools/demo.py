#!/usr/bin/env python
"""`make demo`: the main job end to end on built-in data, on a CPU, in minutes.

    python tools/demo.py [--work-dir work_dirs/demo] [--data data/demo] [--epochs N] [--threads N]
                         [--train-processes 2] [--seed 0] [--verbose]

1. makes the synthetic shapes data set (as tools/make_demo_data.py does) unless it is there already;
2. saves the freshly initialised detector (configs/demo/cascade_overlock_demo_shapes.py) and
   evaluates it with tools/test.py: the *untrained* bbox / segm AP;
3. trains it from those very weights with tools/train.py (two processes, DDP over gloo, as
   tools/dist_train.sh starts them), validating as the config says;
4. evaluates the trained detector with ``tools/test.py ... --eval bbox segm --show-dir``: the COCO table and
   the prediction overlays (mmdet's DetLocalVisualizer: ground truth left, prediction right);
5. draws the loss / AP curves, a montage of overlays, the effective receptive field of stage 4 before and
   after training and the trained ContMix kernels (the last three by processes that run beside the
   evaluations of 2. and 4.);
6. prints the untrained and trained AP side by side.

The console shows one line per phase with a progress bar (mmoverlock.demo.console); the tools' whole output
goes to ``logs/<phase>.log`` (``--verbose``: to the terminal instead). Everything lands under the work dir:
``untrained.pth``, ``untrained/``, ``train/``, ``test/`` (mmengine's logs and configs, the checkpoint, the
overlays), ``logs/``, ``curves.png``, ``predictions.png``, ``erf_untrained.png``, ``erf_trained.png``,
``kernels_trained.png``, ``summary.json``.
"""
import argparse
import logging
import os
import os.path as osp
import socket
import sys
import time
from typing import List, Optional

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

import mmoverlock.cli.quiet_warnings  # noqa: E402,F401  (first: third-party import warnings)
from mmoverlock.demo.console import BackgroundSteps, PhaseFailed, make_console, run_phase  # noqa: E402
from mmoverlock.demo.report import (ERF_CAPTION, caption_file, latest_run_dir, montage,  # noqa: E402
                                    plot_curves, result_table, test_metrics, train_scalars, write_summary)
from mmoverlock.demo.shapes_data import make_demo_data  # noqa: E402

DEMO_CONFIG = osp.join(ROOT, 'configs', 'demo', 'cascade_overlock_demo_shapes.py')
#: the score from which the prediction overlays draw a detection
SHOW_SCORE = 0.5


def data_options(data: str) -> List[str]:
    """--cfg-options pointing the demo config's loaders and evaluators at ``data``."""
    root = data.rstrip('/') + '/'
    val_ann = root + 'annotations/instances_validation.json'
    return [f'train_dataloader.dataset.data_root={root}', f'val_dataloader.dataset.data_root={root}',
            f'test_dataloader.dataset.data_root={root}', f'val_evaluator.ann_file={val_ann}',
            f'test_evaluator.ann_file={val_ann}']


def save_untrained(config, out: str, note: str = '', seed: int = 0) -> None:
    """Build a det / seg config's model (``config``: a path or a loaded Config, adapted in place to the device),
    initialise it (seeded) and save it as a checkpoint, class names included: the demo's starting point (and a
    random-weights checkpoint for tests)."""
    import importlib

    import torch
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope
    from mmengine.runner import set_random_seed

    import mmoverlock  # noqa: F401
    from mmoverlock.utils.config import sync_bn_to_bn, task_of
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    task_of(cfg)
    sync_bn_to_bn(cfg)
    init_default_scope(cfg.default_scope)
    models = importlib.import_module(f'{cfg.default_scope}.registry').MODELS
    set_random_seed(seed)
    model = models.build(cfg.model)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)   # init_weights lists every parameter at INFO when no log file is open
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    meta = dict(seed=seed, note=note or 'untrained (initialised) model')
    metainfo = cfg.get('test_dataloader', {}).get('dataset', {}).get('metainfo')
    if metainfo:
        meta['dataset_meta'] = dict(metainfo)
    os.makedirs(osp.dirname(out) or '.', exist_ok=True)
    torch.save(dict(meta=meta, state_dict=model.state_dict()), out)


def parse_args(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(description='Train and evaluate the demo detector on built-in data')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data', default='data/demo', help='demo data folder (made if missing)')
    parser.add_argument('--config', default=DEMO_CONFIG)
    parser.add_argument('--epochs', type=int, help="training epochs (default: the config's)")
    parser.add_argument('--threads', type=int, help='OMP threads of each train / test process')
    parser.add_argument('--train-processes', type=int, default=2,
                        help='training processes (DDP over gloo, one per CPU core; the config sets the images '
                             'per process); 1: tools/train.py alone')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--verbose', action='store_true',
                        help="print the tools' whole output (mmengine's logs) instead of one line per phase")
    return parser.parse_args(argv)


def tool_env(threads: Optional[int]) -> dict:
    """The child processes' environment: ``threads`` OpenMP / MKL threads when given."""
    env = dict(os.environ)
    if threads:
        env['OMP_NUM_THREADS'] = env['MKL_NUM_THREADS'] = str(threads)
    return env


def free_port() -> int:
    """A TCP port free on this machine now, for torchrun's rendezvous."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def train_command(processes: int) -> List[str]:
    """tools/train.py, or torchrun starting ``processes`` of it (as tools/dist_train.sh does: through
    ``mmoverlock.cli.launch``, torchrun ending a failed run in one line)."""
    if processes == 1:
        return ['tools/train.py']
    return ['-m', 'mmoverlock.cli.launch', f'--nproc_per_node={processes}', '--master_addr=127.0.0.1',
            f'--master_port={free_port()}', 'tools/train.py', '--launcher', 'pytorch']


def load_config(path: str):
    """The demo config, or one line naming the missing file."""
    from mmengine.config import Config
    if not osp.isfile(path):
        raise FileNotFoundError(f'--config {path}: no such file; the demo detector is '
                                f'{osp.relpath(DEMO_CONFIG, ROOT)}')
    return Config.fromfile(path)


def main(argv: Optional[List[str]] = None):
    args = parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f'--epochs {args.epochs}: need at least 1')
    if args.train_processes < 1:
        raise ValueError(f'--train-processes {args.train_processes}: need at least 1')
    start = time.time()
    wd = args.work_dir
    logs = osp.join(wd, 'logs')
    os.makedirs(logs, exist_ok=True)
    console = make_console()
    env = tool_env(args.threads)
    cfg = load_config(args.config)   # loaded once: its epochs and image size here, the model below
    epochs = args.epochs or int(cfg.train_cfg.max_epochs)
    size = int(cfg.get('image_size', 160))
    timings = {}

    def phase(label, tool_args, log_name, **kwargs):
        return run_phase(console, label, [sys.executable] + tool_args, osp.join(logs, log_name), cwd=ROOT,
                         env=env, verbose=args.verbose, **kwargs)

    console.print('OverLoCK demo: Cascade Mask R-CNN with a CPU-sized OverLoCK, trained from scratch on synthetic '
                  'shapes')
    console.print(f"{'config':<10} {osp.relpath(args.config, ROOT)}: {epochs} epochs, {args.train_processes} "
                  f'training process{"es" if args.train_processes > 1 else ""}')
    # 1. data
    t = time.time()
    if not osp.isfile(osp.join(args.data, 'annotations', 'instances_validation.json')):
        counts = make_demo_data(args.data, seed=args.seed)
        made = f'made in {time.time() - t:.0f} s'
    else:
        counts = {split: dict(images=len(os.listdir(osp.join(args.data, 'images', split))))
                  for split in ('training', 'validation')}
        made = 'already there'
    timings['data_s'] = time.time() - t
    console.print(f"{'data':<10} {counts['training']['images']} train / {counts['validation']['images']} val "
                  f'images in {args.data} ({made})')
    opts = data_options(args.data)

    # The pictures (ERF before and after training, the trained kernels) are drawn by three more tools: each is
    # started as soon as its checkpoint exists and runs beside the evaluation of that checkpoint (one thread
    # each unless --threads says otherwise); the "pictures" phase waits for what is left of them.
    val_images = osp.join(args.data, 'images', 'validation')
    pictures = BackgroundSteps(console, 'pictures', osp.join(logs, 'pictures.log'), cwd=ROOT,
                               env=tool_env(args.threads or 1), verbose=args.verbose)

    def erf_command(name, ckpt):
        return [sys.executable, 'tools/analysis/visualize_erf.py', args.config, '--checkpoint', ckpt, '--stage', '3',
                '--images', val_images, '--size', str(size), '--out', osp.join(wd, f'erf_{name}.png')]

    try:
        # 2. the untrained detector
        t = time.time()
        untrained_ckpt = osp.join(wd, 'untrained.pth')
        save_untrained(cfg, untrained_ckpt, f'untrained demo detector, data {args.data}', args.seed)
        pictures.start([erf_command('untrained', untrained_ckpt)])
        phase('untrained', ['tools/test.py', args.config, untrained_ckpt, '--eval', 'bbox', 'segm',
                            '--work-dir', osp.join(wd, 'untrained'), '--cfg-options'] + opts,
              'untrained_test.log', unit='batches')
        untrained = test_metrics(osp.join(wd, 'untrained'))
        timings['untrained_eval_s'] = time.time() - t

        # 3. training, from the very weights just evaluated
        t = time.time()
        train_dir = osp.join(wd, 'train')
        train_opts = opts + [f'load_from={untrained_ckpt}', f'randomness.seed={args.seed}',
                             f'train_cfg.max_epochs={epochs}']
        train_args = [args.config, '--work-dir', train_dir, '--cfg-options'] + train_opts
        phase('train', train_command(args.train_processes) + train_args,
              'train.log', unit='iterations', max_epochs=epochs)
        timings['train_s'] = time.time() - t
        with open(osp.join(train_dir, 'last_checkpoint')) as f:
            checkpoint = f.read().strip()

        # 4. the trained detector: COCO table and overlays
        t = time.time()
        pictures.start([erf_command('trained', checkpoint),
                        [sys.executable, 'tools/analysis/visualize_kernels.py', args.config, '--checkpoint',
                         checkpoint, '--block', 'sub_blocks3.0', '--image', osp.join(val_images, '000000.jpg'),
                         '--size', str(size), '--out', osp.join(wd, 'kernels_trained.png')]])
        test_dir = osp.join(wd, 'test')
        # the overlays draw detections scoring >= SHOW_SCORE (mmdet's default 0.3); the metrics use them all
        phase('trained', ['tools/test.py', args.config, checkpoint, '--eval', 'bbox', 'segm', '--work-dir',
                          test_dir, '--show-dir', 'overlays', '--cfg-options'] + opts
              + [f'default_hooks.visualization.score_thr={SHOW_SCORE}'], 'trained_test.log', unit='batches')
        trained = test_metrics(test_dir)
        timings['trained_eval_s'] = time.time() - t

        # 5. pictures
        t = time.time()
        curves = osp.join(wd, 'curves.png')
        plot_curves(train_scalars(train_dir), untrained, curves)
        overlays = osp.join(latest_run_dir(test_dir), 'overlays')
        predictions = montage(overlays, osp.join(wd, 'predictions.png'))
        pictures.wait()
    finally:
        pictures.close()
    for name in ('untrained', 'trained'):
        caption_file(osp.join(wd, f'erf_{name}.png'), ERF_CAPTION)
    with open(osp.join(logs, 'pictures.log')) as f:   # visualize_erf.py's mass fractions, untrained then trained
        erf_spread = [line.strip() for line in f if line.startswith('centred square holding')]
    timings['pictures_s'] = time.time() - t
    timings['total_s'] = time.time() - start

    summary = write_summary(osp.join(wd, 'summary.json'), untrained, trained, checkpoint=checkpoint, curves=curves,
                            predictions=predictions, timings=timings)
    console.print()
    console.print(result_table(untrained, trained))
    console.print(f"time: {timings['total_s'] / 60:.1f} min (training {timings['train_s'] / 60:.1f} min)")
    console.print(f'predictions: {predictions} (ground truth left, prediction right); all {len(os.listdir(overlays))} '
                  f'in {overlays}')
    console.print(f'pictures:    {wd}/curves.png, erf_untrained.png, erf_trained.png, kernels_trained.png')
    for name, spread in zip(('untrained', 'trained'), erf_spread):
        console.print(f'ERF {name + ":":<10} {spread}')
    console.print(f"logs:        {logs}/ (each phase's output); mmengine's logs and configs in "
                  f'{wd}/{{untrained,train,test}}/')
    return summary


if __name__ == '__main__':
    from mmoverlock.cli.errors import one_line_errors
    try:
        with one_line_errors('tools/demo.py', __file__):   # bad options and files: one line, no traceback
            main()
    except PhaseFailed as err:
        raise SystemExit(str(err)) from None
