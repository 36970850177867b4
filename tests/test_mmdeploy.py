"""mmdeploy 1.3.1 -> ONNX Runtime with the deploy configs of ``configs/deploy/``: the configs, the compatibility
module (:mod:`mmoverlock.deploy.mmdeploy_compat`), and mmdeploy's ``torch2onnx`` on tiny Cascade Mask R-CNN,
Mask R-CNN and UperNet models, their graphs run by plain onnxruntime against PyTorch at several input sizes.

The models are the demo configs with the tests' tiny OverLoCK and seeded initial weights (BatchNorm statistics
perturbed so that the re-parameterisation matters). The detectors' box heads get larger classifier and
regressor weights (:func:`separate_scores`): at mmdet's initialisation every class score of every RoI is
0.20 +- 0.006, so float rounding (~1e-7, PyTorch against ONNX Runtime) reorders near-equal scores and changes
which ones survive NMS and the top-k. Each detection test checks that its PyTorch run is far from such ties
(:func:`assert_far_from_ties`) before it compares.
"""
import contextlib
import glob
import os.path as osp
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from mmengine.config import Config

from .conftest import ROOT

DEPLOY = osp.join(ROOT, 'configs', 'deploy')
DEPLOY_CONFIGS = sorted(glob.glob(osp.join(DEPLOY, '*.py')))
TINY = dict(depth=[1, 1, 1, 1], sub_depth=[2, 2], embed_dim=[16, 32, 64, 96], kernel_size=[9, 7, 7, 7],
            mlp_ratio=[2, 2, 2, 2], sub_num_heads=[2, 2], sub_mlp_ratio=[2, 2])
TINY_STAGES = [16, 32, 64 + 24, 96 + 24]     # classification layout: stages 3 and 4 carry the context (dim / 4)
CASCADE_DEMO = osp.join(ROOT, 'configs', 'demo', 'cascade_overlock_demo_shapes.py')
UPERNET_DEMO = osp.join(ROOT, 'configs', 'demo', 'upernet_overlock_demo_shapes.py')


# ------------------------------------------------------------------------------------------------ helpers
def _perturb_bn(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)


def tiny_det_config(dst: str, cascade: bool = True) -> str:
    """The demo Cascade Mask R-CNN (or, without ``cascade``, a Mask R-CNN of the same parts) with the tiny arch,
    no resize in the test pipeline (the input is the image), and the RPN's NMS off: an untrained RPN scores
    every anchor close to 0.5, near-ties that float rounding reorders (the RPN's rewrite is compared with
    mmdet's on its own, :func:`test_rpn_proposals_are_mmdets`); without suppression both keep the same
    top-scoring ones. The R-CNN's NMS (per class in both) stays on; all its detections are kept (up to 100)."""
    cfg = Config.fromfile(CASCADE_DEMO)
    cfg.model.backbone.arch = TINY
    cfg.model.neck.in_channels = TINY_STAGES
    cfg.model.test_cfg.rpn.update(nms_pre=200, max_per_img=40, nms=dict(type='nms', iou_threshold=1.0))
    # every detection kept (mmdet's default; the demo's 20 would cut through the untrained model's scores)
    cfg.model.test_cfg.rcnn.max_per_img = 100
    if not cascade:
        roi_head = cfg.model.roi_head
        cfg.model.roi_head = dict(type='StandardRoIHead', bbox_roi_extractor=roi_head.bbox_roi_extractor,
                                  bbox_head=roi_head.bbox_head[0], mask_roi_extractor=roi_head.mask_roi_extractor,
                                  mask_head=roi_head.mask_head)
        cfg.model.train_cfg.rcnn = cfg.model.train_cfg.rcnn[0]
    cfg.test_pipeline = [dict(type='LoadImageFromFile'),
                         dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                                               'scale_factor'))]
    cfg.dump(dst)
    return dst


def tiny_seg_config(dst: str) -> str:
    """The demo UperNet with the tiny arch and narrow heads; the test pipeline keeps the image size."""
    cfg = Config.fromfile(UPERNET_DEMO)
    cfg.model.backbone.arch = TINY
    cfg.model.decode_head.update(in_channels=TINY_STAGES, channels=16)
    cfg.model.auxiliary_head.update(in_channels=TINY_STAGES[2], channels=8)
    cfg.test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackSegInputs')]
    cfg.dump(dst)
    return dst


def bbox_heads(model) -> list:
    """A detector's box heads: one per cascade stage, or the one of a standard RoI head."""
    heads = model.roi_head.bbox_head
    return list(heads) if isinstance(heads, torch.nn.ModuleList) else [heads]


def separate_scores(model, gain: float = 100.) -> None:
    """Scale the box heads' classifier and regressor weights by ``gain``: mmdet initialises them with std 0.01
    and 0.001, where every class score of every RoI is 0.20 +- 0.006 (4 classes + background) and each
    class's box deltas are ~0; scaled, the logits of a RoI's classes lie ~1 apart and its classes' boxes
    differ by ~1-3 px (so a cascade stage that regressed by the wrong class would move boxes far beyond the
    tests' tolerance)."""
    with torch.no_grad():
        for head in bbox_heads(model):
            head.fc_cls.weight.mul_(gain)
            head.fc_reg.weight.mul_(gain)


def build_and_save(model_cfg: str, dst: str, seed: int = 0):
    """The config's model with its initial weights drawn after ``torch.manual_seed(seed)`` (BN statistics
    perturbed; a detector's box heads as :func:`separate_scores` makes them), eval mode, saved to ``dst``."""
    from mmengine.registry import init_default_scope
    from mmengine.runner import save_checkpoint

    import mmoverlock  # noqa: F401
    cfg = Config.fromfile(model_cfg)
    init_default_scope(cfg.default_scope)
    registry = {'mmdet': 'mmdet', 'mmseg': 'mmseg'}[cfg.default_scope]
    models = __import__(f'{registry}.registry', fromlist=['MODELS']).MODELS
    torch.manual_seed(seed)
    model = models.build(cfg.model)
    model.init_weights()
    _perturb_bn(model)
    if hasattr(model, 'roi_head'):
        separate_scores(model)
    model.eval()
    save_checkpoint(model.state_dict(), dst)
    return model


def export(deploy_cfg, model_cfg: str, checkpoint: str, work_dir: str, image_hw) -> str:
    """mmdeploy's ``torch2onnx`` at one image size; returns the ONNX file, checked to hold standard ops only."""
    from mmdeploy.apis import torch2onnx
    img = np.random.default_rng(0).integers(0, 256, (*image_hw, 3), dtype=np.uint8)
    torch2onnx(img, work_dir, 'end2end.onnx', deploy_cfg, model_cfg, checkpoint, 'cpu')
    path = osp.join(work_dir, 'end2end.onnx')
    graph = onnx.load(path)
    assert {op.domain for op in graph.opset_import} <= {'', 'ai.onnx'}, graph.opset_import
    assert {node.domain for node in graph.graph.node} <= {''}
    assert max(op.version for op in graph.opset_import if op.domain in ('', 'ai.onnx')) == 17
    return path


def session(path: str):
    """Plain onnxruntime (no mmdeploy custom-op library), one thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def det_samples(batch: int, hw):
    from mmdet.structures import DetDataSample
    meta = dict(img_shape=tuple(hw), ori_shape=tuple(hw), pad_shape=tuple(hw), batch_input_shape=tuple(hw),
                scale_factor=(1., 1.))
    return [DetDataSample(metainfo=meta) for _ in range(batch)]


def torch_detections(model, inputs: torch.Tensor):
    """mmdet's own prediction (no rescale) and the mask probabilities of each detection's class that mmdet's
    last mask head thresholds: [(bboxes (K, 4), scores (K,), labels (K,), masks (K, 28, 28))] per image."""
    head = model.roi_head.mask_head[-1] if isinstance(model.roi_head.mask_head, torch.nn.ModuleList) \
        else model.roi_head.mask_head
    seen = []
    original = head.predict_by_feat

    def spy(mask_preds, results_list, *args, activate_map=False, **kwargs):
        for probs, res in zip(mask_preds, results_list):
            probs = probs if activate_map else probs.sigmoid()
            seen.append(probs[torch.arange(len(res)), res.labels])
        return original(mask_preds, results_list, *args, activate_map=activate_map, **kwargs)

    head.predict_by_feat = spy
    try:
        with torch.no_grad():
            results = model.predict(inputs, det_samples(len(inputs), inputs.shape[-2:]), rescale=False)
    finally:
        del head.predict_by_feat
    return [(r.pred_instances.bboxes, r.pred_instances.scores, r.pred_instances.labels, m)
            for r, m in zip(results, seen)]


@contextlib.contextmanager
def recording_logits(model):
    """Collects the class logits (B * N, classes + 1) of each box head's forward (each cascade stage in turn)."""
    logits = []
    handles = [head.fc_cls.register_forward_hook(lambda module, args, out: logits.append(out.detach()))
               for head in bbox_heads(model)]
    try:
        yield logits
    finally:
        for handle in handles:
            handle.remove()


def assert_far_from_ties(model, logits, batch: int, expected, margin: float = 1e-5):
    """The PyTorch run's decisions lie far (> ``margin``, 100x the float differences between PyTorch and ONNX
    Runtime) from ties, so that both must take the same ones: each cascade stage's top two foreground logits
    of every RoI (the class whose deltas refine it), every class's final scores against each other (NMS
    order) and against ``score_thr``, and no detection cut by ``max_per_img``.

    logits: what :func:`recording_logits` collected in one prediction of ``batch`` images; expected: what
    :func:`torch_detections` returned for it."""
    rcnn = model.roi_head.test_cfg
    for stage_logits in logits[:-1]:
        top2 = stage_logits[:, :-1].topk(2, dim=1).values
        assert (top2[:, 0] - top2[:, 1]).min() > margin
    scores = (sum(logits) / len(logits)).softmax(-1)[:, :-1]
    for image_scores, (bboxes, *_) in zip(scores.reshape(batch, -1, scores.shape[-1]), expected):
        assert len(bboxes) < rcnn.max_per_img
        for class_scores in image_scores.T:
            kept = class_scores[class_scores > rcnn.score_thr].sort().values
            assert (kept.diff() > margin).all() and (class_scores - rcnn.score_thr).abs().min() > margin


def assert_same_detections(ort_out, expected, box_atol=0.05):
    """ONNX Runtime's dets (K, 5), labels (K,) [, masks (K, 28, 28)] of one image against PyTorch's: the same
    number of detections, matched one to one (optimal assignment on box and score distance, labels equal; ties
    in score may order them differently), boxes within ``box_atol`` px (float32 rounding grows through the
    RoI heads' regressions), scores and mask probabilities within 1e-4. The graph's rows of score 0 (its
    padding, and in a batch the other images' detections) are dropped first, as mmdeploy's backend model
    (``End2EndModel.__clear_outputs``) drops them."""
    from scipy.optimize import linear_sum_assignment
    keep = torch.from_numpy(np.asarray(ort_out[0]))[:, 4] > 0
    dets, labels, *masks = (torch.from_numpy(np.asarray(o))[keep] for o in ort_out)
    bboxes, scores, exp_labels, exp_masks = expected
    assert len(dets) == len(bboxes) > 0, (len(dets), len(bboxes))
    cost = ((dets[:, None, :4] - bboxes[None]).abs().amax(-1) + 100 * (dets[:, None, 4] - scores[None]).abs()
            + 1e6 * (labels[:, None] != exp_labels[None]))
    rows, match = linear_sum_assignment(cost.double().numpy())
    match = torch.as_tensor(match)
    assert torch.equal(labels.long(), exp_labels[match].long())
    torch.testing.assert_close(dets[:, :4], bboxes[match], atol=box_atol, rtol=0)
    torch.testing.assert_close(dets[:, 4], scores[match], atol=1e-4, rtol=0)
    if masks:
        torch.testing.assert_close(masks[0], exp_masks[match], atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------ configs
def test_import_mmoverlock_imports_neither_mmdeploy_nor_the_compat_module():
    code = 'import sys, mmoverlock; print(sorted(m for m in sys.modules if "mmdeploy" in m))'
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == '[]'


@pytest.mark.parametrize('path', DEPLOY_CONFIGS, ids=osp.basename)
def test_deploy_config_names_the_compat_module_and_opset_17(path):
    from mmdeploy.utils import get_backend, get_codebase, get_dynamic_axes, get_ir_config, get_task_type
    cfg = Config.fromfile(path)
    assert 'mmoverlock.deploy.mmdeploy_compat' in cfg.custom_imports.imports
    assert get_ir_config(cfg)['opset_version'] == 17
    assert get_backend(cfg).value == 'onnxruntime'
    name = osp.basename(path)
    assert get_task_type(cfg).value == {'instance-seg': 'ObjectDetection', 'detection': 'ObjectDetection',
                                        'segmentation': 'Segmentation'}[name.split('_')[0]]
    assert get_codebase(cfg).value == ('mmseg' if name.startswith('segmentation') else 'mmdet')
    axes = get_dynamic_axes(cfg)
    if 'dynamic' in name:
        assert axes['input'] == {0: 'batch', 2: 'height', 3: 'width'}
    else:
        assert not axes
    assert ('masks' in get_ir_config(cfg)['output_names']) == name.startswith('instance-seg')


# ------------------------------------------------------------------------------------------------ compat module
@pytest.mark.parametrize('agnostic', [False, True])
def test_regress_by_class_is_mmdets(agnostic):
    """The batched rewrite regresses each RoI as mmdet's ``BBoxHead.regress_by_class`` does, per image."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from mmoverlock.deploy.mmdeploy_compat import regress_by_class
    register_all_modules()
    cfg = Config.fromfile(CASCADE_DEMO).model.roi_head.bbox_head[1]
    cfg.reg_class_agnostic = agnostic
    head = MODELS.build(cfg)
    classes, batch, num = head.num_classes, 2, 7
    xy = torch.rand(batch, num, 2) * 80
    boxes = torch.cat([xy, xy + 5 + torch.rand(batch, num, 2) * 40], -1)
    cls_score = torch.randn(batch, num, classes + 1)
    bbox_pred = torch.randn(batch, num, 4 if agnostic else 4 * classes) * 0.5
    got = regress_by_class(head, boxes, cls_score, bbox_pred, (96, 128))
    for i in range(batch):
        expected = head.regress_by_class(boxes[i], cls_score[i][:, :-1].argmax(1), bbox_pred[i],
                                         dict(img_shape=(96, 128)))
        torch.testing.assert_close(got[i], getattr(expected, 'tensor', expected))


@pytest.mark.parametrize('agnostic', [False, True])
def test_rcnn_detections_are_mmdets(agnostic):
    """The R-CNN box head's detections under the rewrite (run in PyTorch, batch of two) are mmdet's: each class's
    own box through the score threshold, per-class NMS and top-k (mmdeploy 1.3.1 alone gives every class of a
    RoI the box of its top class)."""
    from mmdeploy.codebase import import_codebase
    from mmdeploy.core import RewriterContext
    from mmdeploy.utils import IR, Codebase
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import mmoverlock.deploy.mmdeploy_compat  # noqa: F401
    register_all_modules()
    import_codebase(Codebase.MMDET)
    cfg = Config.fromfile(CASCADE_DEMO)
    head_cfg = cfg.model.roi_head.bbox_head[2]
    head_cfg.reg_class_agnostic = agnostic
    head = MODELS.build(head_cfg)
    rcnn = cfg.model.test_cfg.rcnn
    generator = torch.Generator().manual_seed(0)
    batch, num, classes, hw = 2, 30, head.num_classes, (96, 128)
    xy = torch.rand(batch, num, 2, generator=generator) * 60
    boxes = torch.cat([xy, xy + 20 + torch.rand(batch, num, 2, generator=generator) * 40], -1)
    rois = torch.cat([torch.arange(batch).float().view(-1, 1, 1).expand(batch, num, 1), boxes], -1)
    cls_scores = torch.randn(batch, num, classes + 1, generator=generator) * 2
    bbox_preds = torch.randn(batch, num, 4 if agnostic else 4 * classes, generator=generator)
    metas = [dict(img_shape=hw)] * batch
    expected = head.predict_by_feat(tuple(rois), tuple(cls_scores), tuple(bbox_preds), metas, rcnn_test_cfg=rcnn)
    deploy_cfg = Config.fromfile(osp.join(DEPLOY, 'detection_onnxruntime_dynamic.py'))
    with RewriterContext(cfg=deploy_cfg, backend='onnxruntime', ir=IR.ONNX, opset=17), torch.no_grad():
        dets, labels = head.predict_by_feat(rois, cls_scores, bbox_preds, metas, rcnn_test_cfg=rcnn)
    for i, res in enumerate(expected):
        assert len(res) == rcnn.max_per_img   # enough candidates: the top-k cut applies
        assert_same_detections([dets[i], labels[i]], (res.bboxes, res.scores, res.labels, None), box_atol=1e-4)


@pytest.mark.parametrize('nms_pre', [60, -1])
def test_rpn_proposals_are_mmdets(nms_pre):
    """The RPN's proposals under the rewrite (run in PyTorch, batch of two) are mmdet's: each FPN level's top
    ``nms_pre`` anchors, one NMS per level, the ``max_per_img`` best of all levels (mmdeploy 1.3.1 alone runs
    one NMS over all levels; on the trained demo detector that changed 2 of 11 detections, docs/deployment.md)."""
    from mmdeploy.codebase import import_codebase
    from mmdeploy.core import RewriterContext
    from mmdeploy.utils import IR, Codebase
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import mmoverlock.deploy.mmdeploy_compat  # noqa: F401
    register_all_modules()
    import_codebase(Codebase.MMDET)
    cfg = Config.fromfile(CASCADE_DEMO)
    rpn_cfg = cfg.model.test_cfg.rpn
    rpn_cfg.update(nms_pre=nms_pre, max_per_img=50, min_bbox_size=-1)   # mmdeploy filters no small boxes
    head = MODELS.build(dict(cfg.model.rpn_head, test_cfg=rpn_cfg))
    generator = torch.Generator().manual_seed(0)
    hw, batch, anchors = (128, 96), 2, head.num_base_priors
    sizes = [(hw[0] // stride, hw[1] // stride) for stride, _ in head.prior_generator.strides]
    # logits of spread 2: far from ties (at mmdet's initialisation every score is close to 0.5)
    cls_scores = [torch.randn(batch, anchors, h, w, generator=generator) * 2 for h, w in sizes]
    bbox_preds = [torch.randn(batch, 4 * anchors, h, w, generator=generator) for h, w in sizes]
    metas = [dict(img_shape=hw)] * batch
    expected = head.predict_by_feat(cls_scores, bbox_preds, batch_img_metas=metas, cfg=rpn_cfg, rescale=False)
    deploy_cfg = Config.fromfile(osp.join(DEPLOY, 'instance-seg_onnxruntime_dynamic.py'))
    deploy_cfg.codebase_config.post_processing.score_threshold = 0.   # mmdet's RPN has no score threshold
    with RewriterContext(cfg=deploy_cfg, backend='onnxruntime', ir=IR.ONNX, opset=17), torch.no_grad():
        dets, labels = head.predict_by_feat(cls_scores, bbox_preds, batch_img_metas=metas, cfg=rpn_cfg)
    for i, res in enumerate(expected):
        assert len(res) == 50 and dets.shape[1] == 50
        torch.testing.assert_close(dets[i, :, 4], res.scores, rtol=0, atol=1e-6)
        torch.testing.assert_close(dets[i, :, :4], res.bboxes, rtol=0, atol=1e-4)


def test_box_head_without_regression_is_refused_in_one_line():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from mmoverlock.deploy.mmdeploy_compat import bbox_head__predict_by_feat
    register_all_modules()
    head = MODELS.build(Config.fromfile(CASCADE_DEMO).model.roi_head.bbox_head[0])
    with pytest.raises(ValueError, match=rf'^{type(head).__name__} without box regression \(bbox_pred None\): .* '
                                         r'use a box head with with_reg=True \(the shipped configs\)$'):
        bbox_head__predict_by_feat(head, torch.zeros(1, 3, 5), torch.zeros(1, 3, 5), None, [dict(img_shape=(8, 8))])


def test_cast_long_symbolic_is_there():
    from torch.onnx import symbolic_opset9

    import mmoverlock.deploy.mmdeploy_compat  # noqa: F401
    assert callable(symbolic_opset9._cast_Long)


# ------------------------------------------------------------------------------------------------ one-line errors
def _derived_deploy(tmp_path, base: str, **overrides) -> str:
    cfg = Config.fromfile(osp.join(DEPLOY, base))
    cfg.merge_from_dict(overrides)
    dst = str(tmp_path / f'deploy_{base}')
    cfg.dump(dst)
    return dst


@pytest.mark.slow
def test_opset_below_12_is_refused_in_one_line(tmp_path):
    from mmdeploy.apis import torch2onnx
    model_cfg = tiny_seg_config(str(tmp_path / 'seg.py'))
    deploy = _derived_deploy(tmp_path, 'segmentation_onnxruntime_dynamic.py', **{'onnx_config.opset_version': 11})
    img = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=r'^onnx_config.opset_version=11: ContMix .* needs opset >= 12; '
                                         r'use the configs in configs/deploy/ \(opset 17\)$'):
        torch2onnx(img, str(tmp_path), 'x.onnx', deploy, model_cfg, None, 'cpu')


@pytest.mark.slow
def test_slide_inference_is_refused_in_one_line(tmp_path):
    from mmdeploy.apis import torch2onnx
    cfg = Config.fromfile(tiny_seg_config(str(tmp_path / 'seg.py')))
    cfg.model.test_cfg = dict(mode='slide', crop_size=(64, 64), stride=(32, 32))
    cfg.dump(str(tmp_path / 'slide.py'))
    img = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=r"^model.test_cfg.mode='slide': mmdeploy 1.3.1 exports whole-image "):
        torch2onnx(img, str(tmp_path), 'x.onnx', osp.join(DEPLOY, 'segmentation_onnxruntime_dynamic.py'),
                   str(tmp_path / 'slide.py'), None, 'cpu')


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_cascade_mask_rcnn_dynamic_matches_pytorch(tmp_path):
    """Cascade Mask R-CNN (class-specific regression in every stage) exported at 128x128, run by onnxruntime at
    128x128, 96x160 and a batch of two 64x96 images: boxes, scores, labels and mask probabilities as
    mmdet's."""
    model_cfg = tiny_det_config(str(tmp_path / 'cascade.py'))
    model = build_and_save(model_cfg, str(tmp_path / 'cascade.pth'), seed=1)
    assert not any(h.reg_class_agnostic for h in model.roi_head.bbox_head)
    onnx_file = export(osp.join(DEPLOY, 'instance-seg_onnxruntime_dynamic.py'), model_cfg,
                       str(tmp_path / 'cascade.pth'), str(tmp_path), (128, 128))
    sess = session(onnx_file)
    assert [o.name for o in sess.get_outputs()] == ['dets', 'labels', 'masks']
    for shape in [(1, 3, 128, 128), (1, 3, 96, 160), (2, 3, 64, 96)]:
        inputs = torch.randn(shape)
        outputs = sess.run(None, {'input': inputs.numpy()})
        with recording_logits(model) as logits:
            expected = torch_detections(model, inputs)
        assert len(logits) == 3
        assert_far_from_ties(model, logits, shape[0], expected)
        for i in range(shape[0]):
            assert_same_detections([o[i] for o in outputs], expected[i])


@pytest.mark.slow
def test_mask_rcnn_detection_only_static_matches_pytorch(tmp_path):
    """Mask R-CNN through the static detection-only config (exported and run at 96x128): boxes and labels,
    no mask branch in the graph."""
    model_cfg = tiny_det_config(str(tmp_path / 'mask_rcnn.py'), cascade=False)
    model = build_and_save(model_cfg, str(tmp_path / 'mask_rcnn.pth'))
    onnx_file = export(osp.join(DEPLOY, 'detection_onnxruntime_static.py'), model_cfg,
                       str(tmp_path / 'mask_rcnn.pth'), str(tmp_path), (96, 128))
    sess = session(onnx_file)
    assert [o.name for o in sess.get_outputs()] == ['dets', 'labels']
    assert sess.get_inputs()[0].shape == [1, 3, 96, 128]
    inputs = torch.randn(1, 3, 96, 128)
    outputs = sess.run(None, {'input': inputs.numpy()})
    with recording_logits(model) as logits:
        expected = torch_detections(model, inputs)
    assert_far_from_ties(model, logits, 1, expected)
    assert_same_detections([o[0] for o in outputs], expected[0])


@pytest.mark.slow
def test_upernet_dynamic_matches_pytorch(tmp_path):
    """UperNet exported at 96x128; logits (with_argmax=False) at 96x128, 64x160 (pyramid pooling of 2x5 maps
    into 3x3 and 6x6 bins) and a batch of two 80x112, and the shipped config's class map."""
    model_cfg = tiny_seg_config(str(tmp_path / 'upernet.py'))
    model = build_and_save(model_cfg, str(tmp_path / 'upernet.pth'))
    logits_cfg = _derived_deploy(tmp_path, 'segmentation_onnxruntime_dynamic.py',
                                 **{'codebase_config.with_argmax': False})
    (tmp_path / 'logits').mkdir()
    sess = session(export(logits_cfg, model_cfg, str(tmp_path / 'upernet.pth'), str(tmp_path / 'logits'),
                          (96, 128)))
    for shape in [(1, 3, 96, 128), (1, 3, 64, 160), (2, 3, 80, 112)]:
        inputs = torch.randn(shape)
        with torch.no_grad():
            expected = model.encode_decode(inputs, [dict(img_shape=shape[-2:])] * shape[0])
        got = torch.from_numpy(sess.run(None, {'input': inputs.numpy()})[0])
        assert got.shape == expected.shape == (shape[0], 5, *shape[-2:])
        torch.testing.assert_close(got, expected, atol=1e-4 * max(1., expected.abs().max().item()), rtol=1e-4)
    (tmp_path / 'argmax').mkdir()
    sess = session(export(osp.join(DEPLOY, 'segmentation_onnxruntime_dynamic.py'), model_cfg,
                          str(tmp_path / 'upernet.pth'), str(tmp_path / 'argmax'), (96, 128)))
    inputs = torch.randn(1, 3, 64, 160)
    with torch.no_grad():
        logits = model.encode_decode(inputs, [dict(img_shape=(64, 160))])
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3          # pixels whose class no rounding can change
    got = torch.from_numpy(sess.run(None, {'input': inputs.numpy()})[0])[:, 0]
    assert clear.float().mean() > 0.9
    assert torch.equal(got[clear], logits.argmax(1)[clear])
