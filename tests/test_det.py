"""Detection suite: shipped configs, tools/train.py + tools/test.py + tools/dist_train.sh on a tiny COCO set,
official (mmdet 2.28 layout) checkpoints, weights-only loading of our checkpoints, mask TTA.

Every run uses a tiny OverLoCK (the fixture's arch) and narrow heads on 96x128 images at 1/6 of the recipe's
scales, so the whole file stays within a few CPU minutes.
"""
import glob
import os
import os.path as osp
import pickle
import re
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
from mmdet.structures.bbox import HorizontalBoxes
from mmengine.config import Config

import mmoverlock  # noqa: F401  (allow-lists mmengine's checkpoint types)

from . import conftest
from .helpers import CLASSES, free_port

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'det', '*.py')))
URL = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_{}_in1k_224.pth'
# the release's COCO recipe (detection/configs/maskrcnn_overlock)
DROP_PATH = {'t': 0.2, 's': 0.4, 'b': 0.6}
FPN_IN = {'t': [64, 128, 384, 640], 's': [64, 128, 448, 640], 'b': [80, 160, 528, 720]}
SCHEDULE = {'1x': dict(lr=2e-4, epochs=12, milestones=[8, 11]), '3x': dict(lr=1e-4, epochs=36, milestones=[27, 33])}

TINY = dict(depth=[1, 1, 1, 1], sub_depth=[2, 2], embed_dim=[16, 32, 64, 96], kernel_size=[9, 7, 7, 7],
            mlp_ratio=[2, 2, 2, 2], sub_num_heads=[2, 2], sub_mlp_ratio=[2, 2])
TINY_FPN_IN = [16, 32, 88, 120]
SHRINK = 6          # image scales of the recipe / SHRINK
METRIC_KEYS = [f'coco/{t}_mAP{s}' for t in ('bbox', 'segm') for s in ('', '_50', '_75', '_s', '_m', '_l')]
# one process, one thread: 2 CI cores shared by parallel runs make OpenMP threads spin for ages
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore')


# ------------------------------------------------------------------------------------------- helpers
def _walk(node, fn):
    if isinstance(node, dict):
        fn(node)
        for value in node.values():
            _walk(value, fn)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _walk(value, fn)


def _narrow_heads(d):
    for key in ('in_channels', 'out_channels', 'feat_channels', 'conv_out_channels'):
        if d.get(key) == 256:
            d[key] = 32
    if d.get('fc_out_channels') == 1024:
        d['fc_out_channels'] = 64
    if d.get('num_classes') == 80:
        d['num_classes'] = len(CLASSES)
    if d.get('type') == 'RandomSampler':
        d['num'] = 64
    for key in ('max_per_img', 'nms_pre'):
        if d.get(key) in (1000, 2000):
            d[key] = 100


def _shrink_scales(d):
    for key in ('scale', 'crop_size'):
        if key in d:
            d[key] = tuple(s // SHRINK for s in d[key])
    if 'scales' in d:
        d['scales'] = [tuple(s // SHRINK for s in scale) for scale in d['scales']]


def derive_tiny(config: str, data_root: str, dst: str, overlock: bool = True, neck: list = TINY_FPN_IN,
                val_interval: int = None) -> str:
    """A det config with a tiny OverLoCK (``neck``: the neck's in_channels) -- or, without ``overlock``, its own
    backbone without its download --, narrow heads, 1/6 scales and the tiny COCO set; one epoch (2 iterations),
    validated after it unless ``val_interval`` says otherwise."""
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    if overlock:
        cfg.model.backbone.arch = TINY
        cfg.model.neck.in_channels = neck
    _walk(cfg.model, _narrow_heads)
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        split = 'train' if name == 'train_dataloader' else 'val'
        cfg[name].update(batch_size=1, num_workers=0, persistent_workers=False)
        cfg[name].dataset.update(data_root=data_root, ann_file=f'annotations/instances_{split}.json',
                                 data_prefix=dict(img=f'{split}/'), metainfo=dict(classes=CLASSES))
        _walk(cfg[name].dataset.pipeline, _shrink_scales)
    if 'tta_pipeline' in cfg:
        _walk(cfg.tta_pipeline, _shrink_scales)
    for name in ('val_evaluator', 'test_evaluator'):
        cfg[name].ann_file = osp.join(data_root, 'annotations', 'instances_val.json')
    cfg.train_cfg.max_epochs = 1              # 2 images, batch 1: 2 iterations, then validation
    if val_interval is not None:
        cfg.train_cfg.val_interval = val_interval
    cfg.default_hooks.logger.interval = 1
    cfg.dump(dst)
    return dst


def run(args, timeout=600):
    proc = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    return out


def tool(name, *args):
    return run([sys.executable, osp.join(ROOT, 'tools', name), *map(str, args)])


def load_tool(name: str):
    """tools/NAME (with .py) as a module (for its main(argv) in-process)."""
    return conftest.load_tool(name[:-3])


def coco_metrics(log: str) -> dict:
    """The metrics of the last ``Epoch(test)`` / ``Epoch(val)`` summary line of a log."""
    line = [ln for ln in log.splitlines() if 'coco/bbox_mAP:' in ln][-1]
    return {k: float(v) for k, v in re.findall(r'(coco/\w+): (-?[\d.]+)', line)}


def assert_real_coco_metrics(log: str) -> dict:
    metrics = coco_metrics(log)
    assert sorted(metrics) == sorted(METRIC_KEYS)
    assert all(0. <= v <= 1. for k, v in metrics.items() if not k.endswith('_l'))
    # no object of the set is large (> 96^2 px): COCOeval reports -1 there, as on a real evaluation
    assert metrics['coco/bbox_mAP_l'] == metrics['coco/segm_mAP_l'] == -1.
    # pycocotools printed both summaries (12 lines each)
    assert log.count('Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all') == 2
    return metrics


@pytest.fixture(scope='module')
def mask_rcnn_run(coco, tmp_path_factory):
    """tools/train.py on the tiny Mask R-CNN: config, work dir, log."""
    tmp = tmp_path_factory.mktemp('mask_rcnn')
    cfg = derive_tiny(osp.join(ROOT, 'configs/det/mask_rcnn_overlock_t_1x_coco.py'), coco, str(tmp / 'tiny.py'))
    work_dir = tmp / 'work'
    log = tool('train.py', cfg, '--work-dir', work_dir)
    return cfg, work_dir, log


# ------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize('config', DET_CONFIGS, ids=osp.basename)
def test_shipped_config_builds_with_the_official_recipe(config):
    from mmdet.registry import DATASETS, MODELS
    from mmdet.utils import register_all_modules
    from mmengine.dataset import Compose
    register_all_modules()
    name = osp.basename(config)
    detector, variant, schedule = re.match(r'(mask_rcnn|cascade)_overlock_(\w)_(\dx)_coco', name).groups()
    cfg = Config.fromfile(config)
    assert cfg.custom_imports.imports[0] == 'mmoverlock'
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.arch, backbone.layout) == ('mmoverlock.OverLoCK', variant, 'detection')
    assert backbone.drop_path_rate == DROP_PATH[variant]
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=URL.format(variant))
    optim = cfg.optim_wrapper
    assert (optim.optimizer.type, optim.optimizer.lr, optim.optimizer.weight_decay) == \
        ('AdamW', SCHEDULE[schedule]['lr'], 0.05)
    assert optim.paramwise_cfg == dict(custom_keys={'norm': dict(decay_mult=0.)})
    assert cfg.train_cfg.max_epochs == SCHEDULE[schedule]['epochs']
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end, warmup.by_epoch) == ('LinearLR', 0.001, 500, False)
    assert steps.milestones == SCHEDULE[schedule]['milestones']
    assert cfg.auto_scale_lr.base_batch_size == 16 == 8 * cfg.train_dataloader.batch_size
    checkpoint = cfg.default_hooks.checkpoint
    assert (checkpoint.interval, checkpoint.max_keep_ckpts, checkpoint.save_best) == (1, 1, 'auto')
    crop_branch = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomChoice']
    assert len(crop_branch) == (1 if schedule == '3x' else 0)
    if detector == 'cascade':
        heads = cfg.model.roi_head.bbox_head
        assert [(h.num_shared_convs, h.num_shared_fcs, h.norm_cfg.type, h.loss_bbox.type, h.loss_bbox.loss_weight,
                 h.reg_decoded_bbox) for h in heads] == [(4, 1, 'SyncBN', 'GIoULoss', 10.0, True)] * 3

    backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    assert model.backbone.out_channels == cfg.model.neck.in_channels == FPN_IN[variant]
    assert type(model).__name__ == ('CascadeRCNN' if detector == 'cascade' else 'MaskRCNN')
    for pipeline in (cfg.train_dataloader.dataset.pipeline, cfg.test_dataloader.dataset.pipeline):
        Compose(pipeline)
    assert DATASETS.get(cfg.train_dataloader.dataset.type) is not None
    # the DETR-style branch, run for real on a tiny image: crops and resizes into the recipe's range
    if schedule == '3x':
        results = Compose(cfg.train_pipeline[2:-1])(dict(
            img=np.zeros((480, 640, 3), np.uint8), img_shape=(480, 640), ori_shape=(480, 640),
            gt_bboxes=HorizontalBoxes(torch.tensor([[10., 10., 200., 200.]])),
            gt_bboxes_labels=np.array([0]), gt_ignore_flags=np.array([False])))
        assert 480 <= min(results['img'].shape[:2]) <= 800 and max(results['img'].shape[:2]) <= 1333


# ------------------------------------------------------------------------------------------- train / test
def test_mask_rcnn_train_then_test_prints_coco_metrics(mask_rcnn_run, tmp_path):
    cfg, work_dir, log = mask_rcnn_run
    assert 'Epoch(train) [1][2/2]' in log
    assert sorted(osp.basename(p) for p in glob.glob(str(work_dir / '*.pth'))) == \
        ['best_coco_bbox_mAP_epoch_1.pth', 'epoch_1.pth']
    out = tmp_path / 'results.pkl'
    log = tool('test.py', cfg, work_dir / 'epoch_1.pth', '--eval', 'bbox', 'segm', '--out', out,
               '--show-dir', tmp_path / 'vis', '--work-dir', tmp_path / 'test')
    assert_real_coco_metrics(log)
    with open(out, 'rb') as f:
        results = pickle.load(f)
    assert len(results) == 2
    assert {'bboxes', 'scores', 'labels', 'masks'} <= set(results[0]['pred_instances'])
    assert len(glob.glob(str(tmp_path / 'vis' / '*.jpg'))) == 2


def test_cascade_train_then_test_with_tta(coco, tmp_path):
    cfg = derive_tiny(osp.join(ROOT, 'configs/det/cascade_overlock_s_3x_coco.py'), coco, str(tmp_path / 'tiny.py'))
    log = tool('train.py', cfg, '--work-dir', tmp_path / 'work')
    assert 'Epoch(train) [1][2/2]' in log
    assert 'SyncBN' not in open(glob.glob(str(tmp_path / 'work' / '*' / 'vis_data' / 'config.py'))[0]).read()
    log = tool('test.py', cfg, tmp_path / 'work' / 'epoch_1.pth', '--eval', 'bbox', 'segm', '--tta',
               '--work-dir', tmp_path / 'test')
    assert 'DetTTAModelWithMasks' in log
    assert_real_coco_metrics(log)


def test_dist_train_two_cpu_processes(coco, tmp_path):
    cfg = derive_tiny(osp.join(ROOT, 'configs/det/cascade_overlock_t_3x_coco.py'), coco, str(tmp_path / 'tiny.py'))
    env_port = dict(PORT=str(free_port()), PYTHON=sys.executable)
    ENV.update(env_port)
    try:
        log = run(['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), cfg, '2', '--work-dir', str(tmp_path / 'w')])
    finally:
        for key in env_port:
            ENV.pop(key)
    log_file = open(glob.glob(str(tmp_path / 'w' / '*' / '*.log'))[0]).read()
    assert 'Distributed training: True' in log_file and 'GPU number: 2' in log_file
    assert 'Epoch(train) [1][1/1]' in log   # 2 images over 2 processes: one iteration each
    assert osp.isfile(tmp_path / 'w' / 'epoch_1.pth')


def test_resume_and_errors(mask_rcnn_run, tmp_path):
    cfg, work_dir, _ = mask_rcnn_run
    log = tool('train.py', cfg, '--work-dir', tmp_path, '--resume', work_dir / 'epoch_1.pth',
               '--cfg-options', 'train_cfg.max_epochs=2')
    assert 'resumed epoch: 1, iter: 2' in log and 'Epoch(train) [2][2/2]' in log
    for script, args, message in (
            ('test.py', [cfg, tmp_path / 'missing.pth'], f"checkpoint '{tmp_path / 'missing.pth'}' does not exist"),
            ('train.py', [cfg, '--resume', tmp_path / 'nope.pth'], f"--resume '{tmp_path / 'nope.pth'}' does not"),
            ('test.py', [cfg, work_dir / 'epoch_1.pth', '--eval', 'mIoU'], '--eval mIoU does not apply to a det')):
        with pytest.raises(SystemExit, match=re.escape(message)):   # one line on stderr, no traceback
            load_tool(script).main([str(a) for a in args])


# ------------------------------------------------------------------------------------------- checkpoints
def test_own_checkpoints_load_weights_only(mask_rcnn_run):
    from mmengine.logging.history_buffer import HistoryBuffer
    _, work_dir, _ = mask_rcnn_run
    for path in glob.glob(str(work_dir / '*.pth')):
        ckpt = torch.load(path, weights_only=True)
        assert {'meta', 'state_dict', 'message_hub'} <= set(ckpt)   # best_*.pth: no optimizer
        buffers = ckpt['message_hub']['log_scalars']
        assert isinstance(buffers['train/loss'], HistoryBuffer) and buffers['train/loss'].mean() > 0


class _GetattrGadget:
    def __init__(self, obj, name):
        self.obj, self.name = obj, name

    def __reduce__(self):
        return getattr, (self.obj, self.name)


@pytest.mark.parametrize('obj,name', [('HistoryBuffer', '__init__'), ('ndarray', 'tofile')])
def test_weights_only_refuses_getattr_beyond_history_buffer(tmp_path, obj, name):
    from mmengine.logging.history_buffer import HistoryBuffer
    target = {'HistoryBuffer': HistoryBuffer, 'ndarray': np.ndarray}[obj]
    torch.save({'x': _GetattrGadget(target, name)}, tmp_path / 'evil.pth')
    with pytest.raises(pickle.UnpicklingError, match='only HistoryBuffer'):
        torch.load(tmp_path / 'evil.pth', weights_only=True)


def official_mask_rcnn_checkpoint(own: str, dst: str, fixture) -> None:
    """A checkpoint as the release saved it: mmdet 2.28 Mask R-CNN names, the official detection-layout
    backbone (the golden fixture's), mmcv-1 meta (CLASSES, hook_msgs with a numpy score) and optimizer."""
    state = OrderedDict((k, v) for k, v in torch.load(own, weights_only=True)['state_dict'].items()
                        if not k.startswith('backbone.'))
    state.update(('backbone.' + k, v) for k, v in fixture['det_state_dict'].items())
    meta = dict(mmdet_version='2.28.2', mmcv_version='1.7.2', CLASSES=CLASSES, epoch=12, iter=87960, seed=0,
                config="model = dict(type='MaskRCNN')", env_info='sys.platform: linux', exp_name='x.py',
                hook_msgs=dict(last_ckpt='work_dirs/x/epoch_12.pth', best_score=np.float64(0.483)))
    torch.save(dict(meta=meta, state_dict=state,
                    optimizer=dict(state={}, param_groups=[dict(lr=2e-6, weight_decay=0.05, params=[0])])), dst)


def test_official_mask_rcnn_checkpoint_evaluates_directly_and_converted(mask_rcnn_run, fixture, tmp_path):
    cfg, work_dir, _ = mask_rcnn_run
    official, converted = tmp_path / 'maskrcnn1x_official.pth', tmp_path / 'converted.pth'
    official_mask_rcnn_checkpoint(str(work_dir / 'epoch_1.pth'), str(official), fixture)
    log = tool('convert_official.py', official, converted, '--task', 'det', '--config', cfg)
    assert 'fit the model of' in log
    assert torch.load(converted, weights_only=True)['meta']['dataset_meta'] == dict(classes=list(CLASSES))

    results = {}
    for name, ckpt in (('direct', official), ('converted', converted)):
        log = tool('test.py', cfg, ckpt, '--eval', 'bbox', 'segm', '--out', tmp_path / f'{name}.pkl',
                   '--work-dir', tmp_path / name)
        assert 'do not match exactly' not in log     # every weight found its place
        results[name] = (assert_real_coco_metrics(log), pickle.load(open(tmp_path / f'{name}.pkl', 'rb')))
    assert results['direct'][0] == results['converted'][0]
    for a, b in zip(results['direct'][1], results['converted'][1]):
        torch.testing.assert_close(a['pred_instances']['bboxes'], b['pred_instances']['bboxes'])
        assert a['pred_instances']['masks'] == b['pred_instances']['masks']   # RLE
    # the official backbone weights are what was converted (and, no mismatch logged, what was loaded)
    state = torch.load(converted, weights_only=True)['state_dict']
    for key, value in fixture['det_state_dict'].items():
        assert torch.equal(state['backbone.' + key], value), key


# ------------------------------------------------------------------------------------------- TTA
def test_mask_tta_unflips_masks_and_boxes():
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    from mmoverlock.models.mmdet import DetTTAModelWithMasks
    masks = torch.zeros(1, 8, 10, dtype=torch.bool)
    masks[0, 2:5, 1:4] = True                                  # box x 1..4, y 2..5
    box = torch.tensor([[1., 2., 4., 5.]])
    predictions = {   # per view (flipped?): what a detector predicts there (the flipped view scores higher)
        False: InstanceData(bboxes=box.clone(), scores=torch.tensor([0.6]), labels=torch.tensor([1]),
                            masks=masks.clone()),
        True: InstanceData(bboxes=torch.tensor([[10. - 4., 2., 10. - 1., 5.]]), scores=torch.tensor([0.9]),
                           labels=torch.tensor([1]), masks=masks.flip(-1))}

    class Detector(torch.nn.Module):
        def test_step(self, data):
            for sample in data['data_samples']:
                assert sample.flip is False                    # hidden from the detector (Cascade's mask merge)
                sample.pred_instances = predictions[sample.tta_flip]
            return data['data_samples']

    tta = DetTTAModelWithMasks(module=Detector(),
                               tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
    views = [[DetDataSample(metainfo=dict(ori_shape=(8, 10), flip=flip, flip_direction='horizontal'))]
             for flip in (False, True)]
    merged = tta.test_step(dict(inputs=[[None], [None]], data_samples=views))[0].pred_instances
    assert len(merged) == 1 and merged.scores.item() == pytest.approx(0.9)   # NMS kept the flipped view's
    torch.testing.assert_close(merged.bboxes, box)
    assert torch.equal(merged.masks, masks)
