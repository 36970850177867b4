"""Exact resume (issue #34): a run interrupted at any iteration and resumed with ``tools/train.py --resume``
trains the batches an uninterrupted run trains, in the same order, none twice, none skipped, with the same
iteration numbers and losses -- for the epoch loop of the det recipes (checkpoints by iteration, inside an
epoch) and the iteration loop of the seg recipes, after SIGINT and SIGKILL, with 1 and 2 processes; and
Ctrl-C, also in the middle of a save, ends in one line naming the last complete checkpoint and the command that
continues from it.

The runs keep the recipes' random augmentation (RandomFlip, RandomResize / RandomCrop) and Mask R-CNN's random
proposal sampling: the loops seed each iteration from (seed, iteration), so these draw what the uninterrupted
run drew. Four interrupted runs cover each of {det, seg} x {SIGINT, SIGKILL} x {1, 2 processes} once.
"""
import os
import os.path as osp
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook

from mmoverlock.checkpoint import read_checkpoint
from mmoverlock.engine.resumable import (ResumableEpochBasedTrainLoop, ResumableInfiniteSampler,
                                         ResumableSampler)

from .conftest import ROOT, load_tool
from .helpers import free_port

TRAIN = osp.join(ROOT, 'tools', 'train.py')
TIMEOUT = 500

RECORD_HOOK = textwrap.dedent('''
    """Test helper: records each iteration's loss (rank 0) and its batch's images; pauses a run where the test
    signals it: after an iteration (PAUSE_AFTER_ITER) or inside the save of a checkpoint (PAUSE_IN_SAVE)."""
    import os, time
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS

    def _pause(runner):   # each rank says it is here; the test signals once all of them are
        open(os.path.join(runner.work_dir, f'paused.{runner.rank}'), 'w').close()
        for _ in range(3000):   # until the test has sent its signal
            if os.path.exists(os.path.join(runner.work_dir, 'signalled')):
                return
            time.sleep(0.1)

    @HOOKS.register_module()
    class RecordLossHook(Hook):
        priority = 'HIGHEST'

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            step = runner.iter + 1
            if runner.rank == 0:
                images = ','.join(os.path.basename(s.img_path) for s in data_batch['data_samples'])
                with open(os.path.join(runner.work_dir, 'losses.txt'), 'a') as f:
                    f.write(f"{step} {runner.epoch + 1} {batch_idx + 1} {outputs['loss'].item()!r} {images}\\n")
            if step == int(os.environ.get('PAUSE_AFTER_ITER', 0)):
                _pause(runner)
                time.sleep(3600)

        def before_save_checkpoint(self, runner, checkpoint):
            if runner.iter + 1 == int(os.environ.get('PAUSE_IN_SAVE', 0)):
                _pause(runner)
''')


def with_recording(cfg: Config, interval: int) -> Config:
    """Checkpoints by iteration every ``interval``, the recording hook, no validation, logs every iteration."""
    cfg.custom_imports.imports = list(cfg.custom_imports.imports) + ['record_loss_hook']
    cfg.custom_hooks = list(cfg.custom_hooks) + [dict(type='RecordLossHook')]
    cfg.default_hooks.checkpoint = dict(type='mmoverlock.AtomicCheckpointHook', by_epoch=False, interval=interval,
                                        max_keep_ckpts=2)
    cfg.default_hooks.logger.interval = 1
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.randomness = dict(seed=0)
    return cfg


@pytest.fixture(scope='module')
def configs(tmp_path_factory, fixture):
    """A tiny Mask R-CNN (our 1x recipe: epoch loop, ResumableSampler + mmdet's AspectRatioBatchSampler) on 6
    images, 8 iterations over 2 epochs of 4 batches (1 process x 2 images, or 2 x 1); a tiny UperNet (our ADE
    recipe: iteration loop, ResumableInfiniteSampler) on 4 images, 8 iterations of 2 images per process."""
    from .helpers import make_coco
    from .test_det import derive_tiny
    from .test_seg import SEG_CONFIGS, make_ade_like, tiny_cfg
    root = tmp_path_factory.mktemp('resume_exact')
    (root / 'record_loss_hook.py').write_text(RECORD_HOOK)
    make_coco(str(root / 'coco'), num_train=8, num_val=1)
    det = derive_tiny(osp.join(ROOT, 'configs', 'det', 'mask_rcnn_overlock_t_1x_coco.py'), str(root / 'coco'),
                      str(root / 'det.py'))
    cfg = with_recording(Config.fromfile(det), interval=3)
    cfg.train_cfg.update(max_epochs=2)
    cfg.train_dataloader.batch_size = 2
    cfg.dump(det)
    make_ade_like(str(root / 'ade'), np.random.RandomState(0))
    cfg = with_recording(tiny_cfg(fixture, Config.fromfile(SEG_CONFIGS['t']), str(root / 'ade'), None), interval=3)
    cfg.train_cfg.update(max_iters=8)
    cfg.train_dataloader.batch_size = 2   # UperNet's pooling module normalises 1x1 maps: 2 images per process
    seg = str(root / 'seg.py')
    cfg.dump(seg)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), ROOT, os.environ.get('PYTHONPATH', '')]),
               OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore', MASTER_ADDR='127.0.0.1')
    for key in ('PAUSE_AFTER_ITER', 'PAUSE_IN_SAVE'):
        env.pop(key, None)
    return SimpleNamespace(root=root, det=det, seg=seg, env=env)


def train_cmd(config, work, procs, *args, options=()):
    options = list(options) + (['train_dataloader.batch_size=1'] if procs == 2 and config.endswith('det.py') else [])
    args += ('--cfg-options', *options) if options else ()   # det: 2 x 1 image, the 1 x 2 run's 8 iterations
    if procs == 1:
        return [sys.executable, TRAIN, config, '--work-dir', str(work), *args]
    return [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(procs), '--master_port',
            str(free_port()), TRAIN, config, '--work-dir', str(work), '--launcher', 'pytorch', *args]


def run(cmd, env):
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f'{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    return proc.stdout + proc.stderr


def records(work) -> list:
    """[(iteration, epoch, batch in epoch, loss, images)] in the order they were trained."""
    with open(osp.join(work, 'losses.txt')) as f:
        return [(int(s), int(e), int(b), float(loss), images)
                for s, e, b, loss, images in (line.split() for line in f)]


def descendants(pid: int) -> list:
    """The processes ``pid`` started, and theirs (torchrun's workers), from /proc."""
    children = {}
    for stat in os.listdir('/proc'):
        if stat.isdigit():
            try:
                with open(f'/proc/{stat}/stat') as f:
                    ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(stat))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def interrupt(cmd, env, work, procs, sig, **pause):
    """Start ``cmd``, wait until each of its ``procs`` ranks pauses where ``pause`` says (a rank may run ahead
    of rank 0, which records the losses), send ``sig`` to its process group as a terminal's Ctrl-C does (SIGKILL:
    to each of its processes, as a node's loss does); returns the exit status and output."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(env, **{k: str(v) for k, v in pause.items()}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + TIMEOUT
    paused = [work / f'paused.{rank}' for rank in range(procs)]
    while not all(p.exists() for p in paused):
        assert proc.poll() is None, 'the run ended before it could be interrupted:\n' + proc.communicate()[1][-3000:]
        assert time.time() < deadline, 'the run never reached the pause'
        time.sleep(0.2)
    if sig == signal.SIGKILL:
        for pid in [proc.pid] + descendants(proc.pid):
            os.kill(pid, sig)
    else:
        os.killpg(proc.pid, sig)
    (work / 'signalled').touch()
    out, err = proc.communicate(timeout=TIMEOUT)
    for p in paused + [work / 'signalled']:
        p.unlink()
    return proc.returncode, out, err


def assert_resumed_exactly(work, reference, stopped: int, resumed_from: int, total: int):
    """The interrupted run trained iterations 1 .. stopped, the resumed one resumed_from+1 .. total, each with
    the reference's batch (epoch, position in it, images) and loss."""
    ref = {r[0]: r for r in records(reference)}
    assert sorted(ref) == list(range(1, total + 1))
    logged = records(work)
    assert [r[0] for r in logged] == list(range(1, stopped + 1)) + list(range(resumed_from + 1, total + 1))
    for step, epoch, batch, loss, images in logged:
        r = ref[step]
        assert (epoch, batch, images) == r[1:3] + r[4:], f'iteration {step}: {(epoch, batch, images)} vs {r}'
        assert loss == pytest.approx(r[3], rel=1e-5, abs=1e-6), f'iteration {step}'


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize('task,procs,sig,pause', [
    ('det', 1, signal.SIGINT, dict(PAUSE_IN_SAVE=6)),     # Ctrl-C while iteration 6's checkpoint is written
    ('det', 2, signal.SIGKILL, dict(PAUSE_AFTER_ITER=5)),
    ('seg', 1, signal.SIGKILL, dict(PAUSE_AFTER_ITER=5)),
    ('seg', 2, signal.SIGINT, dict(PAUSE_AFTER_ITER=5)),  # Ctrl-C in the middle of the run
])
def test_interrupted_run_resumes_exactly(configs, task, procs, sig, pause):
    config = getattr(configs, task)
    reference = configs.root / f'{task}_{procs}_reference'
    run(train_cmd(config, reference, procs), configs.env)
    work = configs.root / f'{task}_{procs}_{sig.name}'
    code, out, err = interrupt(train_cmd(config, work, procs), configs.env, work, procs, sig, **pause)
    saved = pause.get('PAUSE_IN_SAVE', 3)      # the last checkpoint: the one being written, or iter_3
    checkpoint = str(work / f'iter_{saved}.pth')
    assert (work / 'last_checkpoint').read_text().strip() == checkpoint
    assert read_checkpoint(checkpoint)['meta']['iter'] == saved
    assert not [f for f in os.listdir(work) if f.endswith('.partial')]
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:   # one line from rank 0, naming the checkpoint and the command; exit status 128 + 2
        assert code != 0
        said = [ln for ln in err.splitlines() if ln.startswith('tools/train.py: interrupted by SIG')]
        assert len(said) == 1, err[-3000:]
        assert f'the last complete checkpoint is {checkpoint}; continue with: ' in said[0]
        assert said[0].endswith(f'{osp.basename(config)} --work-dir {work} --resume') or procs > 1, said[0]
        if procs == 1:
            assert code == 130 and err.strip().splitlines()[-1] == said[0] and 'Traceback' not in err, err[-3000:]
    # another seed in the config: the resumed run keeps the interrupted run's (its shuffle, its random draws)
    log = run(train_cmd(config, work, procs, '--resume', options=['randomness.seed=7']), configs.env)
    assert f'the sampler starts after the {saved - 4 if task == "det" and saved > 4 else saved} batches' in log
    assert 'by loading them' not in log           # positioned: no skipped batch was loaded
    stopped = pause.get('PAUSE_IN_SAVE') or pause['PAUSE_AFTER_ITER']
    assert_resumed_exactly(work, reference, stopped=stopped, resumed_from=saved, total=8)


# ---------------------------------------------------------------------------------------- positioning, no runs
class Shapes(torch.utils.data.Dataset):
    """Indices with alternating portrait / landscape sizes; counts the items loaded."""

    def __init__(self, size=11):
        self.size, self.loaded = size, []

    def __len__(self):
        return self.size

    def get_data_info(self, idx):
        return dict(width=10 if idx % 3 else 20, height=15)

    def __getitem__(self, idx):
        self.loaded.append(idx)
        return idx


@pytest.mark.parametrize('batch_sampler', ['AspectRatioBatchSampler', 'BatchSampler'])
def test_epoch_loop_positions_the_sampler_without_loading_skipped_batches(batch_sampler):
    """For every position k in an epoch: the batches after k are the epoch's own, and only they are loaded."""
    from mmdet.datasets.samplers import AspectRatioBatchSampler
    dataset = Shapes()
    sampler = ResumableSampler(dataset, shuffle=True, seed=3)
    batches = (AspectRatioBatchSampler(sampler, 3) if batch_sampler == 'AspectRatioBatchSampler'
               else torch.utils.data.BatchSampler(sampler, 3, drop_last=False))
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=list)
    sampler.set_epoch(1)
    epoch = [list(b) for b in loader]
    assert sorted(i for b in epoch for i in b) == list(range(11)) and len(epoch) == len(loader)
    for done in range(len(epoch) + 1):
        dataset.loaded.clear()
        loop = SimpleNamespace(dataloader=loader, _epoch=1)
        rest = [list(b) for b in ResumableEpochBasedTrainLoop._batches_after(loop, done)]
        assert rest == epoch[done:], done
        assert sorted(dataset.loaded) == sorted(i for b in epoch[done:] for i in b)
        assert [list(b) for b in loader] == epoch          # the next pass is the whole epoch again


def test_infinite_sampler_skips_indices_without_loading():
    dataset = Shapes()
    sampler = ResumableInfiniteSampler(dataset, shuffle=True, seed=5)
    stream = [i for _, i in zip(range(40), iter(sampler))]
    sampler.skip(17)
    assert [i for _, i in zip(range(23), iter(sampler))] == stream[17:]
    assert dataset.loaded == []


def test_resume_with_nothing_to_resume_says_so_and_starts_a_new_run(tmp_path, capsys):
    """--resume on an empty work dir: one line saying there is nothing to resume and that a new run starts
    (mmengine logs 'Auto resumed from the latest checkpoint None.'); a last_checkpoint naming a missing file is an
    error naming it."""
    train = load_tool('train')
    config = osp.join(ROOT, 'configs', 'seg', 'upernet_overlock_t_160k_ade20k.py')
    work = tmp_path / 'work'
    cfg = Config.fromfile(config)
    cfg.work_dir = str(work)
    train.resume_latest(cfg, notice=True)
    out = capsys.readouterr().out
    assert out == f'tools/train.py: --resume: nothing to resume in {work} (no last_checkpoint there); starting a ' \
                  f'new run from scratch\n'
    work.mkdir()
    (work / 'last_checkpoint').write_text(str(work / 'iter_8.pth'))
    with pytest.raises(SystemExit) as err:
        train.main([config, '--work-dir', str(work), '--resume'])
    assert err.value.code == (f"tools/train.py: error: --resume: {work}/last_checkpoint names '{work}/iter_8.pth', "
                              f"which does not exist; pass the checkpoint to resume from: --resume {work}/iter_N.pth "
                              f"(or epoch_N.pth)")


@pytest.mark.parametrize('config,loop,sampler', [
    ('det/mask_rcnn_overlock_t_1x_coco.py', 'ResumableEpochBasedTrainLoop', 'ResumableSampler'),
    ('det/cascade_overlock_b_3x_coco.py', 'ResumableEpochBasedTrainLoop', 'ResumableSampler'),
    ('seg/upernet_overlock_s_160k_ade20k.py', 'ResumableIterBasedTrainLoop', 'ResumableInfiniteSampler'),
    ('demo/cascade_overlock_demo_shapes.py', 'ResumableEpochBasedTrainLoop', 'ResumableSampler'),
    ('demo/upernet_overlock_demo_shapes.py', 'ResumableIterBasedTrainLoop', 'ResumableInfiniteSampler'),
])
def test_recipes_name_the_resumable_loop_and_sampler(config, loop, sampler):
    """The configs ask for them, so mmdet's and mmseg's own tools/train.py resume exactly too: the scoped names
    resolve from the downstream registries to mmoverlock's classes, with the recipes' other settings kept."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', config))
    assert cfg.train_cfg.type == f'mmoverlock.{loop}' and cfg.train_dataloader.sampler.type == f'mmoverlock.{sampler}'
    assert cfg.train_dataloader.sampler.shuffle is True
    if loop.startswith('ResumableEpoch'):
        assert cfg.train_dataloader.batch_sampler.type == 'AspectRatioBatchSampler'   # mmdet's, kept
    registry = __import__(f'{cfg.default_scope}.registry', fromlist=['LOOPS'])
    assert registry.LOOPS.get(cfg.train_cfg.type).__name__ == loop
    assert registry.DATA_SAMPLERS.get(cfg.train_dataloader.sampler.type).__name__ == sampler


# ------------------------------------------------------------------------ the loops in-process, on a toy model
class NoisyPoints(torch.utils.data.Dataset):
    """10 points; loading one adds numpy noise (a random augmentation) and records the index."""

    def __init__(self):
        self.loaded = []

    def __len__(self):
        return 10

    def __getitem__(self, idx):
        self.loaded.append(idx)
        return dict(inputs=torch.tensor([idx / 10., 1.], dtype=torch.float32) + float(np.random.randn()) * 0.01,
                    index=idx)


class ToyModel(torch.nn.Module):
    """A linear regressor with dropout (a random op in the model, like proposal sampling)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 1)
        self.data_preprocessor = torch.nn.Identity()

    def train_step(self, data, optim_wrapper):
        inputs = torch.stack([d['inputs'] for d in data])
        loss = (torch.nn.functional.dropout(self.fc(inputs), 0.5, self.training) - 1).pow(2).mean()
        optim_wrapper.update_params(loss)
        self.last_indices = [d['index'] for d in data]
        return dict(loss=loss)


class Record(Hook):
    """A hook recording (iteration, epoch, batch index, indices, lr, loss); raises at ``stop_at`` (a kill)."""

    priority = 'HIGHEST'

    def __init__(self, stop_at=None):
        self.rows, self.stop_at = [], stop_at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.rows.append((runner.iter + 1, runner.epoch + 1, batch_idx + 1, runner.model.last_indices,
                          runner.optim_wrapper.get_lr()['lr'][0], outputs['loss'].item()))
        if runner.iter + 1 == self.stop_at:
            raise KeyboardInterrupt


def toy_runner(work_dir, loop: dict, sampler: str, hook: Record, seed: int, resume: bool = False, interval=3):
    """Checkpoints every ``interval`` iterations; the lr halves after iteration 5 and (epoch loop) each epoch."""
    from mmengine.runner import Runner
    schedule = [dict(type='MultiStepLR', by_epoch=False, milestones=[5], gamma=0.5)]
    if 'Epoch' in loop['type']:
        schedule.append(dict(type='MultiStepLR', by_epoch=True, milestones=[1, 2], gamma=0.5))
    torch.manual_seed(0)   # the same initial weights
    return Runner(model=ToyModel(), work_dir=str(work_dir), experiment_name=f'toy_{time.time_ns()}',
                  train_dataloader=dict(dataset=NoisyPoints(), batch_size=3, num_workers=0, collate_fn=list,
                                        sampler=dict(type=sampler, shuffle=True)),
                  train_cfg=loop, optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
                  param_scheduler=schedule,
                  default_hooks=dict(checkpoint=dict(type='mmoverlock.AtomicCheckpointHook', by_epoch=False,
                                                     interval=interval), logger=None),
                  custom_hooks=[hook], randomness=dict(seed=seed), resume=resume, default_scope='mmengine')


@pytest.mark.parametrize('loop,sampler,stop,interval', [
    (dict(type='mmoverlock.ResumableEpochBasedTrainLoop', max_epochs=3), 'mmoverlock.ResumableSampler', 8, 3),
    (dict(type='mmoverlock.ResumableEpochBasedTrainLoop', max_epochs=3), 'mmoverlock.ResumableSampler', 5, 3),
    (dict(type='mmoverlock.ResumableEpochBasedTrainLoop', max_epochs=3), 'mmoverlock.ResumableSampler', 7, 4),
    (dict(type='mmoverlock.ResumableEpochBasedTrainLoop', max_epochs=3), 'DefaultSampler', 8, 3),
    (dict(type='mmoverlock.ResumableIterBasedTrainLoop', max_iters=11), 'mmoverlock.ResumableInfiniteSampler', 8, 3),
])
def test_loops_resume_a_toy_run_exactly(tmp_path, loop, sampler, stop, interval):
    """4 batches an epoch (10 points, batch 3): interrupted after iteration ``stop``, resumed from the checkpoint
    of iteration 6 (inside epoch 2), 3 (epoch 1's third batch) or 4 (its last, saved before the epoch's end)
    with another seed in the config: the same batches, epoch positions, learning rates and losses as the
    uninterrupted run, none twice; with our samplers no trained batch is loaded again."""
    reference = Record()
    toy_runner(tmp_path / 'reference', dict(loop), sampler, reference, seed=1, interval=interval).train()
    killed = Record(stop_at=stop)
    with pytest.raises(KeyboardInterrupt):
        toy_runner(tmp_path / 'work', dict(loop), sampler, killed, seed=1, interval=interval).train()
    resumed = Record()
    runner = toy_runner(tmp_path / 'work', dict(loop), sampler, resumed, seed=2, resume=True, interval=interval)
    runner.train()
    saved = stop // interval * interval
    assert [r[0] for r in killed.rows] == list(range(1, stop + 1))
    assert [r[0] for r in resumed.rows] == list(range(saved + 1, len(reference.rows) + 1))
    for row in killed.rows + resumed.rows:
        expected = reference.rows[row[0] - 1]
        assert row[:5] == expected[:5] and row[5] == pytest.approx(expected[5], rel=1e-6), (row, expected)
    assert len({r[4] for r in reference.rows}) > 1                       # the lr did change
    if sampler.startswith('mmoverlock.'):
        loaded = runner.train_dataloader.dataset.loaded
        assert sorted(loaded) == sorted(i for r in resumed.rows for i in r[3])   # no trained batch reloaded
