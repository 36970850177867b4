"""Reliability (issue #8), in-process part: bad input fails early with one clear line, AMP stays finite and
close to fp32, checkpoints are never half-written and never unpickle arbitrary objects, odd inputs run.

The process-level part (SIGKILL + --resume, DDP through tools/dist_train.sh) is tests/test_resume_ddp.py.
"""
import functools
import http.server
import json
import logging
import os
import os.path as osp
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.config import Config

import mmoverlock  # noqa: F401  (registers the models; allow-lists mmengine's checkpoint types)
from mmoverlock import OverLoCK
from mmoverlock.checkpoint import load_overlock_checkpoint, read_checkpoint
from mmoverlock.engine import (AtomicCheckpointHook, ChannelCheckHook, CheckpointCheckHook, atomic_write,
                               check_channels, remove_partial_files)
from mmoverlock.models.layers import GRN

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(ROOT, 'configs')

#: a tiny OverLoCK: out_channels [16, 32, 88, 120] (e2 + e3 // 4, e3 + e3 // 4)
TINY = dict(depth=[1, 1, 1, 1], sub_depth=[1, 1], embed_dim=[16, 32, 64, 96], kernel_size=[7, 7, 7, 7],
            mlp_ratio=2, sub_num_heads=[2, 2], sub_mlp_ratio=2)
TINY_OUT = [16, 32, 88, 120]


def one_line(err) -> str:
    text = str(err.value)
    assert '\n' not in text, f'error spans several lines: {text!r}'
    return text


# ================================================================================================ bad input
@pytest.mark.parametrize('kwargs,expected', [
    (dict(arch='huge'), r"unknown arch 'huge'; valid: \['b', 'base', 's', 'small', 't', 'tiny', 'x-tiny', 'xt'\]"),
    (dict(arch=TINY, out_indices=(0, 5)), r'out_indices=\(0, 5\) out of range; each must be in 0\.\.3'),
    (dict(arch=TINY, frozen_stages=5), r'frozen_stages=5 out of range; expected -1 \(none\), 0 \(stem\) or 1\.\.4'),
    (dict(arch=TINY, frozen_stages=-2), r'frozen_stages=-2 out of range'),
])
def test_bad_backbone_arguments_name_value_and_valid_range(kwargs, expected):
    with pytest.raises(ValueError, match=expected) as err:
        OverLoCK(**kwargs)
    one_line(err)


def build_from_config(path: str, **backbone):
    """Build the model of one of our configs with a (tiny) backbone swapped in, leaving the rest untouched."""
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(path)
    init_default_scope(cfg.default_scope)
    from mmengine.registry import MODELS
    cfg.model.backbone.update(arch=TINY, init_cfg=None, **backbone)
    cfg.model.pop('data_preprocessor', None)
    for key in ('decode_head', 'auxiliary_head'):   # SyncBN cannot be built without a process group
        if key in cfg.model and 'norm_cfg' in cfg.model[key]:
            cfg.model[key].norm_cfg = dict(type='BN', requires_grad=True)
    return cfg, MODELS.build(cfg.model)


def test_detector_neck_mismatch_names_the_right_list():
    """Swap the backbone of the Mask R-CNN config and forget neck.in_channels: one line with the fix."""
    cfg, model = build_from_config(osp.join(CONFIGS, 'det', 'mask_rcnn_overlock_t_1x_coco.py'))
    assert cfg.model.neck.in_channels == [64, 128, 384, 640]     # OverLoCK-T's, not the tiny backbone's
    with pytest.raises(ValueError, match=r'model\.neck\.in_channels=\[64, 128, 384, 640\] does not match the '
                                         r'backbone: OverLoCK\(out_indices=\(0, 1, 2, 3\)\) gives out_channels='
                                         r'\[16, 32, 88, 120\]; set model\.neck\.in_channels=\[16, 32, 88, 120\]') \
            as err:
        check_channels(model)
    one_line(err)
    model.neck.in_channels = TINY_OUT
    check_channels(model)   # the fixed list passes


def test_segmentor_heads_mismatch_names_the_right_value():
    cfg, model = build_from_config(osp.join(CONFIGS, 'seg', 'upernet_overlock_t_160k_ade20k.py'))
    with pytest.raises(ValueError, match=r'model\.decode_head\.in_channels=\[64, 128, 384, 640\] .*'
                                         r'set model\.decode_head\.in_channels=\[16, 32, 88, 120\]'):
        check_channels(model)
    model.decode_head.in_channels = TINY_OUT
    with pytest.raises(ValueError, match=r'model\.auxiliary_head\.in_channels=384 .*'
                                         r'set model\.auxiliary_head\.in_channels=88$'):
        check_channels(model)
    model.auxiliary_head.in_index = 7
    with pytest.raises(ValueError, match=r'auxiliary_head\.in_index=7 is out of range: the backbone returns 4 maps'):
        check_channels(model)


def test_classifier_head_mismatch_names_the_right_values():
    cfg, model = build_from_config(osp.join(CONFIGS, 'cls', 'overlock_t_in1k.py'))
    with pytest.raises(ValueError, match=r'model\.head\.in_channels=640 .* gives out_channels=\[120, 96\]; '
                                         r'set model\.head\.in_channels=120'):
        check_channels(model)


@pytest.mark.parametrize('config', ['det/cascade_overlock_s_3x_coco.py', 'det/mask_rcnn_overlock_t_1x_coco.py',
                                    'seg/upernet_overlock_t_160k_ade20k.py', 'cls/overlock_t_in1k.py',
                                    'demo/cascade_overlock_demo_shapes.py'])
def test_shipped_configs_declare_the_reliability_hooks(config):
    """The configs themselves ask for atomic checkpoints and the two checks (mmdet's, mmseg's and mmpretrain's
    own tools/train.py then run them too); the hooks build from the downstream registries by scoped name."""
    cfg = Config.fromfile(osp.join(CONFIGS, config))
    assert cfg.default_hooks.checkpoint.type == 'mmoverlock.AtomicCheckpointHook'
    ours = [h['type'] for h in cfg.custom_hooks if h['type'].startswith('mmoverlock.')]
    assert ours[:3] == ['mmoverlock.ChannelCheckHook', 'mmoverlock.CheckpointCheckHook',
                        'mmoverlock.DistributedEndHook']
    # and the demo, trained from scratch with 2 images per process, freezes its BatchNorm statistics late
    assert ours[3:] == (['mmoverlock.FreezeBNStatsHook'] if config.startswith('demo/') else [])
    scope = cfg.default_scope
    registry = __import__(f'{scope}.registry', fromlist=['HOOKS']).HOOKS
    for hook in [cfg.default_hooks.checkpoint] + list(cfg.custom_hooks):
        if hook['type'].startswith('mmoverlock.'):
            assert type(registry.build(dict(hook))).__name__ == hook['type'].split('.')[1]


def test_channel_check_runs_as_a_hook():

    detector = nn.Module()
    detector.backbone = OverLoCK(TINY)
    detector.neck = nn.Module()
    detector.neck.in_channels = [16, 32, 88, 121]

    class FakeRunner:   # what before_run sees: the model, wrapped (DDP-like)
        model = nn.Module()
    FakeRunner.model.module = detector
    with pytest.raises(ValueError, match=r'set model\.neck\.in_channels=\[16, 32, 88, 120\]'):
        ChannelCheckHook().before_run(FakeRunner)


# ---------------------------------------------------------------------------------------------- checkpoints
def test_bad_checkpoints_through_init_cfg_give_one_line(tmp_path):
    """Missing, corrupt and other-arch files named in ``init_cfg=dict(type='Pretrained')``."""
    cases = {'missing': (str(tmp_path / 'nope.pth'), FileNotFoundError, r"nope\.pth' does not exist")}
    corrupt = tmp_path / 'corrupt.pth'
    torch.save({'state_dict': OverLoCK(TINY).state_dict()}, corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:5000])             # a download cut short
    cases['corrupt'] = (str(corrupt), ValueError, r'corrupt\.pth\' is corrupt or not a PyTorch checkpoint')
    other = tmp_path / 'other_arch.pth'
    torch.save({'state_dict': OverLoCK(dict(TINY, embed_dim=[16, 32, 64, 128])).state_dict()}, other)
    cases['other'] = (str(other), ValueError, r'does not fit this model \(\d+ shape mismatches, another arch\?\): '
                                              r'.*: checkpoint \(\d+, .*\) vs model \(\d+, .*\)')
    for path, kind, match in cases.values():
        model = OverLoCK(TINY, init_cfg=dict(type='Pretrained', checkpoint=path))
        with pytest.raises(kind, match=match) as err:
            model.init_weights()
        one_line(err)


def test_load_from_checked_before_the_run(tmp_path):
    """mmengine loads ``load_from`` with strict=False (mismatched layers silently stay random): the hook makes
    a mismatch an error when testing or resuming, a one-line warning when fine-tuning."""
    from mmengine.runner import BaseLoop

    other = tmp_path / 'other_arch.pth'
    torch.save({'state_dict': OverLoCK(dict(TINY, embed_dim=[16, 32, 64, 128])).state_dict()}, other)
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(other.read_bytes()[:3000])
    unrelated = tmp_path / 'unrelated.pth'
    torch.save({'state_dict': nn.Linear(2, 2).state_dict()}, unrelated)

    class FakeRunner:
        model = OverLoCK(TINY)
        cfg = Config(dict(resume=False))
        _load_from = str(other)
        _train_loop = None             # Runner.test(): no train loop was built

    hook = CheckpointCheckHook()
    with pytest.raises(ValueError, match=r"other_arch\.pth' does not fit this model \(\d+ shape mismatches, "
                                         r"another arch or number of classes\?\): .*testing and resuming need"):
        hook.before_run(FakeRunner)

    class TrainLoop(BaseLoop):
        def run(self):
            pass

    FakeRunner._train_loop = object.__new__(TrainLoop)   # Runner.train(): fine-tuning from load_from warns
    hook.before_run(FakeRunner)
    FakeRunner.cfg.resume = True                         # ... and resuming does not
    with pytest.raises(ValueError, match='does not fit this model'):
        hook.before_run(FakeRunner)
    for path, match in ((corrupt, 'is corrupt or not a PyTorch checkpoint'), (unrelated, 'shares no tensor name')):
        FakeRunner._load_from = str(path)
        with pytest.raises(ValueError, match=match) as err:
            hook.before_run(FakeRunner)
        one_line(err)
    FakeRunner._load_from = 's3://bucket/x.pth'   # schemes other than files and http(s): left to mmengine
    hook.before_run(FakeRunner)


class ArbitraryCode:
    """What a malicious checkpoint holds: unpickling it would create ``path``."""

    def __init__(self, path):
        self.path = Path(path)

    def __reduce__(self):
        return Path.touch, (self.path, )


def malicious_checkpoint(folder: Path) -> tuple:
    marker = folder / 'code_ran'
    path = folder / 'evil.pth'
    torch.save({'state_dict': OverLoCK(TINY).state_dict(), 'payload': ArbitraryCode(marker)}, path)
    return path, marker


def test_pickle_with_arbitrary_class_is_refused_from_files(tmp_path):
    path, marker = malicious_checkpoint(tmp_path)
    with pytest.raises(ValueError, match=r"evil\.pth' holds objects outside the allow-list and was not loaded"):
        read_checkpoint(str(path))
    with pytest.raises(ValueError, match='outside the allow-list'):
        load_overlock_checkpoint(OverLoCK(TINY), str(path))
    from mmengine.runner import CheckpointLoader  # mmengine's own loader (load_from=, init_cfg of others)
    with pytest.raises(pickle.UnpicklingError, match='Weights only load failed'):
        CheckpointLoader.load_checkpoint(str(path))
    assert not marker.exists()


@pytest.fixture
def http_folder(tmp_path, monkeypatch):
    """A folder served on localhost (no network), and torch.hub's cache under tmp_path."""
    served = tmp_path / 'served'
    served.mkdir()
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()


def test_pickle_with_arbitrary_class_is_refused_from_urls(http_folder, tmp_path):
    served, url = http_folder
    _, marker = malicious_checkpoint(served)
    with pytest.raises(ValueError, match='outside the allow-list'):
        read_checkpoint(f'{url}/evil.pth')
    # mmengine's http loader calls torch.hub with its default weights_only=False; the configs' CheckpointCheckHook
    # reads a load_from URL with weights_only before mmengine loads it (mmengine itself is left as it is)

    class FakeRunner:
        model = OverLoCK(TINY)
        cfg = Config(dict(resume=False))
        _load_from = f'{url}/evil.pth'
        _train_loop = None
    with pytest.raises(ValueError, match=r"evil\.pth' holds objects outside the allow-list") as err:
        CheckpointCheckHook().before_run(FakeRunner)
    one_line(err)
    assert not marker.exists()
    # a real checkpoint from a URL still loads, with mmengine's types (numpy, HistoryBuffer) in it
    from mmengine.logging import HistoryBuffer
    from mmengine.runner import CheckpointLoader
    good = {'state_dict': OverLoCK(TINY).state_dict(),
            'meta': {'seed': np.int64(3), 'epoch': 1}, 'hub': HistoryBuffer([1., 2.], [1, 1])}
    torch.save(good, served / 'good.pth')
    loaded = CheckpointLoader.load_checkpoint(f'{url}/good.pth')
    assert loaded['meta']['seed'] == 3 and loaded['hub'].mean() == 1.5
    assert set(read_checkpoint(f'{url}/good.pth')['state_dict']) == set(good['state_dict'])


# ---------------------------------------------------------------------------------------------- atomic save
KILL_MID_WRITE = textwrap.dedent('''
    import builtins, os, signal, sys
    from mmoverlock.engine import atomic_write
    from mmengine.fileio import LocalBackend

    class KilledHalfway:   # a file object whose write is interrupted by SIGKILL half-way through
        def __init__(self, f):
            self.f = f
        def write(self, data):
            self.f.write(data[:len(data) // 2])
            self.f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return False
        def __getattr__(self, name):
            return getattr(self.f, name)

    real_open, real_fdopen = builtins.open, os.fdopen
    builtins.open = lambda *a, **k: KilledHalfway(real_open(*a, **k))
    os.fdopen = lambda *a, **k: KilledHalfway(real_fdopen(*a, **k))
    write = atomic_write if sys.argv[1] == 'atomic' else lambda path, data: LocalBackend().put(data, path)
    write(sys.argv[2], b'new' * 100000)
''')


@pytest.mark.integration
@pytest.mark.parametrize('backend', ['atomic', 'mmengine'])
def test_kill_during_checkpoint_write(tmp_path, backend):
    """SIGKILL in the middle of writing over an existing checkpoint: the atomic backend leaves the old file
    whole (and a temporary that the next run removes); mmengine's LocalBackend.put leaves a truncated one."""
    target = tmp_path / 'iter_2.pth'
    atomic_write(target, b'old' * 1000)
    proc = subprocess.run([sys.executable, '-c', KILL_MID_WRITE, backend, str(target)], cwd=ROOT,
                          capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    if backend == 'atomic':
        assert target.read_bytes() == b'old' * 1000
        assert [Path(p).name for p in remove_partial_files(str(tmp_path))] != []
        assert os.listdir(tmp_path) == ['iter_2.pth']
    else:   # the failure the atomic backend exists for
        assert target.read_bytes() == b'new' * 50000


def toy_runner(work_dir, checkpoint_hook, max_iters, fail_at=None):
    """A tiny mmengine Runner (linear model, 4 samples) whose save fails at iteration ``fail_at``."""
    from mmengine.hooks import Hook
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Linear(BaseModel):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 1)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            out = self.fc(torch.stack(inputs) if isinstance(inputs, list) else inputs)
            return dict(loss=out.square().mean()) if mode == 'loss' else out

    class FailSave(Hook):
        def before_save_checkpoint(self, runner, checkpoint):
            if runner.iter + 1 == fail_at:
                raise OSError('disk full')

    data = [dict(inputs=torch.randn(2)) for _ in range(4)]
    return Runner(model=Linear(), work_dir=str(work_dir), default_scope='mmengine',
                  train_dataloader=dict(dataset=data, sampler=dict(type='DefaultSampler', shuffle=False),
                                        batch_size=2, collate_fn=dict(type='default_collate')),
                  optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
                  train_cfg=dict(by_epoch=False, max_iters=max_iters),
                  default_hooks=dict(checkpoint=checkpoint_hook, logger=None),
                  custom_hooks=[FailSave()], log_level='WARNING')


@pytest.mark.integration
def test_atomic_checkpoint_hook_keeps_a_resumable_checkpoint_when_a_save_fails(tmp_path, monkeypatch):
    """max_keep_ckpts=1: mmengine deletes iter_2.pth *before* writing iter_3.pth; if that write dies,
    last_checkpoint names a deleted file. AtomicCheckpointHook deletes only after the new one is written."""
    hook = AtomicCheckpointHook(interval=1, by_epoch=False, max_keep_ckpts=1)
    with pytest.raises(OSError, match='disk full'):
        toy_runner(tmp_path, hook, max_iters=4, fail_at=3).train()
    last = (tmp_path / 'last_checkpoint').read_text()
    assert osp.basename(last) == 'iter_2.pth' and osp.isfile(last)
    assert read_checkpoint(last)['meta']['iter'] == 2
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith('.pth')) == ['iter_2.pth']

    # a normal run moves every checkpoint into place from a temporary file and keeps max_keep_ckpts of them
    written = []
    replace = os.replace
    monkeypatch.setattr(os, 'replace', lambda src, dst: written.append((src, dst)) or replace(src, dst))
    work = tmp_path / 'ok'
    toy_runner(work, AtomicCheckpointHook(interval=1, by_epoch=False, max_keep_ckpts=2), max_iters=4).train()
    checkpoints = [(src, dst) for src, dst in written if dst.endswith('.pth')]
    assert [osp.basename(dst) for _, dst in checkpoints] == [f'iter_{i}.pth' for i in range(1, 5)]
    assert all(osp.basename(src).startswith(f'.{osp.basename(dst)}.') for src, dst in checkpoints)
    assert sorted(f for f in os.listdir(work) if '.pth' in f) == ['iter_3.pth', 'iter_4.pth']
    assert (work / 'last_checkpoint').read_text() == str(work / 'iter_4.pth')


@pytest.mark.integration
def test_atomic_checkpoint_hook_drops_only_the_unused_file_client_notices(tmp_path):
    """mmengine's CheckpointHook logs FileClient deprecation notices on every run (before training and at
    each save); ours does not, and leaves the run's logger without the filter afterwards."""
    from mmengine.hooks import CheckpointHook

    def notices(hook, work_dir):
        messages = []
        handler = logging.Handler()
        handler.emit = lambda record: messages.append(record.getMessage())
        runner = toy_runner(work_dir, hook, max_iters=1)
        runner.logger.addHandler(handler)
        runner.train()
        runner.logger.removeHandler(handler)
        return [m for m in messages if 'FileClient' in m or 'HardDiskBackend' in m], runner.logger

    plain, _ = notices(CheckpointHook(interval=1, by_epoch=False), tmp_path / 'plain')
    assert any(m.startswith('"FileClient" will be deprecated') for m in plain)   # (the HardDiskBackend one is
    # logged once per process)
    ours, logger = notices(AtomicCheckpointHook(interval=1, by_epoch=False), tmp_path / 'atomic')
    assert ours == [] and logger.filters == []


# ================================================================================================ precision
def tiny_backbone(seed=0, **kwargs) -> OverLoCK:
    torch.manual_seed(seed)
    model = OverLoCK(TINY, out_indices=(0, 1, 2, 3, 4), **kwargs)
    model.init_weights()
    for name, p in model.named_parameters():   # make GRN and the biases do something
        if name.endswith(('gamma', 'beta')):
            nn.init.normal_(p, 0, 0.5)
    return model


def forward_backward(model, x, dtype=None, loss_scale=1.):
    """Outputs (fp32) and the gradient of every parameter, with autocast to ``dtype`` (None: fp32).
    ``loss_scale`` plays GradScaler: backward of ``loss * loss_scale``, gradients divided back."""
    model.zero_grad()
    with torch.autocast('cpu', dtype=dtype or torch.float32, enabled=dtype is not None):
        outs = model(x)
    loss = sum((o.float() * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs)
    (loss * loss_scale).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]) / loss_scale
    return [o.detach().float() for o in outs], grads


def assert_close_to_fp32(got, ref, out_tol, grad_cos=0.99):
    (outs, grads), (ref_outs, ref_grads) = got, ref
    for o, r in zip(outs, ref_outs):
        assert torch.isfinite(o).all()
        assert ((o - r).abs().max() / r.abs().max()).item() < out_tol
    assert torch.isfinite(grads).all()
    assert torch.cosine_similarity(grads, ref_grads, dim=0).item() > grad_cos


AMP_TOL = {torch.bfloat16: 0.08, torch.float16: 0.02}   # bf16 keeps 8 bits of mantissa, fp16 11


@pytest.fixture(scope='module')
def random_case():
    model = tiny_backbone().train()
    x = torch.randn(2, 3, 64, 64)
    return model, x, forward_backward(model, x)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_autocast_close_to_fp32_on_random_input(random_case, dtype):
    model, x, ref = random_case
    assert_close_to_fp32(forward_backward(model, x, dtype), ref, AMP_TOL[dtype])


@pytest.fixture(scope='module')
def adversarial_case():
    """Eval mode (BN does not re-normalise) with activations in the thousands where fp16 breaks first:
    the input of GRN (its spatial L2 norm exceeds 65504) and ContMix's query / key (their dot products).
    Some true gradients exceed 65504 too; as GradScaler would after backing off, the loss is scaled by 2^-8."""
    model = tiny_backbone().eval()
    with torch.no_grad():
        for blk in model.blocks1:
            blk.proj[0].weight.mul_(10.)         # LN2d scale: GRN input ~2.6e4, its L2 norm ~1.1e5
            blk.proj[4].weight.mul_(1e6)         # the conv feeding GELU -> dwconv -> GRN
        for blk in list(model.sub_blocks3) + list(model.sub_blocks4):
            blk.weight_query[1].weight.mul_(1e4)
            blk.weight_key[2].weight.mul_(1e4)
    x = torch.randn(1, 3, 64, 64)
    return model, x, forward_backward(model, x, loss_scale=2 ** -8)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_autocast_close_to_fp32_on_adversarial_activations(adversarial_case, dtype):
    model, x, ref = adversarial_case
    assert all(torch.isfinite(o).all() for o in ref[0])
    assert_close_to_fp32(forward_backward(model, x, dtype, loss_scale=2 ** -8), ref, AMP_TOL[dtype])


def test_grn_norm_of_large_activations_does_not_overflow_fp16():
    grn = GRN(4)
    nn.init.normal_(grn.gamma)
    x = torch.full((1, 4, 64, 64), 2000.) * torch.tensor([1., .5, .25, 2.]).view(1, 4, 1, 1)   # norm 1.3e5
    ref = grn(x)
    with torch.autocast('cpu', dtype=torch.float16):
        out = grn(x.half())
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all() and torch.allclose(out.float(), ref, rtol=2e-3)


# ================================================================================================ odd inputs
@pytest.mark.parametrize('size', [(7, 9), (33, 47), (65, 31)])
def test_small_and_odd_images_run(size):
    """Maps smaller than the ContMix kernel take the small-map path; odd sides round up at each stride."""
    model = OverLoCK(TINY, out_indices=(0, 1, 2, 3, 4)).train()
    x = torch.randn(2, 3, *size, requires_grad=True)   # (train-mode BN needs 2 values on a 1 x 1 map)
    outs = model(x)
    h, w = size
    for stride, out, channels in zip((4, 8, 16, 32, 32), outs, TINY_OUT + [96]):
        expect = (h, w)
        for _ in range({4: 2, 8: 3, 16: 4, 32: 5}[stride]):
            expect = (-(-expect[0] // 2), -(-expect[1] // 2))    # ceil at each stride-2 conv
        assert out.shape == (2, channels, *expect)
        assert torch.isfinite(out).all()
    sum(o.sum() for o in outs).backward()
    assert torch.isfinite(x.grad).all()


def write_coco(folder: Path, with_objects: list) -> Path:
    """Images (64 x 64 PNG) and COCO instances; image i has one box + polygon if with_objects[i]."""
    import cv2
    images, annotations = [], []
    for i, has in enumerate(with_objects):
        img = (np.random.RandomState(i).rand(64, 64, 3) * 255).astype(np.uint8)
        cv2.imwrite(str(folder / f'{i}.png'), img)
        images.append(dict(id=i, file_name=f'{i}.png', height=64, width=64))
        if has:
            annotations.append(dict(id=len(annotations) + 1, image_id=i, category_id=1, bbox=[8, 8, 30, 20],
                                    area=600, iscrowd=0, segmentation=[[8, 8, 38, 8, 38, 28, 8, 28]]))
    ann = folder / 'instances.json'
    ann.write_text(json.dumps(dict(images=images, annotations=annotations,
                                   categories=[dict(id=1, name='thing')])))
    return ann


@pytest.mark.integration
def test_image_without_annotations_trains(tmp_path):
    """Mask R-CNN config + filter_empty_gt=False: the image with no object is kept and trained on."""
    from mmengine.runner import Runner
    write_coco(tmp_path, [False, True])
    cfg = Config.fromfile(osp.join(CONFIGS, 'det', 'mask_rcnn_overlock_t_1x_coco.py'))
    cfg.model.backbone.update(arch=TINY, init_cfg=None, drop_path_rate=0.)
    cfg.model.neck.in_channels = TINY_OUT
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                dict(type='Resize', scale=(64, 64), keep_ratio=True), dict(type='PackDetInputs')]
    cfg.train_dataloader = dict(
        batch_size=1, num_workers=0, persistent_workers=False,
        sampler=dict(type='DefaultSampler', shuffle=False), batch_sampler=None,
        dataset=dict(type='CocoDataset', data_root=str(tmp_path), ann_file='instances.json',
                     data_prefix=dict(img=''), metainfo=dict(classes=('thing', )), pipeline=pipeline,
                     filter_cfg=dict(filter_empty_gt=False, min_size=0)))
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=100)
    for key in ('val_dataloader', 'val_evaluator', 'val_cfg', 'test_dataloader', 'test_evaluator', 'test_cfg',
                'param_scheduler', 'auto_scale_lr', 'tta_model', 'tta_pipeline'):
        cfg.pop(key, None)
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.log_level = 'WARNING'
    losses = []

    from mmengine.hooks import Hook

    class RecordLosses(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            losses.append((len(data_batch['data_samples'][0].gt_instances), float(outputs['loss'].detach())))

    runner = Runner.from_cfg(cfg)
    assert len(runner.train_dataloader.dataset) == 2       # the empty image was not filtered out
    runner.register_hook(RecordLosses())
    runner.train()
    assert [n for n, _ in losses] == [0, 1]                 # iteration 1 trained on the image without objects
    assert all(np.isfinite(loss) for _, loss in losses)
