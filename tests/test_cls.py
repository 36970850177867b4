"""Classification suite: the shipped ImageNet configs, train / test through tools/ on a tiny ImageFolder set,
and an official ImageNet checkpoint evaluated in mmpretrain after tools/convert_official.py --task cls."""
import math
import os
import os.path as osp
import pickle
import uuid

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.registry import init_default_scope
from PIL import Image

import mmoverlock.models.mmpretrain  # noqa: F401  (registers OverLoCK and the mmpretrain adapter)

from .conftest import ROOT, find, load_tool
from .helpers import layout_state, rel_err

CLS_CONFIGS = {v: osp.join(ROOT, 'configs', 'cls', f'overlock_{v}_in1k.py') for v in ('xt', 't', 's', 'b')}
CLASSES = ('ant', 'bee')
TINY_CROP = 32                  # stands in for 224
MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])


# ---------------------------------------------------------------------------------------------- shipped configs
@pytest.mark.parametrize('variant,e3,dpr,crop_pct', [
    ('xt', 336, 0.1, 0.925), ('t', 512, 0.15, 0.95), ('s', 512, 0.4, 0.95), ('b', 576, 0.5, 0.975)])
def test_config_builds_with_official_values(variant, e3, dpr, crop_pct):
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(CLS_CONFIGS[variant])
    assert cfg.custom_imports.imports == ['mmoverlock', 'mmoverlock.models.mmpretrain']
    backbone, head = cfg.model.backbone, cfg.model.head
    assert backbone.arch == variant and backbone.drop_path_rate == dpr
    assert tuple(backbone.out_indices) == (3, 4) and backbone.layout == 'classification'
    assert (head.type, head.num_classes, head.projection, head.aux_loss_weight) == (
        'mmoverlock.OverLoCKClsHead', 1000, 1024, 0.4)
    assert head.loss == dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original')
    assert [a['type'] for a in cfg.model.train_cfg.augments] == ['Mixup', 'CutMix']
    assert [a['alpha'] for a in cfg.model.train_cfg.augments] == [0.8, 1.0]
    assert cfg.optim_wrapper.optimizer.lr == 2e-3 and cfg.optim_wrapper.optimizer.weight_decay == 0.05
    assert cfg.optim_wrapper.clip_grad.max_norm == 5.0
    assert cfg.auto_scale_lr.base_batch_size == 2048 == 8 * cfg.train_dataloader.batch_size
    assert cfg.train_cfg.max_epochs == 300
    ema = find(cfg.custom_hooks, 'EMAHook')
    assert ema['momentum'] == pytest.approx(1 - 0.9999)
    train = cfg.train_dataloader.dataset.pipeline
    randaug = find(train, 'RandAugment')
    assert (randaug['magnitude_level'], randaug['magnitude_std'], randaug['policies']) == (9, 0.5, 'timm_increasing')
    assert find(train, 'RandomErasing')['erase_prob'] == 0.25
    resize = find(cfg.test_dataloader.dataset.pipeline, 'ResizeEdge')
    assert resize['scale'] == math.floor(224 / crop_pct) and resize['interpolation'] == 'bicubic'

    init_default_scope('mmpretrain')
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    # the head reads what the backbone gives: (e3 + e3 // 4, e3)
    assert model.backbone.out_channels == [e3 + e3 // 4, e3]
    assert model.head.main_head[0].in_channels == e3 + e3 // 4 and model.head.aux_head[0].num_features == e3

    img = np.random.RandomState(0).randint(0, 255, (300, 400, 3), dtype=np.uint8)
    sample = dict(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2], gt_label=3)
    for key in ('train_dataloader', 'test_dataloader'):
        out = Compose(cfg[key].dataset.pipeline[1:])(dict(sample))    # all but LoadImageFromFile
        assert tuple(out['inputs'].shape) == (3, 224, 224)


def test_weight_decay_spares_exactly_the_1d_params(fixture):
    """timm's optimizer factory: no decay for parameters with ndim <= 1 (the model has no no_weight_decay list)."""
    from mmengine.optim import build_optim_wrapper
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    cfg = tiny_cfg(fixture, Config.fromfile(CLS_CONFIGS['t']), data_root='unused')
    model = MODELS.build(cfg.model)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {id(p): g['weight_decay'] for g in optim.param_groups for p in g['params']}
    params = dict(model.named_parameters())
    assert any(p.ndim == 3 for p in params.values())        # ContMix relative position biases: decayed
    for name, param in params.items():
        assert decay[id(param)] == (0. if param.ndim <= 1 else 0.05), name


def test_lr_schedule_follows_timm_cosine_per_epoch():
    """timm's CosineLRScheduler as the release set it, stepped once per epoch: linear warm-up from 1e-6 over
    5 epochs, then 1e-5 + (lr - 1e-5) * (1 + cos(pi * t / 300)) / 2."""
    from mmengine.optim.scheduler import CosineAnnealingLR, LinearLR
    cfg = Config.fromfile(CLS_CONFIGS['t'])
    base = cfg.optim_wrapper.optimizer.lr
    optim = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=base)
    kinds = dict(LinearLR=LinearLR, CosineAnnealingLR=CosineAnnealingLR)
    schedulers = [kinds[s.pop('type')](optim, **s) for s in map(dict, cfg.param_scheduler)]
    assert all(s.by_epoch for s in schedulers)

    def timm(t):
        if t < 5:
            return 1e-6 + t / 5 * (base - 1e-6)
        return 1e-5 + (base - 1e-5) * (1 + math.cos(math.pi * t / 300)) / 2

    for epoch in range(300):
        assert optim.param_groups[0]['lr'] == pytest.approx(timm(epoch), rel=1e-3), epoch
        optim.step()   # no gradient: changes nothing, and the schedulers step after it, as in training
        for s in schedulers:
            s.step()


# ---------------------------------------------------------------------------------------------- tiny runs
def make_image_folder(root, rng, per_class):
    """ImageFolder layout: ROOT/<class>/<image>.png."""
    for label, name in enumerate(CLASSES):
        os.makedirs(osp.join(root, name))
        for i in range(per_class):
            img = rng.randint(0, 80, (40 + 4 * i, 48, 3)).astype(np.uint8)
            img[10:30, 10:30, label] = 230                 # a class-coloured square
            Image.fromarray(img).save(osp.join(root, name, f'{name}_{i}.png'))


def tiny_cfg(fixture, cfg, data_root, num_classes=len(CLASSES), projection=16):
    """The shipped config with the fixture's tiny arch, tiny crops and a CustomDataset (ImageFolder) set."""
    arch = fixture['arch']
    e3 = arch['embed_dim'][3]
    cfg.model.backbone.arch = arch
    cfg.model.head.update(num_classes=num_classes, in_channels=e3 + e3 // 4, overview_channels=e3,
                          projection=projection)
    cfg.data_preprocessor.num_classes = num_classes
    train = cfg.train_dataloader.dataset.pipeline
    for choice in find(train, 'RandomChoice')['transforms']:
        choice[0]['scale'] = TINY_CROP
    test = cfg.test_dataloader.dataset.pipeline
    crop_pct = 224 / find(test, 'ResizeEdge')['scale']
    find(test, 'ResizeEdge')['scale'] = int(TINY_CROP / crop_pct)
    find(test, 'CenterCrop')['crop_size'] = TINY_CROP
    for key, prefix in (('train_dataloader', 'train'), ('val_dataloader', 'val'), ('test_dataloader', 'val')):
        pipeline = cfg[key].dataset.pipeline
        cfg[key] = dict(batch_size=2, num_workers=0, persistent_workers=False, sampler=cfg[key].sampler,
                        dataset=dict(type='CustomDataset', data_root=data_root, data_prefix=prefix,
                                     pipeline=pipeline))
    cfg.val_dataloader.dataset.pipeline = test
    cfg.val_evaluator = cfg.test_evaluator = dict(type='Accuracy', topk=(1, ))
    cfg.train_cfg.update(max_epochs=1, val_interval=1)      # 4 images / batch 2 = 2 iterations
    cfg.default_hooks.logger.interval = 1
    cfg.visualizer.name = f'cls_vis_{uuid.uuid4().hex}'      # a fresh visualizer, not another test's instance
    cfg.randomness = dict(seed=0)
    return cfg


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('cls') / 'folder')
    rng = np.random.RandomState(0)
    make_image_folder(osp.join(root, 'train'), rng, per_class=2)
    make_image_folder(osp.join(root, 'val'), rng, per_class=2)
    return root


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory, fixture, data_root):
    """Train the T config (tiny arch) for 2 iterations: mixup/cutmix, EMA, clipping, aux loss all on."""
    root = tmp_path_factory.mktemp('cls_run')
    cfg = tiny_cfg(fixture, Config.fromfile(CLS_CONFIGS['t']), data_root)
    cfg_path = str(root / 'overlock_tiny.py')
    cfg.dump(cfg_path)
    work_dir = str(root / 'work')
    load_tool('train').main([cfg_path, '--work-dir', work_dir])
    return dict(cfg=cfg_path, work_dir=work_dir, ckpt=osp.join(work_dir, 'epoch_1.pth'))


def test_train_two_iterations(tiny_run):
    ckpt = torch.load(tiny_run['ckpt'], map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == 2 and ckpt['meta']['epoch'] == 1
    # EMAHook: the EMA copy is kept besides the model (mmengine stores the averaged weights as the state_dict)
    assert 'ema_state_dict' in ckpt and 'module.head.aux_head.2.weight' in ckpt['ema_state_dict']
    assert 'head.main_head.0.weight' in ckpt['state_dict'] and 'head.aux_head.2.weight' in ckpt['state_dict']


def test_test_with_eval_accuracy(tiny_run, tmp_path):
    out = str(tmp_path / 'results.pkl')
    metrics = load_tool('test').main([tiny_run['cfg'], tiny_run['ckpt'], '--eval', 'accuracy', '--out', out,
                                      '--work-dir', str(tmp_path)])
    with open(out, 'rb') as f:
        dumped = pickle.load(f)
    assert len(dumped) == 2 * len(CLASSES)
    hits = [int(s['pred_score'].argmax()) == int(s['gt_label']) for s in dumped]
    assert metrics['accuracy/top1'] == pytest.approx(100. * sum(hits) / len(hits))


def preprocess_by_hand(path, short, crop):
    """timm's eval transform: shorter side to ``short`` = floor(crop / crop_pct) (PIL bicubic), centre crop,
    normalise with the ImageNet mean and std."""
    img = Image.open(path).convert('RGB')
    w, h = img.size
    size = (short, int(short * h / w)) if w < h else (int(short * w / h), short)
    img = np.asarray(img.resize(size, Image.BICUBIC), dtype=np.float64)
    top, left = int(round((img.shape[0] - crop) / 2.)), int(round((img.shape[1] - crop) / 2.))
    img = (img[top:top + crop, left:left + crop] - MEAN) / STD
    return torch.from_numpy(img.transpose(2, 0, 1)).float()[None]


def test_official_imagenet_checkpoint_gives_official_logits(fixture, data_root, tmp_path):
    """The release's ImageNet checkpoint (tiny fixture) -> tools/convert_official.py --task cls -> mmpretrain
    ImageClassifier built from the shipped config: the official logits, and through tools/test.py the same
    scores (EMAHook on) as the model on a hand-preprocessed image."""
    from mmpretrain.registry import MODELS
    num_classes = fixture['cls_state_dict']['head.4.bias'].numel()
    projection = fixture['cls_state_dict']['head.0.weight'].shape[0]
    cfg = tiny_cfg(fixture, Config.fromfile(CLS_CONFIGS['t']), data_root, num_classes, projection)
    cfg_path = str(tmp_path / 'overlock_tiny_official.py')
    cfg.dump(cfg_path)
    src, dst = str(tmp_path / 'overlock_tiny_in1k_224.pth'), str(tmp_path / 'converted.pth')
    torch.save(fixture['cls_state_dict'], src)            # the release's layout: a flat timm state dict
    load_tool('convert_official').main([src, dst, '--task', 'cls', '--config', cfg_path])

    init_default_scope('mmpretrain')
    model = MODELS.build(cfg.model).eval()
    model.load_state_dict(torch.load(dst, weights_only=True)['state_dict'], strict=True)
    with torch.no_grad():
        for x, ref in zip(fixture['inputs'], fixture['cls_logits']):
            assert rel_err(model(x, mode='tensor'), ref) <= 1e-4

    out = str(tmp_path / 'results.pkl')
    load_tool('test').main([cfg_path, dst, '--eval', 'accuracy', '--out', out, '--work-dir', str(tmp_path)])
    with open(out, 'rb') as f:
        dumped = pickle.load(f)
    short = find(cfg.test_dataloader.dataset.pipeline, 'ResizeEdge')['scale']
    assert short == math.floor(TINY_CROP / 0.95) == 33        # OverLoCK-T's crop_pct at the tiny crop
    for sample in dumped:
        with torch.no_grad():
            ref = model(preprocess_by_hand(sample['img_path'], short, TINY_CROP), mode='tensor').softmax(1)[0]
        assert rel_err(sample['pred_score'], ref) <= 1e-4


def test_release_checkpoints_load_as_they_are_and_deploy_form_gives_reparam_logits(
        fixture, data_root, tmp_path, capsys):
    """The release's files, train form and deploy form (``*_reparam.pth``): the model of the classification
    config reads them without conversion (OverLoCKClassifier: mmpretrain.get_model, load_state_dict), and
    tools/convert_official.py recognises the deploy form and checks it against the deploy-form config, whose
    model gives the fixture's re-parameterised logits, also through tools/test.py."""
    from mmpretrain.registry import MODELS

    from mmoverlock.models.layers import reparam_state_dict
    official = fixture['cls_state_dict']
    num_classes, projection = official['head.4.bias'].numel(), official['head.0.weight'].shape[0]
    deploy_form = reparam_state_dict(official)            # the release's *_reparam.pth: the same keys, merged
    assert not any('origin_bn' in k or 'dil_conv' in k for k in deploy_form)
    init_default_scope('mmpretrain')
    for state, config, expected in ((official, CLS_CONFIGS['t'], fixture['cls_logits']),
                                    (deploy_form, CLS_CONFIGS['t'].replace('.py', '_reparam.py'),
                                     fixture['cls_logits_reparam'])):
        cfg = tiny_cfg(fixture, Config.fromfile(config), data_root, num_classes, projection)
        model = MODELS.build(cfg.model).eval()
        model.load_state_dict(state, strict=True)         # the release's layout, read as it is
        with torch.no_grad():
            for x, ref in zip(fixture['inputs'], expected):
                assert rel_err(model(x, mode='tensor'), ref) <= 1e-4
    cfg_path = str(tmp_path / 'tiny_reparam.py')
    cfg.dump(cfg_path)
    src, dst = str(tmp_path / 'overlock_tiny_in1k_224_reparam.pth'), str(tmp_path / 'converted.pth')
    torch.save(deploy_form, src)
    load_tool('convert_official').main([src, dst, '--task', 'cls', '--config', cfg_path])
    assert 'deploy form (re-parameterised' in capsys.readouterr().out
    converted = torch.load(dst, weights_only=True)
    assert converted['meta']['deploy'] is True
    model.load_state_dict(converted['state_dict'], strict=True)
    with torch.no_grad():
        for x, ref in zip(fixture['inputs'], fixture['cls_logits_reparam']):
            assert rel_err(model(x, mode='tensor'), ref) <= 1e-4
    # tools/test.py evaluates the converted file with the deploy-form config (the shipped hooks check it first;
    # mmpretrain's EMAHook needs the converter's {'state_dict': ...} wrapping)
    metrics = load_tool('test').main([cfg_path, dst, '--eval', 'accuracy', '--work-dir', str(tmp_path / 'test')])
    assert 0 <= metrics['accuracy/top1'] <= 100


def test_deploy_form_official_default_config(tmp_path, capsys):
    """A full-size deploy-form ImageNet file: the converter picks configs/cls/overlock_t_in1k_reparam.py."""
    from mmoverlock.models.layers import reparam_state_dict
    layout = layout_state('cls_t', lambda shape: torch.rand(shape) + 0.5)   # positive running_var for the BN fusion
    src = str(tmp_path / 'overlock_t_in1k_224_reparam.pth')
    torch.save(reparam_state_dict(layout), src)
    info = load_tool('convert_official').convert(src, str(tmp_path / 'out.pth'), 'cls')
    assert osp.basename(info['config']) == 'overlock_t_in1k_reparam.py' and info['form'].startswith('deploy form')


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU fallback applies only without CUDA')
def test_sync_bn_switch_dropped_without_cuda():
    """sync_bn='torch' (the release's SyncBN) would make DDP on CPU (gloo) fail: the tools drop it there."""
    from mmoverlock.cli.device import prepare_for_device
    cfg = Config.fromfile(CLS_CONFIGS['t'])
    assert cfg.sync_bn == 'torch'
    prepare_for_device(cfg)
    assert 'sync_bn' not in cfg
