"""Segmentation suite: the shipped UperNet configs, and train / test through tools/ on a tiny ADE-format set."""
import glob
import os
import os.path as osp
import pickle
import uuid

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.registry import init_default_scope

import mmoverlock  # noqa: F401  (registers OverLoCK)

from .conftest import ROOT, find, load_tool

SEG_CONFIGS = {v: osp.join(ROOT, 'configs', 'seg', f'upernet_overlock_{v}_160k_ade20k.py') for v in 'tsb'}
TINY_CROP = (64, 64)
TINY_SCALE = (128, 64)          # stands in for (2048, 512)
IMAGE_HW = (80, 96)             # not a multiple of 32: the test resize must change it
NUM_TRAIN, NUM_VAL = 4, 2


# ---------------------------------------------------------------------------------------------- shipped configs
@pytest.mark.parametrize('variant,dpr,channels', [
    ('t', 0.2, [64, 128, 384, 640]), ('s', 0.3, [64, 128, 448, 640]), ('b', 0.5, [80, 160, 528, 720])])
def test_config_builds_with_official_values(variant, dpr, channels):
    from mmseg.registry import MODELS
    cfg = Config.fromfile(SEG_CONFIGS[variant])
    assert cfg.custom_imports.imports == ['mmoverlock']
    backbone = cfg.model.backbone
    assert backbone.type == 'mmoverlock.OverLoCK' and backbone.arch == variant
    assert backbone.layout == 'segmentation' and backbone.drop_path_rate == dpr
    assert backbone.init_cfg.checkpoint.endswith(f'/v1/overlock_{variant}_in1k_224.pth')
    assert cfg.model.decode_head.channels == 512 and cfg.model.decode_head.num_classes == 150
    assert cfg.model.auxiliary_head.in_index == 2
    assert cfg.model.auxiliary_head.loss_decode.loss_weight == 0.4
    assert cfg.model.decode_head.norm_cfg.type == 'SyncBN'
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01)
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys == {'norm': dict(decay_mult=0.)}
    assert cfg.train_cfg.max_iters == 160000 and cfg.train_cfg.val_interval == 16000
    assert cfg.train_dataloader.batch_size == 2 and cfg.model.data_preprocessor.size == (512, 512)
    assert cfg.default_hooks.checkpoint.save_best == 'mIoU'

    init_default_scope('mmseg')
    backbone.init_cfg = None                      # no download
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    # the decode heads read what the backbone gives
    assert model.backbone.out_channels == channels == cfg.model.decode_head.in_channels
    assert model.auxiliary_head.in_channels == channels[2]
    assert len(model.backbone.blocks1) == model.backbone.arch['depth'][0]
    for key in ('train_dataloader', 'test_dataloader'):
        Compose(cfg[key].dataset.pipeline)
    Compose(cfg.tta_pipeline)


def test_test_pipeline_resizes_to_multiple_of_32():
    """(2048, 512) keep-ratio resize, then each side to a multiple of 32 with bicubic interpolation."""
    init_default_scope('mmseg')
    cfg = Config.fromfile(SEG_CONFIGS['t'])
    pipeline = Compose(cfg.test_dataloader.dataset.pipeline[1:2] + cfg.test_dataloader.dataset.pipeline[2:3])
    img = np.random.RandomState(0).randint(0, 255, (375, 500, 3), dtype=np.uint8)
    out = pipeline(dict(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2]))
    # keep-ratio to (2048, 512): 375 x 500 -> 512 x 683; then 683 -> 704 (ceil to a multiple of 32)
    assert out['img'].shape[:2] == (512, 704)
    assert out['img_shape'] == (512, 704) and out['ori_shape'] == (375, 500)
    rescaled = cv2.resize(img, (683, 512), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(out['img'], cv2.resize(rescaled, (704, 512), interpolation=cv2.INTER_CUBIC))


def test_tta_scales_the_test_scale():
    cfg = Config.fromfile(SEG_CONFIGS['t'])
    resizes = cfg.tta_pipeline[1].transforms[0]
    assert [r['scale'] for r in resizes] == [(1024, 256), (1536, 384), (2048, 512), (2560, 640), (3072, 768),
                                             (3584, 896)]
    flips = cfg.tta_pipeline[1].transforms[2]
    assert sorted(f['prob'] for f in flips) == [0., 1.]
    assert cfg.tta_model.type == 'SegTTAModel'


def test_norm_params_get_no_weight_decay(fixture):
    """custom_keys={'norm': decay_mult 0}: exactly the parameters whose name contains 'norm'."""
    from mmengine.optim import build_optim_wrapper
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    cfg = tiny_cfg(fixture, Config.fromfile(SEG_CONFIGS['t']), data_root='unused', pretrained=None)
    model = MODELS.build(cfg.model)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {id(p): g['weight_decay'] for g in optim.param_groups for p in g['params']}
    names = dict(model.named_parameters())
    assert any('extra_norm' in n for n in names)
    for name, param in names.items():
        assert decay[id(param)] == (0. if 'norm' in name else 0.01), name


def test_lr_schedule_matches_mmcv1_poly_with_linear_warmup():
    """mmcv 1: lr = 6e-5 * (1 - it / 160k) * (1 - (1 - it / 1500) * (1 - 1e-6)) while it < 1500."""
    from mmengine.optim.scheduler import LinearLR, PolyLR
    cfg = Config.fromfile(SEG_CONFIGS['t'])
    optim = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim_wrapper.optimizer.lr)
    kinds = dict(LinearLR=LinearLR, PolyLR=PolyLR)
    schedulers = [kinds[s.pop('type')](optim, **s) for s in map(dict, cfg.param_scheduler)]

    def official(it):
        poly = 6e-5 * (1 - it / 160000)
        return poly * (1 - (1 - it / 1500) * (1 - 1e-6)) if it < 1500 else poly

    for it in range(3001):
        if it % 50 == 0 or 1495 <= it <= 1505:
            lr = optim.param_groups[0]['lr']
            assert lr == pytest.approx(official(it), rel=1e-6), it
        optim.step()   # no gradient: changes nothing, and the schedulers step after it, as in training
        for s in schedulers:
            s.step()


# ---------------------------------------------------------------------------------------------- tiny run
def make_ade_like(root, rng):
    """ADE20K layout: images/{training,validation}/*.jpg and annotations/.../*.png, 0 = 'other' (ignored)."""
    for split, num in (('training', NUM_TRAIN), ('validation', NUM_VAL)):
        os.makedirs(osp.join(root, 'images', split))
        os.makedirs(osp.join(root, 'annotations', split))
        for i in range(num):
            h, w = IMAGE_HW
            label = np.zeros((h, w), np.uint8)
            img = rng.randint(0, 60, (h, w, 3)).astype(np.uint8)
            for value in (1, 2, 3):      # three classes -> train ids 0, 1, 2 after reduce_zero_label
                y, x = rng.randint(0, h - 20), rng.randint(0, w - 20)
                label[y:y + 20, x:x + 24] = value
                img[y:y + 20, x:x + 24] = (80 * value, 255 - 60 * value, 40 * value)
            cv2.imwrite(osp.join(root, 'images', split, f'ADE_{split}_{i:08d}.jpg'), img)
            cv2.imwrite(osp.join(root, 'annotations', split, f'ADE_{split}_{i:08d}.png'), label)


def tiny_cfg(fixture, cfg, data_root, pretrained):
    """The shipped config with the fixture's tiny arch, tiny crops and scales, and CPU-friendly loaders."""
    arch = fixture['arch']
    e = arch['embed_dim']
    c = e[3] // 4
    cfg.model.backbone.arch = arch
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=pretrained) if pretrained else None
    cfg.model.decode_head.update(in_channels=[e[0], e[1], e[2] + c, e[3] + c], channels=16)
    cfg.model.auxiliary_head.update(in_channels=e[2] + c, channels=16)
    cfg.model.data_preprocessor.size = TINY_CROP
    train = cfg.train_dataloader.dataset.pipeline
    find(train, 'RandomResize')['scale'] = TINY_SCALE
    find(train, 'RandomCrop')['crop_size'] = TINY_CROP
    find(cfg.test_dataloader.dataset.pipeline, 'Resize')['scale'] = TINY_SCALE
    cfg.tta_pipeline[1].transforms[0] = [dict(type='Resize', scale=(int(TINY_SCALE[0] * r), int(TINY_SCALE[1] * r)),
                                              keep_ratio=True) for r in cfg.img_ratios]
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[key].update(num_workers=0, persistent_workers=False)
        cfg[key].dataset.data_root = data_root
    cfg.val_dataloader.dataset.pipeline = cfg.test_dataloader.dataset.pipeline
    cfg.train_cfg.update(max_iters=2, val_interval=2)
    cfg.default_hooks.logger.interval = 1
    cfg.visualizer.name = f'seg_vis_{uuid.uuid4().hex}'   # a fresh visualizer, not another test's instance
    cfg.randomness = dict(seed=0)
    return cfg


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory, fixture):
    """Train the T config (tiny arch) for 2 iterations from the official tiny ImageNet checkpoint."""
    root = tmp_path_factory.mktemp('seg')
    data_root = str(root / 'ade')
    make_ade_like(data_root, np.random.RandomState(0))
    pretrained = str(root / 'overlock_tiny_in1k.pth')
    torch.save(fixture['cls_state_dict'], pretrained)       # official ImageNet layout, top-level keys
    cfg = tiny_cfg(fixture, Config.fromfile(SEG_CONFIGS['t']), data_root, pretrained)
    cfg_path = str(root / 'upernet_tiny.py')
    cfg.dump(cfg_path)
    work_dir = str(root / 'work')
    load_tool('train').main([cfg_path, '--work-dir', work_dir])
    return dict(root=root, cfg=cfg_path, work_dir=work_dir, data_root=data_root,
                ckpt=osp.join(work_dir, 'iter_2.pth'))


def test_train_two_iterations_from_imagenet_checkpoint(tiny_run, fixture):
    ckpt = torch.load(tiny_run['ckpt'], map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == 2
    state = ckpt['state_dict']
    # the backbone started from the official ImageNet weights (lr ~6e-11 in the first warm-up steps) ...
    ref = fixture['cls_state_dict']['patch_embed1.0.weight']
    assert torch.allclose(state['backbone.patch_embed1.0.weight'], ref, atol=1e-6)
    # ... and the ImageNet-only parts (heads) were dropped, the dense-layout norms added
    assert not any(k.startswith('backbone.head') or k.startswith('backbone.aux_head') for k in state)
    assert 'backbone.extra_norm.3.weight' in state and 'backbone.h_proj.0.weight' not in state
    # validation ran at iteration 2 and the best-mIoU checkpoint was kept
    assert glob.glob(osp.join(tiny_run['work_dir'], 'best_mIoU_iter_2.pth'))


def hand_miou(dumped, ann_dir, num_classes=150):
    """mIoU from the dumped predictions and the raw label PNGs (reduce_zero_label done here by hand)."""
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for sample in dumped:
        png = cv2.imread(osp.join(ann_dir, osp.basename(sample['seg_map_path'])), cv2.IMREAD_UNCHANGED)
        gt = png.astype(np.int64) - 1
        gt[png == 0] = 255
        pred = sample['pred_sem_seg']['data'].squeeze(0).numpy()
        assert pred.shape == png.shape          # predictions come back at the original size
        valid = gt != 255
        for c in range(num_classes):
            p, g = (pred == c) & valid, (gt == c) & valid
            inter[c] += (p & g).sum()
            union[c] += (p | g).sum()
    with np.errstate(invalid='ignore', divide='ignore'):
        return float(np.nanmean(inter / np.where(union > 0, union, np.nan))) * 100


def test_test_with_eval_miou(tiny_run, tmp_path):
    out = str(tmp_path / 'results.pkl')
    metrics = load_tool('test').main([tiny_run['cfg'], tiny_run['ckpt'], '--eval', 'mIoU', '--out', out,
                                      '--work-dir', str(tmp_path)])
    assert set(metrics) >= {'mIoU', 'aAcc', 'mAcc'}
    with open(out, 'rb') as f:
        dumped = pickle.load(f)
    assert len(dumped) == NUM_VAL
    ann_dir = osp.join(tiny_run['data_root'], 'annotations', 'validation')
    for sample in dumped:
        # reduce_zero_label: 0 -> 255 (ignored), k -> k - 1
        png = cv2.imread(osp.join(ann_dir, osp.basename(sample['seg_map_path'])), cv2.IMREAD_UNCHANGED)
        gt = sample['gt_sem_seg']['data'].squeeze(0).numpy()
        assert np.array_equal(gt == 255, png == 0)
        assert np.array_equal(gt[png > 0], png[png > 0].astype(np.int64) - 1)
    assert metrics['mIoU'] == pytest.approx(hand_miou(dumped, ann_dir), abs=0.01)


def _predictions(tiny_run, tmp_path, name, *args, cfg=None):
    """(metrics, [pred_sem_seg (H, W)] per val image) of one tools/test.py run."""
    out = str(tmp_path / f'{name}.pkl')
    metrics = load_tool('test').main([cfg or tiny_run['cfg'], tiny_run['ckpt'], '--eval', 'mIoU', '--out', out,
                                      '--work-dir', str(tmp_path / name), *args])
    with open(out, 'rb') as f:
        return metrics, [sample['pred_sem_seg']['data'].squeeze(0) for sample in pickle.load(f)]


def test_test_with_tta(tiny_run, tmp_path):
    """--tta runs the config's multi-scale + flip pipeline (other predictions than the plain test), and a TTA
    pipeline of the test scale alone without flip gives exactly the plain test's predictions and mIoU."""
    plain_metrics, plain = _predictions(tiny_run, tmp_path, 'plain')
    tta_metrics, tta = _predictions(tiny_run, tmp_path, 'tta', '--tta')
    assert len(tta) == len(plain) == NUM_VAL
    assert [p.shape for p in tta] == [p.shape for p in plain]
    assert any(not torch.equal(t, p) for t, p in zip(tta, plain))
    assert 0. <= tta_metrics['mIoU'] <= 100.

    cfg = Config.fromfile(tiny_run['cfg'])
    augment = cfg.tta_pipeline[1]['transforms']
    test_scale = tuple(find(cfg.test_dataloader.dataset.pipeline, 'Resize')['scale'])
    augment[0] = [t for t in augment[0] if tuple(t['scale']) == test_scale]   # img_ratio 1.0: the test scale
    assert len(augment[0]) == 1
    augment[2] = [t for t in augment[2] if t['prob'] == 0.]              # no flip
    single = str(tmp_path / 'single_view_tta.py')
    cfg.dump(single)
    single_metrics, single_view = _predictions(tiny_run, tmp_path, 'single', '--tta', cfg=single)
    assert all(torch.equal(t, p) for t, p in zip(single_view, plain))
    assert single_metrics['mIoU'] == pytest.approx(plain_metrics['mIoU'], abs=1e-6)


def test_eval_name_of_another_task_is_refused(tiny_run):
    with pytest.raises(SystemExit, match=r"--eval accuracy does not apply to a seg config; valid: \['mIoU'"):
        load_tool('test').main([tiny_run['cfg'], tiny_run['ckpt'], '--eval', 'accuracy'])


#: the modules of an mmseg-0.30 UperNet (UPerHead, 4 inputs, pool scales 1, 2, 3, 6) + FCNHead (1 conv), as
#: mmseg 0.30's uper_head.py / fcn_head.py / decode_head.py name them
MMSEG030_HEAD_MODULES = (
    [f'decode_head.psp_modules.{i}.1.{m}' for i in range(4) for m in ('conv', 'bn')]
    + [f'decode_head.bottleneck.{m}' for m in ('conv', 'bn')]
    + [f'decode_head.{lst}.{i}.{m}' for lst in ('lateral_convs', 'fpn_convs') for i in range(3) for m in ('conv', 'bn')]
    + [f'decode_head.fpn_bottleneck.{m}' for m in ('conv', 'bn')]
    + ['decode_head.conv_seg', 'auxiliary_head.convs.0.conv', 'auxiliary_head.convs.0.bn', 'auxiliary_head.conv_seg'])


def test_official_upernet_checkpoint_converts_and_loads(tiny_run, fixture, tmp_path):
    """A release checkpoint (mmseg 0.30: seg-layout backbone, UPerHead, FCNHead, meta with CLASSES/PALETTE,
    optimizer state) -> tools/convert_official.py --task seg -> strict load into the mmseg 1 model, official
    backbone features, and tools/test.py --eval mIoU on it."""
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    cfg = Config.fromfile(tiny_run['cfg'])
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model).eval()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert all(f'{m}.weight' in shapes for m in MMSEG030_HEAD_MODULES)     # the names did not change in mmseg 1
    gen = torch.Generator().manual_seed(0)
    state = {f'backbone.{k}': v for k, v in fixture['seg_state_dict'].items()}
    for module in MMSEG030_HEAD_MODULES:
        for suffix in ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'):
            key = f'{module}.{suffix}'
            if suffix == 'num_batches_tracked' and f'{module}.running_mean' in shapes:
                state[key] = torch.tensor(160000)
            elif key in shapes:
                state[key] = torch.rand(shapes[key], generator=gen) + (0.5 if 'running_var' in key else 0.)
    official = dict(
        meta=dict(mmseg_version='0.30.0+', mmcv_version='1.7.2', iter=160000, epoch=1, config='# mmseg-0 config',
                  CLASSES=tuple(f'class{i}' for i in range(150)), PALETTE=[[i, i, i] for i in range(150)]),
        state_dict=state,
        optimizer=dict(state={}, param_groups=[dict(lr=0., weight_decay=0.01, params=[0, 1])]))
    src, dst = str(tmp_path / 'upernet_overlock_tiny_ade20k.pth'), str(tmp_path / 'converted.pth')
    torch.save(official, src)
    load_tool('convert_official').main([src, dst, '--task', 'seg', '--config', tiny_run['cfg']])

    converted = torch.load(dst, weights_only=True)
    model.load_state_dict(converted['state_dict'], strict=True)          # every key, every shape
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key
    with torch.no_grad():
        for x, refs in zip(fixture['inputs'], fixture['seg_features']):
            for ours, ref in zip(model.backbone(x), refs):
                assert ((ours - ref).abs().max() / ref.abs().max()).item() <= 1e-4
    metrics = load_tool('test').main([tiny_run['cfg'], dst, '--eval', 'mIoU', '--work-dir', str(tmp_path)])
    assert 0. <= metrics['mIoU'] <= 100.
