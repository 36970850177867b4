"""The OverLoCK backbone: official layouts, checkpoint loading, freezing, checkpointing, deploy, errors."""
import copy
import glob
import os.path as osp

import pytest
import torch
from mmengine.logging import MMLogger
from torch.nn.modules.batchnorm import _BatchNorm

from mmoverlock import OverLoCK
from mmoverlock.checkpoint import load_overlock_checkpoint
from mmoverlock.checkpoint.official import official_cls_to_mmpretrain
from mmoverlock.models.backbones.overlock import arch_settings
from mmoverlock.models.mmpretrain import OverLoCKClsHead

from .conftest import LAYOUTS
from .helpers import parse_shape, read_layout

LAYOUT_FILES = sorted(glob.glob(osp.join(LAYOUTS, '*.tsv')))


def official_model(task, arch, num_classes=1000, projection=1024):
    """Our model arranged with the official names (cls: backbone + head as mmpretrain has them)."""
    if task == 'cls':
        model = torch.nn.Module()
        model.backbone = OverLoCK(arch, out_indices=(3, 4), layout='classification')
        e3 = model.backbone.arch['embed_dim'][3]
        model.head = OverLoCKClsHead(num_classes, e3 + e3 // 4, e3, projection=projection)
        return model
    return OverLoCK(arch, layout='detection' if task == 'det' else 'segmentation')


def test_all_official_layouts_are_listed():
    names = {osp.basename(p)[:-4] for p in LAYOUT_FILES}
    assert names == {f'{t}_{a}' for t in ('cls', 'det', 'seg') for a in ('xt', 't', 's', 'b')} - {
        'det_xt', 'seg_xt'}


def test_layout_shapes_are_parsed_not_evaluated():
    assert [parse_shape(s) for s in ('()', '(32,)', '(64, 3, 3, 3)')] == [(), (32,), (64, 3, 3, 3)]
    for bad in ("__import__('os').getcwd()", '(64, -3)', '[64, 3]', '(64 3)'):
        with pytest.raises(ValueError, match='is not a tuple of integers'):
            parse_shape(bad)


@pytest.mark.parametrize('path', LAYOUT_FILES, ids=lambda p: osp.basename(p)[:-4])
def test_state_dict_matches_official_layout(path):
    task, arch = osp.basename(path)[:-4].split('_')
    with torch.device('meta'):
        model = official_model(task, arch)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if task == 'cls':
        official = {official_cls_to_mmpretrain({k: torch.empty(0)}).popitem()[0]: s
                    for k, s in read_layout(path).items()}
    else:
        official = read_layout(path)
    assert sorted(ours) == sorted(official)
    assert ours == official


@pytest.mark.parametrize('arch,channels', [('xt', [56, 112, 340, 420]), ('t', [64, 128, 384, 640]),
                                           ('s', [64, 128, 448, 640]), ('b', [80, 160, 528, 720])])
def test_out_channels(arch, channels):
    with torch.device('meta'):
        assert OverLoCK(arch).out_channels == channels
        assert OverLoCK(arch, out_indices=(1, 4)).out_channels == [channels[1], arch_settings[arch]['embed_dim'][3]]


@pytest.mark.parametrize('arch,params', [('xt', 16.45), ('t', 33.47), ('s', 56.16), ('b', 94.94)])
def test_param_count_matches_official_readme(arch, params):
    """Deploy form, main head with 1000 classes, without the aux head (the official README's convention)."""
    model = official_model('cls', arch)
    model.backbone.switch_to_deploy()
    count = sum(p.numel() for n, p in model.named_parameters() if not n.startswith('head.aux_head'))
    assert round(count / 1e6, 2) == params


# ----------------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize('nesting', [None, 'state_dict', 'model', 'state_dict_ema'])
def test_pretrained_imagenet_checkpoint_loads_into_dense_backbone(fixture, tmp_path, nesting):
    state = fixture['cls_state_dict']
    path = str(tmp_path / 'official.pth')
    torch.save(state if nesting is None else {nesting: state, 'epoch': 3}, path)
    log_file = tmp_path / 'log.txt'
    MMLogger.get_instance(f'test_load_{nesting}', log_file=str(log_file))
    model = OverLoCK(fixture['arch'], init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    for key, value in model.state_dict().items():
        if key in state:
            assert torch.equal(value, state[key]), key
    log = log_file.read_text()
    assert 'new, left at init: extra_norm (10), h_proj (4)' in log
    assert 'dropped: aux_head (7), head (8)' in log


def test_pretrained_with_prefix_reproduces_fixture(fixture, tmp_path):
    path = str(tmp_path / 'ours.pth')
    torch.save({'meta': {'epoch': 1}, 'state_dict': {
        'backbone.' + k: v for k, v in fixture['det_state_dict'].items()}}, path)
    model = OverLoCK(fixture['arch'], init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    model.init_weights()
    model.eval()
    x, refs = fixture['inputs'][1], fixture['det_features'][1]
    with torch.no_grad():
        for ours, ref in zip(model(x), refs):
            torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_train_form_checkpoint_loads_into_deploy_model(fixture, tmp_path):
    path = str(tmp_path / 'seg.pth')
    torch.save(fixture['seg_state_dict'], path)
    model = OverLoCK(fixture['arch'], layout='segmentation', deploy=True).eval()
    result = load_overlock_checkpoint(model, path)
    assert result == dict(missing=[], unexpected=[])
    x, refs = fixture['inputs'][0], fixture['seg_features'][0]
    with torch.no_grad():
        for ours, ref in zip(model(x), refs):
            torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('task,layout', [('det', 'detection'), ('seg', 'segmentation')])
def test_deploy_form_checkpoint_initialises_a_deploy_backbone(fixture, tmp_path, task, layout):
    """A deploy-form backbone file (e.g. from the release's *_reparam.pth ImageNet weights) initialises a dense
    backbone built with deploy=True through init_cfg, and gives the train-form model's features; a train-form
    model refuses it in one line."""
    from mmoverlock.models.layers import reparam_state_dict
    deploy_form = reparam_state_dict(fixture[f'{task}_state_dict'])
    path = str(tmp_path / 'deploy_form.pth')
    torch.save(deploy_form, path)
    model = OverLoCK(fixture['arch'], layout=layout, deploy=True,
                     init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    state = model.state_dict()
    assert set(state) == set(deploy_form) and all(torch.equal(state[k], v) for k, v in deploy_form.items())
    with torch.no_grad():
        for ours, ref in zip(model.eval()(fixture['inputs'][2]), fixture[f'{task}_features'][2]):
            torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    train_form = OverLoCK(fixture['arch'], layout=layout, init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(ValueError, match=r"is re-parameterised \(deploy form\); build the model with deploy=True"):
        train_form.init_weights()


def test_other_arch_checkpoint_lists_mismatches(fixture, tmp_path):
    path = str(tmp_path / 'tiny.pth')
    torch.save(fixture['det_state_dict'], path)
    arch = dict(fixture['arch'], embed_dim=[16, 32, 64, 128])
    with pytest.raises(ValueError, match=r'shape mismatches.*patch_embed4\.0\.weight: checkpoint'):
        load_overlock_checkpoint(OverLoCK(arch), path)


def test_missing_and_corrupt_checkpoints(tmp_path):
    model = OverLoCK(dict(arch_settings['t'], depth=[1, 1, 1, 1], sub_depth=[1, 1]))
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_overlock_checkpoint(model, str(tmp_path / 'nope.pth'))
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='corrupt'):
        load_overlock_checkpoint(model, str(bad))


# --------------------------------------------------------------------------- training-time behaviour
def tiny_arch(fixture):
    return fixture['arch']


@pytest.mark.parametrize('frozen', [0, 1, 2, 3, 4])
def test_frozen_stages(fixture, frozen):
    model = OverLoCK(tiny_arch(fixture), frozen_stages=frozen)
    model.train()
    for stage in range(5):
        modules = model.stage_modules(stage)
        params = [p for m in modules for p in m.parameters()]
        assert params
        assert all(p.requires_grad == (stage > frozen) for p in params), stage
        bns = [m for mod in modules for m in mod.modules() if isinstance(m, _BatchNorm)]
        assert all(bn.training == (stage > frozen) for bn in bns), stage
    every = {id(p) for s in range(5) for m in model.stage_modules(s) for p in m.parameters()}
    assert every == {id(p) for p in model.parameters()}, 'stages must cover every parameter'


def test_frozen_stem_keeps_running_stats(fixture):
    model = OverLoCK(tiny_arch(fixture), frozen_stages=0).train()
    before = copy.deepcopy(model.patch_embed1.state_dict())
    model(torch.randn(1, 3, 64, 64))
    for key, value in model.patch_embed1.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not torch.equal(model.patch_embed2[1].running_mean, torch.zeros_like(model.patch_embed2[1].running_mean))


def test_norm_eval(fixture):
    model = OverLoCK(tiny_arch(fixture), norm_eval=True)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns and not any(bn.training for bn in bns)
    means = [bn.running_mean.clone() for bn in bns]
    model(torch.randn(1, 3, 64, 64))
    assert all(torch.equal(bn.running_mean, m) for bn, m in zip(bns, means))


def test_with_cp_same_output_and_gradients(fixture):
    torch.manual_seed(0)
    plain = OverLoCK(tiny_arch(fixture), norm_eval=True)
    plain.init_weights()
    ckpt = copy.deepcopy(plain)
    ckpt.with_cp = True
    plain.train()
    ckpt.train()
    x = torch.randn(1, 3, 48, 64)
    outs_plain, outs_ckpt = plain(x), ckpt(x)
    for a, b in zip(outs_plain, outs_ckpt):
        torch.testing.assert_close(a, b)
    sum(o.square().mean() for o in outs_plain).backward()
    sum(o.square().mean() for o in outs_ckpt).backward()
    grads_plain = dict(plain.named_parameters())
    for name, p in ckpt.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, grads_plain[name].grad, rtol=1e-4, atol=1e-6)


def test_switch_to_deploy_same_output(fixture):
    model = OverLoCK(tiny_arch(fixture), layout='detection')
    model.load_state_dict(fixture['det_state_dict'])  # random weights with perturbed BN statistics
    model.eval()
    x = torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        before = model(x)
        model.switch_to_deploy()
        after = model(x)
    assert not any('origin_bn' in k or 'dil_conv' in k for k in model.state_dict())
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_forward_shapes_and_drop_path(fixture):
    model = OverLoCK(tiny_arch(fixture), out_indices=(0, 1, 2, 3, 4), drop_path_rate=0.3).train()
    outs = model(torch.randn(2, 3, 97, 131))
    e = fixture['arch']['embed_dim']
    c = e[3] // 4
    assert [tuple(o.shape) for o in outs] == [(2, e[0], 25, 33), (2, e[1], 13, 17), (2, e[2] + c, 7, 9),
                                              (2, e[3] + c, 4, 5), (2, e[3], 4, 5)]
    rates = [b.drop_path.drop_prob for b in model.sub_blocks4]
    assert rates[-1] == pytest.approx(0.3)


# --------------------------------------------------------------------------------------- errors, registry
def test_bad_arch_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown arch 'huge'; valid: \['b', 'base', .*'t', .*'xt'\]"):
        OverLoCK('huge')
    with pytest.raises(ValueError, match=r"lacks \['sub_depth'"):
        OverLoCK(dict(depth=[1, 1, 1, 1]))


@pytest.mark.parametrize('kwargs,match', [
    (dict(out_indices=(0, 5)), r'out_indices=\(0, 5\) out of range'),
    (dict(frozen_stages=5), 'frozen_stages=5 out of range'),
    (dict(layout='imagenet'), r"layout='imagenet' is not one of \['classification', 'detection', 'segmentation'\]"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OverLoCK('t', **kwargs)


@pytest.mark.parametrize('package', ['mmdet', 'mmseg', 'mmpretrain'])
def test_registry_resolves_in_downstream_packages(fixture, package):
    """``mmoverlock.OverLoCK`` builds from each downstream registry (scoped name, as mmdet configs name
    ``mmpretrain.ConvNeXt``); the plain name is not written into mmengine's root registry."""
    import importlib
    registry = importlib.import_module(f'{package}.registry').MODELS
    model = registry.build(dict(type='mmoverlock.OverLoCK', arch=fixture['arch'], out_indices=(3, )))
    assert isinstance(model, OverLoCK) and model.out_channels == [120]
    with pytest.raises(KeyError, match='OverLoCK is not in the'):
        registry.build(dict(type='OverLoCK', arch=fixture['arch']))


def test_gelu_runs_on_the_nhwc_view_of_channels_last_maps_without_autograd():
    """mmoverlock's GELU: without autograd, a channels-last CPU map goes to PyTorch's GELU as its contiguous
    NHWC view (twice as fast there) and comes back channels-last, equal to nn.GELU up to erf's last bit; under
    autograd, and for NCHW maps, PyTorch's op sees the map as it is and gives nn.GELU's values exactly."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from mmoverlock.models.layers import GELU
    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is torch.ops.aten.gelu:
                seen.append((tuple(args[0].shape), args[0].is_contiguous()))
            return func(*args, **(kwargs or {}))

    gelu, plain = GELU(), torch.nn.GELU()
    x = torch.randn(2, 8, 5, 6).contiguous(memory_format=torch.channels_last)
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
        xd = x.to(dtype)
        with torch.no_grad(), Record():
            out = gelu(xd)
        assert seen.pop() == ((2, 5, 6, 8), True)
        assert out.shape == x.shape and out.dtype == dtype
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert (out.float() - plain(xd).float()).abs().max().item() <= tol * 4
    with torch.no_grad(), Record():
        assert torch.equal(gelu(x.contiguous()), plain(x.contiguous()))
    assert seen.pop() == ((2, 8, 5, 6), True)
    xg, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
    with Record():
        out = gelu(xg)
    assert seen.pop() == ((2, 8, 5, 6), False)
    ref = plain(xp)
    assert torch.equal(out, ref)
    out.sum().backward()
    ref.sum().backward()
    assert torch.equal(xg.grad, xp.grad)
    model = OverLoCK('xt')
    assert not any(type(m) is torch.nn.GELU for m in model.modules())
    assert any(isinstance(m, GELU) for m in model.modules())
