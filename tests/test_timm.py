"""OverLoCK outside OpenMMLab: the timm models (mmoverlock.timm) and the snippets of docs/standalone.md."""
import contextlib
import copy
import io
import math
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from PIL import Image

import mmoverlock.timm as overlock_timm
from mmoverlock import OverLoCK
from mmoverlock.checkpoint import load_overlock_checkpoint
from mmoverlock.checkpoint.official import official_cls_to_mmpretrain
from mmoverlock.models.layers import is_deploy_form, reparam_state_dict

from .conftest import ROOT
from .helpers import read_layout, rel_err

NAMES = ['overlock_b', 'overlock_s', 'overlock_t', 'overlock_xt']
DOC = osp.join(ROOT, 'docs', 'standalone.md')
MEAN = np.array([123.675, 116.28, 103.53])   # the release's ImageNet mean / std (0-255), as configs/cls says
STD = np.array([58.395, 57.12, 57.375])


def variant_facts(name):
    """configs/_base_/variants/overlock_<v>.py: the release's values every task's config takes."""
    return Config.fromfile(osp.join(ROOT, 'configs', '_base_', 'variants', f'{name}.py')).overlock_variant


def to_release_layout(state):
    """This model's keys (mmpretrain's layout) -> the release's (backbone at the top, head.*, aux_head.*)."""
    out = {}
    for key, value in state.items():
        for ours, release in (('backbone.', ''), ('head.main_head.', 'head.'), ('head.aux_head.', 'aux_head.')):
            if key.startswith(ours):
                out[release + key[len(ours):]] = value
                break
    return out


def tiny(fixture, **kwargs):
    """The fixture's arch (10 classes, projection 64) through timm."""
    return timm.create_model('overlock_t', arch=fixture['arch'], num_classes=10, projection=64, **kwargs)


def from_file(fixture, path, name='overlock_t', **kwargs):
    """``timm.create_model(name, pretrained=True)`` on the fixture's arch, weights from a local file."""
    kwargs = dict(dict(arch=fixture['arch'], num_classes=10, projection=64), **kwargs)
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10),
                             **kwargs).eval()


@pytest.fixture(scope='module')
def release_file(fixture, tmp_path_factory):
    """The fixture's ImageNet model as the release ships it (a flat state dict) and its deploy form."""
    root = tmp_path_factory.mktemp('release')
    train, deploy = root / 'overlock_tiny_in1k_224.pth', root / 'overlock_tiny_in1k_224_reparam.pth'
    torch.save(fixture['cls_state_dict'], train)
    torch.save(reparam_state_dict(fixture['cls_state_dict']), deploy)
    return dict(train=train, deploy=deploy)


@pytest.fixture(scope='module')
def mmpretrain_model(fixture):
    """The mmpretrain path: OverLoCKClassifier built as the configs build it, reading the release's layout."""
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS

    import mmoverlock.models.mmpretrain  # noqa: F401
    init_default_scope('mmpretrain')
    e3 = fixture['arch']['embed_dim'][3]
    model = MODELS.build(dict(
        type='mmoverlock.OverLoCKClassifier',
        backbone=dict(type='mmoverlock.OverLoCK', arch=fixture['arch'], out_indices=(3, 4), layout='classification'),
        head=dict(type='mmoverlock.OverLoCKClsHead', num_classes=10, in_channels=e3 + e3 // 4, overview_channels=e3,
                  projection=64, loss=dict(type='CrossEntropyLoss'))))
    model.load_state_dict(fixture['cls_state_dict'], strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------- registration
@pytest.mark.slow
def test_import_mmoverlock_does_not_import_timm():
    code = ("import sys, mmoverlock; assert 'timm' not in sys.modules, 'timm imported'; "
            "import mmoverlock.timm, timm; print(timm.list_models('overlock*'))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr.strip().splitlines()[-1:]
    assert out.stdout.strip() == str(NAMES)


def test_names_and_pretrained_tags():
    assert timm.list_models('overlock*') == NAMES
    assert timm.list_pretrained('overlock*') == sorted(f'{n}.{t}' for n in NAMES for t in ('in1k', 'in1k_reparam'))


@pytest.mark.slow
@pytest.mark.parametrize('name', ['overlock_xt', 'overlock_t', 'overlock_s', 'overlock_b'])
def test_full_size_models_match_the_release(name):
    """On the meta device: every key and shape of the release's ImageNet model, the weight URLs and test crop
    of configs/, feature_info = the dense configs' channels, and the release's eval transform."""
    facts = variant_facts(name)
    model = timm.create_model(name, device='meta')
    release = official_cls_to_mmpretrain(read_layout(f'cls_{facts.arch}.tsv'))
    with_aux = timm.create_model(name, device='meta', aux_logits=True)
    assert {k: tuple(v.shape) for k, v in with_aux.state_dict().items()} == release
    # timm's default has no auxiliary loss, so the Overview-Net's head is not built
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: shape for k, shape in release.items() if not k.startswith('head.aux_head.')}
    assert model.feature_info == [dict(num_chs=c, reduction=r, module=m) for c, r, m in zip(
        facts.channels, (4, 8, 16, 32),
        ('backbone.blocks1', 'backbone.blocks2', 'cat', 'backbone.sub_blocks4'))]   # stage 3: its fx node
    assert (model.num_features, model.head_hidden_size, model.num_classes) == (facts.channels[3], 1024, 1000)

    cfg = model.pretrained_cfg
    assert (cfg['tag'], cfg['url'], cfg['crop_pct'], cfg['num_classes']) == (
        'in1k', facts.checkpoint, facts.crop_pct, 1000)
    reparam = timm.create_model(f'{name}.in1k_reparam', device='meta')
    assert reparam.pretrained_cfg['url'] == facts.reparam_checkpoint
    assert is_deploy_form(reparam.state_dict()) and not is_deploy_form(model.state_dict())

    data = timm.data.resolve_data_config({}, model=model)
    assert (data['input_size'], data['interpolation'], data['crop_pct']) == ((3, 224, 224), 'bicubic', facts.crop_pct)
    resize, crop, _, normalize = timm.data.create_transform(**data).transforms
    assert resize.size == math.floor(224 / facts.crop_pct) and resize.interpolation.value == 'bicubic'
    assert crop.size == (224, 224)
    assert np.allclose(normalize.mean, MEAN / 255) and np.allclose(normalize.std, STD / 255)


def test_eval_transform_is_the_release_preprocessing(tmp_path):
    """timm's transform from our cfg = the release's eval preprocessing done by hand (tests/test_cls.py)."""
    from .test_cls import preprocess_by_hand
    model = timm.create_model('overlock_xt', device='meta')
    path = str(tmp_path / 'img.png')
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (300, 437, 3), dtype=np.uint8)).save(path)
    ours = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))(Image.open(path))
    ref = preprocess_by_hand(path, math.floor(224 / 0.925), 224)[0]
    assert ours.shape == ref.shape == (3, 224, 224)
    assert rel_err(ours, ref) <= 1e-5


# ---------------------------------------------------------------------------------------------- the golden logits
def test_pretrained_from_local_file_gives_release_and_mmpretrain_logits(fixture, release_file, mmpretrain_model):
    model = from_file(fixture, release_file['train'], aux_logits=True)
    assert not is_deploy_form(model.state_dict())
    with torch.no_grad():
        for x, ref in zip(fixture['inputs'], fixture['cls_logits']):
            logits = model(x)
            assert rel_err(logits, ref) <= 1e-4
            assert rel_err(logits, mmpretrain_model(x, mode='tensor')) <= 1e-6
            # the auxiliary (Overview-Net) head too
            overview = model.backbone.forward_features(x)[4]
            assert rel_err(model.head.forward_aux(overview),
                           mmpretrain_model.head.forward_aux(mmpretrain_model.extract_feat(x))) <= 1e-6
    # the same key layout: a timm model's state dict loads into the mmpretrain classifier as it is
    other = copy.deepcopy(mmpretrain_model)
    other.load_state_dict({k: v + 1 for k, v in model.state_dict().items()}, strict=True)
    assert torch.equal(other.state_dict()['head.main_head.4.bias'], model.head.main_head[4].bias + 1)


@pytest.mark.parametrize('source', ['deploy', 'train'])
def test_deploy_form_gives_reparam_logits(fixture, release_file, mmpretrain_model, source):
    """The in1k_reparam tag builds deploy=True: it reads the release's *_reparam.pth, and train-form weights
    re-parameterised on the way; both give the release's re-parameterised logits, as does the mmpretrain
    model after switch_to_deploy."""
    model = from_file(fixture, release_file[source], name='overlock_t.in1k_reparam')
    assert is_deploy_form(model.state_dict())
    deployed = copy.deepcopy(mmpretrain_model)
    deployed.backbone.switch_to_deploy()
    with torch.no_grad():
        for x, ref in zip(fixture['inputs'], fixture['cls_logits_reparam']):
            assert rel_err(model(x), ref) <= 1e-4
            assert rel_err(model(x), deployed(x, mode='tensor')) <= 1e-5


def test_every_checkpoint_layout_loads(fixture, release_file, tmp_path):
    """Through checkpoint_filter_fn: mmpretrain's layout, nested (state_dict / model / state_dict_ema), a
    'module.' prefix; model.load_state_dict reads the release's layout as well; reparameterize_model merges."""
    mm = official_cls_to_mmpretrain(fixture['cls_state_dict'])
    x, ref = fixture['inputs'][0], fixture['cls_logits'][0]
    variants = {'mmpretrain.pth': dict(state_dict=mm, meta=dict(epoch=3)),
                'model.pth': dict(model=fixture['cls_state_dict']),
                'ema.pth': dict(state_dict_ema={'module.' + k: v for k, v in fixture['cls_state_dict'].items()})}
    for file, content in variants.items():
        torch.save(content, tmp_path / file)
        with torch.no_grad():
            assert rel_err(from_file(fixture, tmp_path / file)(x), ref) <= 1e-4, file
    model = tiny(fixture).eval()
    nested = dict(state_dict_ema={'module.' + k: v for k, v in fixture['cls_state_dict'].items()})
    filtered = overlock_timm.checkpoint_filter_fn(nested, model)
    # the auxiliary head is not built without aux_logits: its weights are skipped
    assert set(filtered) == set(model.state_dict()) == {k for k in mm if not k.startswith('head.aux_head.')}
    assert all(torch.equal(v, mm[k]) for k, v in filtered.items())
    model.load_state_dict(fixture['cls_state_dict'], strict=True)
    with torch.no_grad():
        assert rel_err(model(x), ref) <= 1e-4
        merged = timm.utils.reparameterize_model(model)
        assert is_deploy_form(merged.state_dict())
        assert rel_err(merged(x), fixture['cls_logits_reparam'][0]) <= 1e-4


# ---------------------------------------------------------------------------------------------- timm interface
def test_features_only(fixture, release_file):
    """Four stage maps equal to the plain backbone's (ImageNet layout, the same file); feature_info follows."""
    backbone = OverLoCK(fixture['arch'], out_indices=(0, 1, 2, 3), layout='classification').eval()
    load_overlock_checkpoint(backbone, str(release_file['train']))
    e = fixture['arch']['embed_dim']
    channels = [e[0], e[1], e[2] + e[3] // 4, e[3] + e[3] // 4]
    x = fixture['inputs'][2]                       # 130 x 190: not a multiple of 32
    with torch.no_grad():
        refs = backbone(x)
        for out_indices, picked in ((None, [0, 1, 2, 3]), ((1, 3), [1, 3]), ((-1,), [3]), (2, [2, 3])):
            kwargs = {} if out_indices is None else dict(out_indices=out_indices)
            model = from_file(fixture, release_file['train'], features_only=True, **kwargs)
            assert model.feature_info.channels() == [channels[i] for i in picked]
            assert model.feature_info.reduction() == [(4, 8, 16, 32)[i] for i in picked]
            assert not any(k.startswith('model.head') for k in model.state_dict())      # the head is pruned
            feats = model(x)
            assert len(feats) == len(picked)
            for f, i in zip(feats, picked):
                assert f.shape == refs[i].shape and f.shape[1] == channels[i]
                assert torch.equal(f, refs[i])
    assert [tuple(f.shape[-2:]) for f in refs] == [(33, 48), (17, 24), (9, 12), (5, 6)]


def test_forward_head_reset_classifier_and_num_classes(fixture, release_file, tmp_path):
    model = from_file(fixture, release_file['train'], aux_logits=True)
    x = fixture['inputs'][0]
    with torch.no_grad():
        last = model.forward_features(x)
        assert last.shape == (2, model.num_features, 3, 4)
        pre = model.forward_head(last, pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size) == (2, 64)
        assert torch.equal(model.forward_head(last), model(x))
        assert rel_err(model.get_classifier()(pre[..., None, None]).flatten(1), fixture['cls_logits'][0]) <= 1e-4

        model.reset_classifier(5)
        assert model.num_classes == 5 and model(x).shape == (2, 5) and model.head.aux_head[2].out_channels == 5
        model.reset_classifier(0)
        assert model.head.aux_head is None and torch.equal(model(x), pre)

        # another num_classes from the same file: classifiers new, everything else the release's
        for n in (3, 0):
            other = timm.create_model('overlock_t', pretrained=True, arch=fixture['arch'], projection=64,
                                      num_classes=n, pretrained_cfg_overlay=dict(file=str(release_file['train']),
                                                                                 num_classes=10)).eval()
            assert other(x).shape == (2, n or 64)
            assert torch.equal(other.forward_head(other.forward_features(x), pre_logits=True), pre)


def test_aux_logits_in_training(fixture, release_file):
    assert not any('aux_head' in k for k in tiny(fixture).state_dict())     # parameters only where used
    model = tiny(fixture, aux_logits=True)
    x = fixture['inputs'][0]
    out = model.train()(x)
    assert set(out) == {'main', 'aux'} and out['main'].shape == out['aux'].shape == (2, 10)
    (out['main'] + 0.4 * out['aux']).sum().backward()
    assert model.head.aux_head[2].weight.grad is not None and model.head.main_head[4].weight.grad is not None
    assert model.eval()(x).shape == (2, 10)
    assert tiny(fixture).train()(x).shape == (2, 10)      # off by default: timm's train scripts get a tensor
    # the release's weights load either way, strictly (the auxiliary head's skipped without one)
    for aux in (False, True):
        other = tiny(fixture, aux_logits=aux)
        other.load_state_dict(fixture['cls_state_dict'], strict=True)
        assert (other.head.aux_head is not None) == aux


def test_training_options_reach_the_model(fixture):
    from mmoverlock.models.layers import DropPath
    model = tiny(fixture, drop_path_rate=0.2, drop_rate=0.5, dtype=torch.float64)
    assert max(m.drop_prob for m in model.modules() if isinstance(m, DropPath)) == pytest.approx(0.2)
    assert model.head.drop.p == 0.5 and {p.dtype for p in model.parameters()} == {torch.float64}
    model.set_grad_checkpointing()
    assert model.backbone.with_cp and model.grad_checkpointing
    model.train()(fixture['inputs'][0].double()).sum().backward()
    assert model.backbone.patch_embed1[0].weight.grad is not None


def test_clear_errors(fixture, release_file, tmp_path):
    def one_line_error(match, **kwargs):
        with pytest.raises(ValueError, match=match) as info:
            kwargs.pop('make', tiny)(fixture, **kwargs)
        assert '\n' not in str(info.value)

    one_line_error(r'in_chans=0 must be a positive integer', in_chans=0)
    with pytest.raises(TypeError, match=r"unsupported argument\(s\) \['img_size'\]"):   # timm's contract
        tiny(fixture, img_size=256)
    one_line_error(r"global_pool='catavgmax' is not supported", global_pool='catavgmax')
    one_line_error(r"feature_cls='hook'.*'getter'", features_only=True, feature_cls='hook')
    one_line_error(r'out_indices=\(0, 4\) out of range', features_only=True, out_indices=(0, 4))
    one_line_error(r'deploy form.*deploy=True', make=from_file, path=release_file['deploy'])
    one_line_error(r'does not fit.*head.main_head.0.weight', make=from_file, path=release_file['train'],
                   projection=32)
    torch.save({'conv.weight': torch.zeros(1)}, tmp_path / 'other.pth')
    one_line_error(r'not an OverLoCK ImageNet model', make=from_file, path=tmp_path / 'other.pth')
    with pytest.raises(ValueError, match="global_pool='catavgmax'"):
        tiny(fixture).reset_classifier(3, 'catavgmax')


# ---------------------------------------------------------------------------------------------- docs/standalone.md
def doc_snippets():
    """(python code, the text block after it) of every runnable snippet of docs/standalone.md."""
    text = open(DOC).read()
    return re.findall(r'```python\n(.*?)```\s*```text\n(.*?)```', text, re.S)


def test_doc_channel_table():
    rows = re.findall(r"^\| OverLoCK-\w+ \| `'(\w+)'` \| ([\d, ]+) \| (\d+) \|$", open(DOC).read(), re.M)
    assert [r[0] for r in rows] == ['xt', 't', 's', 'b']
    for arch, channels, overview in rows:
        with torch.device('meta'):
            backbone = OverLoCK(arch, out_indices=(0, 1, 2, 3, 4))
        assert backbone.out_channels == [int(c) for c in channels.split(',')] + [int(overview)]
        assert backbone.out_channels[:4] == variant_facts(f'overlock_{arch}').channels


@pytest.fixture(scope='module')
def release_t_file(tmp_path_factory):
    """A full-size OverLoCK-T file in the release's layout (every key and shape of cls_t.tsv), init weights."""
    root = tmp_path_factory.mktemp('weights')
    state = to_release_layout(timm.create_model('overlock_t', aux_logits=True).state_dict())
    assert {k: tuple(v.shape) for k, v in state.items()} == read_layout('cls_t.tsv')
    torch.save(state, root / 'overlock_t_in1k_224.pth')
    return root


@pytest.mark.slow
@pytest.mark.parametrize('index', [0, 1], ids=['plain_pytorch', 'timm'])
def test_doc_snippet_runs_as_written(index, release_t_file, monkeypatch):
    snippets = doc_snippets()
    assert len(snippets) == 2
    code, expected = snippets[index]
    monkeypatch.chdir(release_t_file)
    MMLogger.get_current_instance()     # mmengine's log lines (checkpoint loading) keep going to its own stream
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f'{DOC}[{index}]', 'exec'), {'__name__': '__doc_snippet__'})
    assert out.getvalue() == expected


# ---------------------------------------------------------------------------------------------- timm's conventions
def test_in_chans_adapts_the_release_stem_on_every_route(fixture, release_file, mmpretrain_model):
    """timm (first_conv), the mmpretrain classifier (load_state_dict) and the dense backbone
    (load_overlock_checkpoint): a 3-channel stem adapted as timm's adapt_input_conv does."""
    from timm.models import adapt_input_conv as timm_adapt

    from mmoverlock.checkpoint import adapt_input_conv
    rgb = fixture['cls_state_dict']['patch_embed1.0.weight']
    x = fixture['inputs'][0]
    for chans in (1, 2, 4, 7):
        expected = timm_adapt(chans, rgb.clone())
        assert torch.equal(adapt_input_conv(chans, rgb), expected)
        model = from_file(fixture, release_file['train'], in_chans=chans)
        assert torch.equal(model.backbone.patch_embed1[0].weight, expected)
        with torch.no_grad():
            assert model(torch.randn(2, chans, 64, 64)).shape == (2, 10)
        backbone = OverLoCK(fixture['arch'], in_channels=chans, layout='detection')
        load_overlock_checkpoint(backbone, str(release_file['train']))
        assert torch.equal(backbone.patch_embed1[0].weight, expected)
    # a grey image through in_chans=1 gives the RGB model's logits of that image repeated on 3 channels
    grey = from_file(fixture, release_file['train'], in_chans=1)
    with torch.no_grad():
        rgb_model = from_file(fixture, release_file['train'])
        assert rel_err(grey(x[:, :1]), rgb_model(x[:, :1].expand(-1, 3, -1, -1))) <= 1e-5
    mm = copy.deepcopy(mmpretrain_model)
    mm.backbone.patch_embed1[0] = torch.nn.Conv2d(1, rgb.shape[0], 3, 2, 1, bias=False)
    mm.load_state_dict(fixture['cls_state_dict'], strict=True)
    assert torch.equal(mm.backbone.patch_embed1[0].weight, timm_adapt(1, rgb.clone()))
    with pytest.raises(ValueError, match='cannot be adapted to in_chans=2'):
        adapt_input_conv(2, torch.zeros(8, 5, 3, 3))


def test_global_pool_and_classifier_reset_follow_timm(fixture, release_file):
    model = from_file(fixture, release_file['train'])
    x = fixture['inputs'][0]
    with torch.no_grad():
        logits, last = model(x), model.forward_features(x)
        unpooled = from_file(fixture, release_file['train'], global_pool='')
        maps = unpooled(x)                                   # the 1x1 classifier on every position
        assert maps.shape == (2, 10) + last.shape[-2:]
        assert rel_err(maps.mean((2, 3)), logits) <= 1e-5   # linear: pooling after = pooling before
        model.reset_classifier(0, '')
        assert model(x).shape == (2, model.head_hidden_size) + last.shape[-2:]
        model.reset_classifier(0, 'avg')
        assert model(x).shape == (2, model.head_hidden_size)
        assert from_file(fixture, release_file['train'], global_pool='max')(x).shape == (2, 10)


@pytest.mark.slow
def test_torchscript_and_fx_give_the_eager_outputs(fixture, release_file):
    """torch.jit.script of the whole model, and torch.fx through torchvision's create_feature_extractor with no
    tracer arguments (mmoverlock's data-dependent helpers are torch.fx.wrap leaves) and through timm's."""
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor
    model = from_file(fixture, release_file['train'])
    x = fixture['inputs'][2]                            # 130 x 190: small maps resized to the kernels, pooled back
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(torch.jit.script(model)(x), expected)
        extractor = create_feature_extractor(model, return_nodes={'cat': 'stage3', 'head.flatten': 'logits'})
        out = extractor(x)
        assert torch.allclose(out['logits'], expected, rtol=0, atol=1e-6)
        assert torch.allclose(out['stage3'], model.forward_intermediates(x, indices=[2])[1][0], rtol=0, atol=1e-6)
        traced = create_feature_extractor(model, return_nodes=['head.flatten'], tracer_kwargs=dict(
            leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions()))
        assert torch.allclose(traced(x)['head.flatten'], expected, rtol=0, atol=1e-6)
        # timm's fx feature path: the getter's maps
        getter = from_file(fixture, release_file['train'], features_only=True)
        graph = from_file(fixture, release_file['train'], features_only=True, feature_cls='fx')
        for a, b in zip(graph(x), getter(x)):
            assert torch.allclose(a, b, rtol=0, atol=1e-6)
    model.train()
    out = create_feature_extractor(model, return_nodes=['head.flatten'])(x)['head.flatten']
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_dilated_reparam_branches_sum_in_the_tables_order():
    """The spelled-out (TorchScript) sum of DilatedReparamBlock covers every branch of every kernel size, in
    the table's order: the same float result as the table's loop."""
    from mmoverlock.models.layers import BRANCH_ORDER, DILATED_BRANCHES, DilatedReparamBlock
    x = torch.randn(1, 4, 20, 20)
    for kernel, (sizes, dilations) in DILATED_BRANCHES.items():
        branches = list(zip(sizes, dilations))
        assert [b for b in BRANCH_ORDER if b in branches] == branches, kernel
        block = DilatedReparamBlock(4, kernel).eval()
        for m in block.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.uniform_(m.weight)
                torch.nn.init.uniform_(m.running_mean)
        with torch.no_grad():
            expected = block.origin_bn(block.lk_origin(x))
            for k, r in branches:
                expected = expected + getattr(block, f'dil_bn_k{k}_{r}')(getattr(block, f'dil_conv_k{k}_{r}')(x))
            assert torch.equal(block(x), expected)
            assert torch.equal(torch.jit.script(block)(x), expected)
