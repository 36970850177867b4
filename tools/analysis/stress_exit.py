#!/usr/bin/env python
"""Does every 2-process training end with exit status 0? Runs a tiny training N times and counts.

Each run trains the demo detector (``configs/demo/cascade_overlock_demo_shapes.py`` with a tiny OverLoCK) for
one epoch on a few synthetic images, in 2 processes (DDP over gloo on a CPU), and validates at the end, as
``make demo`` does at full size (``--model cls``: a tiny OverLoCK classifier on 8 images of 32 px, mmpretrain,
as the distributed tests train). The runs alternate between the two ways our users start processes:

* ``dist_train``: ``tools/dist_train.sh CONFIG 2 ...`` (``PYTHON`` = this python);
* ``torchrun``: the demo's command (``tools/demo.py``'s ``train_command(2)``: ``python -m
  torch.distributed.run --nproc_per_node=2 ... tools/train.py --launcher pytorch``).

Every run's exit status and output are kept; the table counts exit statuses, runs that trained and validated
(the last ``Epoch(val)`` line) and runs whose output holds ``terminate called`` (a C++ ``std::terminate``: the
abort of issue #33). The machine's load is printed with the figures: the abort rate swings with timing.
``--catch``: catch an abort in the act: each process prints the Python stacks of all its threads on a fatal
signal (``PYTHONFAULTHANDLER``) and may write a core file (``ulimit -c``), which is moved into the run's folder
for ``gdb -batch -ex 'thread apply all bt' PYTHON CORE`` (``/proc/sys/kernel/core_pattern`` must name a file in
the working directory, e.g. ``core``).

    python tools/analysis/stress_exit.py --runs 40
    python tools/analysis/stress_exit.py --runs 10 --paths torchrun --work-dir work_dirs/stress_exit --json out.json
    python tools/analysis/stress_exit.py --runs 20 --catch
"""
import argparse
import glob
import importlib.util
import json
import os
import os.path as osp
import shutil
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CONFIG = osp.join(ROOT, 'configs', 'demo', 'cascade_overlock_demo_shapes.py')
PATHS = ('dist_train', 'torchrun')
#: the tiny OverLoCK of the tests (tests/test_demo.py): seconds per iteration on a CPU
TINY_ARCH = dict(depth=[1, 1, 1, 1], sub_depth=[1, 1], embed_dim=[8, 16, 32, 64], kernel_size=[7, 7, 7, 5],
                 mlp_ratio=2, sub_num_heads=[1, 2], sub_mlp_ratio=2)
ABORT = 'terminate called'
#: a line mmengine logs after the last validation of the 1-epoch run: the training itself succeeded
VALIDATED = 'Epoch(val) [1]['


def load_demo_tool():
    """``tools/demo.py`` as a module: its ``train_command`` and ``data_options`` are what the demo runs."""
    spec = importlib.util.spec_from_file_location('mmoverlock_tools_demo', osp.join(ROOT, 'tools', 'demo.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(path: str, base: str = DEMO_CONFIG) -> str:
    """A config inheriting ``base`` with the tiny arch (and the neck sized for it), written to ``path``."""
    e = TINY_ARCH['embed_dim']
    channels = [e[0], e[1], e[2] + e[3] // 4, e[3] + e[3] // 4]
    with open(path, 'w') as f:
        f.write(f'_base_ = [{base!r}]\n'
                f'model = dict(backbone=dict(arch=dict(_delete_=True, **{TINY_ARCH!r})), '
                f'neck=dict(in_channels={channels}))\n')
    return path


CLS_CONFIG = """
default_scope = 'mmpretrain'
custom_imports = dict(imports=['mmoverlock'], allow_failed_imports=False)
tiny = dict(depth=[1, 1, 1, 1], sub_depth=[1, 1], embed_dim=[16, 32, 64, 96], kernel_size=[7, 7, 7, 7],
            mlp_ratio=2, sub_num_heads=[2, 2], sub_mlp_ratio=2)
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(type='ClsDataPreprocessor', num_classes=2, mean=[127.5] * 3, std=[127.5] * 3),
    backbone=dict(type='mmoverlock.OverLoCK', arch=tiny, out_indices=(3, ), layout='classification'),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=2, in_channels=120, loss=dict(type='CrossEntropyLoss'),
              topk=(1, )))
dataset = dict(type='CustomDataset', data_root={data!r},
               pipeline=[dict(type='LoadImageFromFile'), dict(type='PackInputs')])
train_dataloader = dict(batch_size=2, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=True),
                        dataset=dataset)
val_dataloader = dict(batch_size=2, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
                      dataset=dataset)
val_evaluator = dict(type='Accuracy', topk=(1, ))
train_cfg = dict(by_epoch=True, max_epochs=1, val_interval=1)
val_cfg = dict()
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9))
default_hooks = dict(checkpoint=dict(type='mmoverlock.AtomicCheckpointHook', interval=1),
                     logger=dict(type='LoggerHook', interval=1))
custom_hooks = [dict(type='mmoverlock.ChannelCheckHook'), dict(type='mmoverlock.CheckpointCheckHook'),
                dict(type='mmoverlock.DistributedEndHook')]
randomness = dict(seed=0)
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='gloo'))
"""


def prepare_cls(work_dir: str) -> Dict[str, object]:
    """8 images of two classes (32 px) and a tiny OverLoCK classifier config validating after its one epoch."""
    import cv2
    import numpy as np
    data = osp.join(work_dir, 'cls_data')
    rng = np.random.RandomState(0)
    for label in range(2):
        os.makedirs(osp.join(data, f'class_{label}'), exist_ok=True)
        for i in range(4):
            image = np.clip(rng.randn(32, 32, 3) * 40 + (80 if label else 170), 0, 255).astype(np.uint8)
            cv2.imwrite(osp.join(data, f'class_{label}', f'{i}.png'), image)
    config = osp.join(work_dir, 'tiny_cls.py')
    with open(config, 'w') as f:
        f.write(CLS_CONFIG.format(data=data))
    return dict(config=config, options=['randomness.seed=0'])


def prepare(work_dir: str, demo) -> Dict[str, object]:
    """The data (4 train / 2 val images of 96 px), the tiny config and its untrained checkpoint (the demo trains
    from one: ``load_from``), made once under ``work_dir``."""
    from mmoverlock.demo.shapes_data import make_demo_data
    data = osp.join(work_dir, 'data')
    if not osp.isfile(osp.join(data, 'annotations', 'instances_validation.json')):
        make_demo_data(data, num_train=4, num_val=2, size=96)
    config = tiny_config(osp.join(work_dir, 'tiny_demo.py'))
    checkpoint = osp.join(work_dir, 'untrained.pth')
    if not osp.isfile(checkpoint):
        demo.save_untrained(config, checkpoint)
    options = demo.data_options(data) + [f'load_from={checkpoint}', 'train_cfg.max_epochs=1',
                                         'default_hooks.checkpoint.interval=1', 'randomness.seed=0']
    return dict(config=config, options=options)


def command(path: str, config: str, work_dir: str, options: List[str], demo) -> List[str]:
    args = [config, '--work-dir', work_dir, '--cfg-options'] + options
    if path == 'dist_train':
        return ['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), args[0], '2'] + args[1:]
    return [sys.executable] + demo.train_command(2) + args


def _allow_core_files() -> None:
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def run_once(path: str, index: int, setup: Dict[str, object], work_dir: str, timeout: float, demo,
             catch: bool = False) -> dict:
    """One 2-process training: its exit status, wall time and what its output says (``catch``: fatal signals
    print every thread's Python stack, core files are allowed and moved into the run's folder)."""
    run_dir = osp.join(work_dir, 'runs', f'{index:03d}_{path}')
    shutil.rmtree(run_dir, ignore_errors=True)
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH')) if p),
               PORT=str(demo.free_port()))
    if catch:
        env['PYTHONFAULTHANDLER'] = '1'
    start = time.time()
    try:
        proc = subprocess.run(command(path, setup['config'], run_dir, setup['options'], demo), cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                              errors='replace', preexec_fn=_allow_core_files if catch else None)
        code, output = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as err:
        code = None
        output = err.stdout.decode(errors='replace') if isinstance(err.stdout, bytes) else (err.stdout or '')
    wall = time.time() - start
    os.makedirs(run_dir, exist_ok=True)
    with open(osp.join(run_dir, 'output.log'), 'w') as f:
        f.write(output)
    for core in glob.glob(osp.join(ROOT, 'core*')) if catch else ():
        if osp.isfile(core) and osp.getmtime(core) >= start:
            shutil.move(core, osp.join(run_dir, osp.basename(core)))
    return dict(index=index, path=path, code=code, wall_s=round(wall, 1), validated=VALIDATED in output,
                aborts=output.count(ABORT), tracebacks=output.count('Traceback (most recent call last)'),
                log=osp.join(run_dir, 'output.log'))


def table(results: List[dict]) -> str:
    """One row per path (and the total): runs, exit 0, non-zero, timeouts, trained+validated, runs with the
    abort message, median wall time."""
    header = (f"{'path':<12}{'runs':>6}{'exit 0':>8}{'non-zero':>10}{'timeout':>9}{'validated':>11}"
              f"{'aborted':>9}{'median s':>10}")
    rows = [header, '-' * len(header)]
    groups = [(p, [r for r in results if r['path'] == p]) for p in PATHS] + [('all', results)]
    for name, runs in groups:
        if not runs:
            continue
        rows.append(f"{name:<12}{len(runs):>6}{sum(r['code'] == 0 for r in runs):>8}"
                    f"{sum(r['code'] not in (0, None) for r in runs):>10}{sum(r['code'] is None for r in runs):>9}"
                    f"{sum(r['validated'] for r in runs):>11}{sum(r['aborts'] > 0 for r in runs):>9}"
                    f"{statistics.median(r['wall_s'] for r in runs):>10.1f}")
    return '\n'.join(rows)


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f'load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs'


def parse_args(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(description='Count exit statuses of N tiny 2-process trainings')
    parser.add_argument('--runs', type=int, default=40, help='trainings in all, alternating between the paths')
    parser.add_argument('--model', choices=['det', 'cls'], default='det',
                        help='det: the demo detector, tiny (default); cls: a tiny classifier (mmpretrain)')
    parser.add_argument('--paths', nargs='+', choices=PATHS, default=list(PATHS),
                        help='how the 2 processes are started (default: both, alternating)')
    parser.add_argument('--work-dir', default='work_dirs/stress_exit', help='data, config and every run')
    parser.add_argument('--timeout', type=float, default=600, help='seconds before a run counts as hung')
    parser.add_argument('--catch', action='store_true',
                        help="catch aborts in the act: every thread's Python stack on a fatal signal, core files")
    parser.add_argument('--json', help='write every run (path, exit status, wall time, ...) here')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> List[dict]:
    args = parse_args(argv)
    if args.runs < 1:
        raise SystemExit(f'tools/analysis/stress_exit.py: error: --runs {args.runs}: need at least 1')
    work_dir = osp.abspath(args.work_dir)
    os.makedirs(work_dir, exist_ok=True)
    demo = load_demo_tool()
    setup = prepare(work_dir, demo) if args.model == 'det' else prepare_cls(work_dir)
    print(f'{args.runs} tiny 2-process {args.model} trainings ({", ".join(args.paths)}) in {work_dir}; '
          f'start: {load_line()}', flush=True)
    results = []
    for i in range(args.runs):
        result = run_once(args.paths[i % len(args.paths)], i, setup, work_dir, args.timeout, demo, args.catch)
        results.append(result)
        status = 'timeout' if result['code'] is None else f"exit {result['code']}"
        note = f", '{ABORT}' x{result['aborts']}" if result['aborts'] else ''
        print(f"run {i + 1:>3}/{args.runs} {result['path']:<10} {status:<8} {result['wall_s']:>6.1f} s"
              f"{note}{'' if result['code'] == 0 else '  ' + result['log']}", flush=True)
    print(table(results))
    print(f'end: {load_line()}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(load_end=os.getloadavg(), runs=results), f, indent=1)
    return results


if __name__ == '__main__':
    main()
