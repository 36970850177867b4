"""Reliability (issue #8), process-level part: a run killed with SIGKILL resumes with ``tools/train.py --resume``
and computes the same losses as an uninterrupted run; ``tools/dist_train.sh`` / ``dist_test.sh`` with two CPU
processes (gloo), and two "nodes" on localhost, give what one process gives on the same global batch.

Setting: a tiny OverLoCK classifier (mmpretrain) on 8 images made here, BN frozen (``norm_eval``) so that every
sample is computed alone and DDP's averaged gradient equals the single-process batch gradient; SGD with momentum
(so resuming must restore the optimizer state); no random augmentation or drop path.
"""
import os
import os.path as osp
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from mmoverlock.checkpoint import read_checkpoint

from .helpers import free_port

pytestmark = pytest.mark.integration   # SIGKILL, resume and 2-process runs of the tools

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(ROOT, 'tools')
MAX_ITERS = 8
CKPT_INTERVAL = 2
PAUSE_AFTER = 5          # the killed run is stopped after iteration 5: it has iter_4.pth, iteration 5 is lost
TIMEOUT = 400

LOSS_HOOK = textwrap.dedent('''
    """Test helper: records every training loss exactly; can stop a run after a given iteration."""
    import os, time
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS

    @HOOKS.register_module()
    class RecordLossHook(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            step = runner.iter + 1
            if runner.rank == 0:
                with open(os.path.join(runner.work_dir, 'losses.txt'), 'a') as f:
                    f.write(f"{step} {float(outputs['loss'])!r}\\n")
            if step == int(os.environ.get('PAUSE_AFTER_ITER', 0)):
                open(os.path.join(runner.work_dir, 'paused'), 'w').close()
                time.sleep(3600)   # killed here by the test
''')

CONFIG = textwrap.dedent('''
    default_scope = 'mmpretrain'
    custom_imports = dict(imports=['mmoverlock', 'record_loss_hook'], allow_failed_imports=False)
    tiny = dict(depth=[1, 1, 1, 1], sub_depth=[1, 1], embed_dim=[16, 32, 64, 96], kernel_size=[7, 7, 7, 7],
                mlp_ratio=2, sub_num_heads=[2, 2], sub_mlp_ratio=2)
    model = dict(
        type='ImageClassifier',
        data_preprocessor=dict(type='ClsDataPreprocessor', num_classes=2, mean=[127.5] * 3, std=[127.5] * 3),
        backbone=dict(type='mmoverlock.OverLoCK', arch=tiny, out_indices=(3, ), layout='classification',
                      norm_eval=True),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=2, in_channels=120, loss=dict(type='CrossEntropyLoss'),
                  topk=(1, )))
    pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
    dataset = dict(type='CustomDataset', data_root={data!r}, pipeline=pipeline)
    train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                            sampler=dict(type='DefaultSampler', shuffle=True), dataset=dataset)
    test_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                           sampler=dict(type='DefaultSampler', shuffle=False), dataset=dataset)
    test_evaluator = dict(type='Accuracy', topk=(1, ))
    test_cfg = dict()
    train_cfg = dict(by_epoch=False, max_iters={max_iters})
    optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9))
    # mmoverlock's hooks, declared as the shipped configs declare them
    default_hooks = dict(
        checkpoint=dict(type='mmoverlock.AtomicCheckpointHook', by_epoch=False, interval={interval}),
        logger=dict(type='LoggerHook', interval=1))
    custom_hooks = [dict(type='RecordLossHook'), dict(type='mmoverlock.ChannelCheckHook'),
                    dict(type='mmoverlock.CheckpointCheckHook'), dict(type='mmoverlock.DistributedEndHook')]
    log_processor = dict(by_epoch=False, window_size=1)
    randomness = dict(seed=0)
    env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
                   dist_cfg=dict(backend='gloo'))
    log_level = 'INFO'
''')


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """8 images of two classes, the config, and the environment the tools run in."""
    import cv2
    root = tmp_path_factory.mktemp('reliability')
    rng = np.random.RandomState(0)
    for label in range(2):
        os.makedirs(root / 'data' / f'class_{label}')
        for i in range(4):
            img = np.clip(rng.randn(32, 32, 3) * 40 + (80 if label else 170), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / 'data' / f'class_{label}' / f'{i}.png'), img)
    (root / 'record_loss_hook.py').write_text(LOSS_HOOK)
    config = root / 'tiny_cls.py'
    config.write_text(CONFIG.format(data=str(root / 'data'), max_iters=MAX_ITERS, interval=CKPT_INTERVAL))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), ROOT, os.environ.get('PYTHONPATH', '')]),
               PYTHON=sys.executable, OMP_NUM_THREADS='1', MASTER_ADDR='127.0.0.1')
    env.pop('PAUSE_AFTER_ITER', None)
    return root, str(config), env


def run(cmd, env, cwd=ROOT, **extra_env):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=dict(env, **extra_env), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f'{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    return proc.stdout + proc.stderr


def train(config, work_dir, env, *args):
    return run([sys.executable, osp.join(TOOLS, 'train.py'), config, '--work-dir', work_dir, *args], env)


def losses(work_dir) -> list:
    """[(iteration, loss)] in the order they were logged (a killed then resumed run repeats iterations)."""
    with open(osp.join(work_dir, 'losses.txt')) as f:
        return [(int(step), float(loss)) for step, loss in (line.split() for line in f)]


def weights(path) -> dict:
    return read_checkpoint(str(path))['state_dict']


@pytest.fixture(scope='module')
def reference(setup):
    """One uninterrupted single-process run: 8 iterations, a checkpoint every 2."""
    root, config, env = setup
    work = root / 'uninterrupted'
    train(config, work, env)
    ref = dict(losses(work))
    assert sorted(ref) == list(range(1, MAX_ITERS + 1))
    assert max(ref.values()) - min(ref.values()) > 1e-3                  # the weights do move
    return work, ref


def test_sigkill_then_resume_gives_the_losses_of_an_uninterrupted_run(setup, reference):
    root, config, env = setup
    ref_dir, ref = reference
    work = root / 'killed'
    proc = subprocess.Popen([sys.executable, osp.join(TOOLS, 'train.py'), config, '--work-dir', str(work)],
                            cwd=ROOT, env=dict(env, PAUSE_AFTER_ITER=str(PAUSE_AFTER)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + TIMEOUT
    while not (work / 'paused').exists():
        assert proc.poll() is None, 'the run ended before it could be killed'
        assert time.time() < deadline, 'the run never reached the kill point'
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL

    # what the killed run left: a complete checkpoint of iteration 4, named by last_checkpoint, nothing partial
    last = (work / 'last_checkpoint').read_text().strip()
    assert osp.basename(last) == 'iter_4.pth'
    assert read_checkpoint(last)['meta']['iter'] == 4
    assert not [f for f in os.listdir(work) if f.endswith('.partial')]
    assert [s for s, _ in losses(work)] == list(range(1, PAUSE_AFTER + 1))

    log = train(config, work, env, '--resume')
    assert 'resumed' in log.lower() and 'iter_4.pth' in log
    logged = losses(work)
    resumed = logged[PAUSE_AFTER:]
    assert [s for s, _ in resumed] == list(range(PAUSE_AFTER, MAX_ITERS + 1))   # continues at 5, not at 1
    for step, loss in logged:
        assert loss == pytest.approx(ref[step], rel=1e-6, abs=1e-7), f'iteration {step}'
    final, ref_final = weights(work / f'iter_{MAX_ITERS}.pth'), weights(ref_dir / f'iter_{MAX_ITERS}.pth')
    assert max((final[k] - ref_final[k]).abs().max().item() for k in ref_final) < 1e-5


def predictions(path) -> torch.Tensor:
    """Scores of a ``tools/test.py --out`` dump, ordered by sample index."""
    import mmengine
    results = mmengine.load(path)
    order = np.argsort([r['sample_idx'] for r in results])
    return torch.stack([torch.as_tensor(results[i]['pred_score']) for i in order])


def assert_same_weights(a: dict, b: dict, tol=1e-5):
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < tol, f'weights differ by {worst}'


def test_dist_train_and_test_two_processes_match_one_process(setup, reference):
    """2 processes x 2 images per iteration == 1 process x 4 images (the global batch), 4 iterations."""
    root, config, env = setup
    ref_dir, _ = reference
    work = root / 'ddp'
    log = run(['bash', osp.join(TOOLS, 'dist_train.sh'), config, '2', '--work-dir', work, '--cfg-options',
               'train_dataloader.batch_size=2', 'train_cfg.max_iters=4'], env, PORT=str(free_port()))
    assert 'GPU number: 2' in log                                     # mmengine's env info: world size
    assert_same_weights(weights(work / 'iter_4.pth'), weights(ref_dir / 'iter_4.pth'))

    single_out, dist_out = root / 'single.pkl', root / 'dist.pkl'
    run([sys.executable, osp.join(TOOLS, 'test.py'), config, ref_dir / 'iter_4.pth', '--work-dir',
         root / 'test_single', '--out', single_out], env)
    log = run(['bash', osp.join(TOOLS, 'dist_test.sh'), config, work / 'iter_4.pth', '2', '--work-dir',
               root / 'test_dist', '--out', dist_out], env, PORT=str(free_port()))
    assert 'accuracy/top1' in log
    single, dist = predictions(single_out), predictions(dist_out)
    assert single.shape == dist.shape == (8, 2)                        # every image once, none twice
    assert torch.allclose(single, dist, atol=1e-4)


def test_two_nodes_on_localhost_match_one_process(setup, reference):
    """NNODES=2: node 0 and node 1, one process each, started as two background jobs of dist_train.sh."""
    root, config, env = setup
    ref_dir, _ = reference
    work = root / 'nodes'
    port = str(free_port())
    cmd = ['bash', osp.join(TOOLS, 'dist_train.sh'), config, '1', '--work-dir', str(work), '--cfg-options',
           'train_dataloader.batch_size=2', 'train_cfg.max_iters=4']
    nodes = [subprocess.Popen(cmd, cwd=ROOT, env=dict(env, NNODES='2', NODE_RANK=str(rank), PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=TIMEOUT)[0] for node in nodes]
    for rank, (node, out) in enumerate(zip(nodes, outputs)):
        assert node.returncode == 0, f'node {rank} failed:\n{out[-3000:]}'
    assert_same_weights(weights(work / 'iter_4.pth'), weights(ref_dir / 'iter_4.pth'))


def test_testing_another_models_checkpoint_fails_in_one_line(setup, reference):
    """tools/test.py with a checkpoint whose head has 3 classes: an error naming the mismatch, not a silent
    evaluation of a half-random model (mmengine's strict=False load)."""
    root, config, env = setup
    ref_dir, _ = reference
    checkpoint = read_checkpoint(str(ref_dir / 'iter_4.pth'))
    checkpoint['state_dict']['head.fc.weight'] = torch.zeros(3, 120)
    checkpoint['state_dict']['head.fc.bias'] = torch.zeros(3)
    bad = root / 'three_classes.pth'
    torch.save(checkpoint, bad)
    proc = subprocess.run([sys.executable, osp.join(TOOLS, 'test.py'), config, str(bad), '--work-dir',
                           str(root / 'test_bad')], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "three_classes.pth' does not fit this model (2 shape mismatches" in last
    assert 'head.fc.weight: checkpoint (3, 120) vs model (2, 120)' in last
