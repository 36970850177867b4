"""mmdeploy 1.3.1 with ONNX Runtime for OverLoCK detectors and segmentors.

Loaded by the deploy configs in ``configs/deploy/`` through ``custom_imports`` (``mmengine.Config.fromfile``
imports it in every process mmdeploy's ``tools/deploy.py`` starts); ``import mmoverlock`` never imports it,
nor mmdeploy. Importing it registers, in mmdeploy's own rewriter registries:

* :func:`onnx_export__torchscript` -- ``torch.onnx.export`` takes the TorchScript exporter (``dynamo=False``)
  and the model is checked first (:func:`check_exportable`: one-line errors for what mmdeploy 1.3.1 cannot
  export right); the OverLoCK backbone is re-parameterised (``switch_to_deploy()``, the same outputs); a
  detection-only deploy config (no ``masks`` output) leaves a detector's mask branch out of the graph;
* ``_cast_Long`` in ``torch.onnx.symbolic_opset9`` where today's torch lacks it (mmdeploy's RoIAlign
  symbolic imports it): :func:`add_cast_long_symbolic`;
* :func:`cascade_roi_head__predict_bbox` / :func:`cascade_roi_head__predict_mask` -- Cascade R-CNN with
  class-specific box regression (mmdet's ``regress_by_class``) and mmdet's mask averaging, for ONNX Runtime;
* :func:`rpn_head__predict_by_feat` -- the RPN's proposals through one NMS per FPN level (mmdet's), for ONNX
  Runtime;
* :func:`bbox_head__predict_by_feat` -- the R-CNN's detections with each class's own box through the per-class
  NMS (mmdet's ``multiclass_nms``; class-specific regression), for ONNX Runtime;
* :func:`adaptive_avg_pool2d__exact` -- ``F.adaptive_avg_pool2d`` with mmdet/mmseg's bins at any input size
  (UperNet's pyramid pooling), for ONNX Runtime.

Each patch says for which mmdeploy and torch it exists.
"""
import inspect
from typing import List, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn.modules.utils import _pair

from ..models.contmix import ContMix, ContMixBlock, adaptive_avg_pool2d_traceable

try:
    from mmdeploy.core import FUNCTION_REWRITER
except ImportError:
    raise ImportError("mmoverlock.deploy.mmdeploy_compat needs mmdeploy: pip install 'mmoverlock[deploy]' "
                      '(mmdeploy==1.3.1 installed with --no-deps, requirements/deploy.txt)') from None

ONNXRUNTIME = 'onnxruntime'
#: ContMix's clamped window starts (``mmoverlock/ops/na2d.py``) export as ``Clip`` on int64: ONNX opset >= 12
MIN_OPSET = 12


def check_exportable(model: torch.nn.Module, opset_version: int) -> None:
    """Raise a one-line error, naming the piece and what to use instead, for what mmdeploy 1.3.1 would export
    wrong or into a graph that ONNX Runtime refuses."""
    if opset_version < MIN_OPSET and any(isinstance(m, (ContMix, ContMixBlock)) for m in model.modules()):
        raise ValueError(f'onnx_config.opset_version={opset_version}: ContMix exports its clamped window starts '
                         f'as Clip on int64, which needs opset >= {MIN_OPSET}; use the configs in '
                         f'configs/deploy/ (opset 17)')
    test_cfg = getattr(model, 'test_cfg', None)
    if type(model).__module__.startswith('mmseg') and isinstance(test_cfg, dict) \
            and test_cfg.get('mode', 'whole') != 'whole':
        raise ValueError(f"model.test_cfg.mode='{test_cfg['mode']}': mmdeploy 1.3.1 exports whole-image "
                         f"inference only; set model.test_cfg=dict(mode='whole') in the model config "
                         f'(the shipped UperNet configs test whole images)')


def _reparameterise(model: torch.nn.Module) -> None:
    """``switch_to_deploy()`` on every OverLoCK backbone in ``model`` (same outputs, fewer convolutions)."""
    from ..models import OverLoCK
    for m in model.modules():
        if isinstance(m, OverLoCK):
            m.switch_to_deploy()


@FUNCTION_REWRITER.register_rewriter('torch.onnx.export')
def onnx_export__torchscript(model, args, f, *rest, **kwargs):
    """``torch.onnx.export`` as mmdeploy calls it, with the TorchScript exporter.

    For mmdeploy 1.3.1 (``mmdeploy/apis/onnx/export.py`` passes no ``dynamo``) on torch >= 2.9, whose default
    is the dynamo exporter (it needs ``onnxscript`` and does not run mmdeploy's symbolic rewrites); on torch
    2.5-2.8 the keyword only restates the default, before 2.5 it does not exist and is not passed.
    Active during mmdeploy's export only (its ``RewriterContext``), for every backend. The model mmdeploy
    exports is its own copy: re-parameterising it and dropping its mask head (detection-only configs, whose
    outputs are ``dets`` and ``labels``: mmdeploy 1.3.1 would add the masks as a third, unnamed output) touch
    nothing else.
    """
    ctx = FUNCTION_REWRITER.get_context()
    opset_version = kwargs.get('opset_version', getattr(ctx, 'opset', 11))
    check_exportable(model, opset_version)
    _reparameterise(model)
    roi_head = getattr(model, 'roi_head', None)
    if getattr(roi_head, 'with_mask', False) and 'masks' not in (kwargs.get('output_names') or []):
        roi_head.mask_head = None   # a detection-only deploy config: the graph ends at boxes and labels
    if 'dynamo' in inspect.signature(ctx.origin_func).parameters:   # torch >= 2.5
        kwargs['dynamo'] = False
    return ctx.origin_func(model, args, f, *rest, **kwargs)


def add_cast_long_symbolic() -> bool:
    """Give ``torch.onnx.symbolic_opset9`` its ``_cast_Long`` back (a ``Cast`` to int64) where it is missing.
    Returns whether it was added.

    For mmdeploy 1.3.1, whose RoIAlign symbolic (``mmdeploy/mmcv/ops/roi_align.py``, the ONNX Runtime path)
    imports it, on torch releases without it (torch 2.13 has none; torch 2.1 has it and is left as it is).
    Only a missing name is added; nothing of torch's is replaced.
    """
    from torch.onnx import symbolic_opset9
    if hasattr(symbolic_opset9, '_cast_Long'):
        return False

    def _cast_Long(g, input, non_blocking):  # noqa: N802  (the name mmdeploy imports)
        return g.op('Cast', input, to_i=torch.onnx.TensorProtoDataType.INT64)

    symbolic_opset9._cast_Long = _cast_Long
    return True


add_cast_long_symbolic()


def regress_by_class(bbox_head, boxes: Tensor, cls_score: Tensor, bbox_pred: Tensor, max_shape) -> Tensor:
    """mmdet's ``BBoxHead.regress_by_class`` on batched RoIs: each box is regressed by the deltas of its own
    top-scoring foreground class (class-specific heads) or by the one set of deltas (class-agnostic), then
    clipped to ``max_shape``.

    boxes (B, N, 4), cls_score (B, N, classes + 1) logits, bbox_pred (B, N, 4 * classes) or (B, N, 4)
    -> (B, N, 4).
    """
    from mmdet.structures.bbox import get_box_tensor
    if bbox_head.custom_activation:
        raise ValueError(f'{type(bbox_head).__name__} with {type(bbox_head.loss_cls).__name__} (custom '
                         f'activation) in a cascade stage: not exported by mmdeploy 1.3.1; use a softmax '
                         f'classification loss (CrossEntropyLoss) as the shipped configs do')
    reg_dim = bbox_head.bbox_coder.encode_size
    if not bbox_head.reg_class_agnostic:
        batch_size, num_rois = boxes.shape[:2]
        labels = cls_score[..., :-1].argmax(dim=-1)                          # (B, N)
        index = labels[..., None, None].expand(batch_size, num_rois, 1, reg_dim)
        bbox_pred = bbox_pred.reshape(batch_size, num_rois, -1, reg_dim).gather(2, index).squeeze(2)
    return get_box_tensor(bbox_head.bbox_coder.decode(boxes, bbox_pred, max_shape=max_shape))


def _with_batch_index(boxes: Tensor) -> Tensor:
    """(B, N, 4) boxes -> (B, N, 5) RoIs, the image index first."""
    batch_size, num = boxes.shape[:2]
    index = torch.arange(batch_size, device=boxes.device).to(boxes.dtype).view(-1, 1, 1)
    return torch.cat([index.expand(batch_size, num, 1), boxes], dim=-1)


@FUNCTION_REWRITER.register_rewriter('mmdet.models.roi_heads.cascade_roi_head.CascadeRoIHead.predict_bbox',
                                     backend=ONNXRUNTIME)
def cascade_roi_head__predict_bbox(self, x: Tuple[Tensor], batch_img_metas: List[dict],
                                   rpn_results_list: List[Tensor], rcnn_test_cfg, rescale: bool = False,
                                   **kwargs):
    """Cascade R-CNN's box branch for export, class-specific or class-agnostic regression alike.

    For mmdeploy 1.3.1, whose rewrite asserts ``reg_class_agnostic`` between stages, while the Cascade
    configs of mmdet 3 and of this project regress per class. As mmdet's ``CascadeRoIHead._refine_roi``:
    each stage refines the RoIs by its deltas of the argmax foreground class; the final scores are the
    stages' mean logits, the final deltas the last stage's.

    x: FPN maps (B, C, H_l, W_l); rpn_results_list[0]: proposals (B, N, 5) with scores
    -> what the last bbox head's (mmdeploy) ``predict_by_feat`` returns: dets (B, K, 5), labels (B, K).
    """
    proposals = rpn_results_list[0]
    batch_size, num_rois = proposals.shape[:2]
    rois = _with_batch_index(proposals[..., :4])                               # (B, N, 5)
    max_shape = batch_img_metas[0]['img_shape']
    stage_scores = []
    for stage in range(self.num_stages):
        results = self._bbox_forward(stage, x, rois.reshape(-1, 5), **kwargs)
        cls_score = results['cls_score'].reshape(batch_size, num_rois, -1)     # (B, N, classes + 1)
        bbox_pred = results['bbox_pred'].reshape(batch_size, num_rois, -1)     # (B, N, 4 [* classes])
        stage_scores.append(cls_score)
        if stage < self.num_stages - 1:
            boxes = regress_by_class(self.bbox_head[stage], rois[..., 1:], cls_score, bbox_pred, max_shape)
            rois = _with_batch_index(boxes)
    cls_scores = sum(stage_scores) / float(len(stage_scores))
    return self.bbox_head[-1].predict_by_feat(rois=rois, cls_scores=cls_scores, bbox_preds=bbox_pred,
                                              batch_img_metas=batch_img_metas, rcnn_test_cfg=rcnn_test_cfg,
                                              rescale=rescale)


@FUNCTION_REWRITER.register_rewriter('mmdet.models.roi_heads.cascade_roi_head.CascadeRoIHead.predict_mask',
                                     backend=ONNXRUNTIME)
def cascade_roi_head__predict_mask(self, x: Tuple[Tensor], batch_img_metas: List[dict],
                                   results_list: Sequence[Tensor], rescale: bool = False):
    """Cascade R-CNN's mask branch for export: the mean of the stages' mask probabilities, as mmdet.

    For mmdeploy 1.3.1, whose rewrite averages the stages' mask logits and takes the sigmoid of the mean
    (mmdet averages the sigmoids: ``CascadeRoIHead.predict_mask``), which moves every mask probability.

    results_list: dets (B, K, 5), labels (B, K) -> dets, labels, masks: (B, K, h, w) probabilities of each
    detection's class (``export_postprocess_mask=False``, the shipped configs) or (B, K, H, W) masks pasted
    into the input image and thresholded (``True``).
    """
    from mmdeploy.codebase.mmdet.deploy import get_post_processing_params
    dets, labels = results_list
    batch_size, num_dets = dets.shape[:2]
    mask_rois = _with_batch_index(dets[..., :4]).reshape(-1, 5)
    probs = sum(self._mask_forward(stage, x, mask_rois)['mask_preds'].sigmoid()
                for stage in range(self.num_stages)) / float(self.num_stages)   # (B * K, classes, h, w)
    mask_head = self.mask_head[-1]
    if mask_head.class_agnostic:
        probs = probs[:, :1]
    else:
        probs = probs[torch.arange(probs.shape[0], device=probs.device), labels.reshape(-1)][:, None]
    ctx = FUNCTION_REWRITER.get_context()
    if get_post_processing_params(ctx.cfg).get('export_postprocess_mask', False):
        from mmdeploy.codebase.mmdet.models.roi_heads.fcn_mask_head import _do_paste_mask
        height, width = batch_img_metas[0]['img_shape']
        probs, _ = _do_paste_mask(probs, dets.reshape(-1, 5)[:, :4], height, width, skip_empty=False)
        if self.test_cfg.mask_thr_binary >= 0:
            probs = probs >= self.test_cfg.mask_thr_binary
    return dets, labels, probs.reshape(batch_size, num_dets, *probs.shape[-2:])


def _nms_per_group(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float, score_threshold: float,
                   keep_top_k: int, max_kept: int, **select_kwargs):
    """One ONNX ``NonMaxSuppression`` that suppresses only within each group (mmcv's ``batched_nms``): each
    group's boxes are offset apart so that boxes of different groups never overlap.

    boxes (B, N, 4), scores (B, 1, N), groups (N, ) -> mmdeploy's ``_select_nms_index`` of the kept rows
    (dets (B, K, 5), labels (B, K), and the kept rows' ``pre_inds`` where ``output_index=True``)."""
    from mmdeploy.mmcv.ops.nms import ONNXNMSop, _select_nms_index
    offsets = groups.to(boxes)[:, None] * (boxes.amax(dim=(1, 2), keepdim=True) + 1)    # (B, N, 1)
    selected = ONNXNMSop.apply(boxes + offsets, scores, max_kept, iou_threshold, score_threshold)  # (K, 3)
    return _select_nms_index(scores, boxes, selected, boxes.shape[0], keep_top_k=keep_top_k, **select_kwargs)


@FUNCTION_REWRITER.register_rewriter('mmdet.models.dense_heads.rpn_head.RPNHead.predict_by_feat',
                                     backend=ONNXRUNTIME)
def rpn_head__predict_by_feat(self, cls_scores: List[Tensor], bbox_preds: List[Tensor], score_factors=None,
                              batch_img_metas=None, cfg=None, rescale: bool = False, with_nms: bool = True,
                              **kwargs):
    """The RPN's proposals as mmdet's ``RPNHead.predict_by_feat``: the top ``nms_pre`` anchors of each FPN
    level, decoded, then one NMS per level (mmcv's ``batched_nms`` with the level as the group) and the
    ``max_per_img`` best proposals of all levels.

    For mmdeploy 1.3.1 (any torch), whose rewrite runs one NMS over the proposals of all levels: a proposal
    of one level suppresses an overlapping one of another, so the RoI heads see other proposals than mmdet's
    and some detections differ (on the trained demo detector, 2 of 11 detections above score 0.3 on two
    validation images; with mmdet's RPN patched to one NMS over all levels, PyTorch gave ONNX Runtime's).

    The candidates are mmdeploy's (each level's top ``nms_pre`` anchors, padded with score 0 where a level has
    fewer, decoded; its score threshold); each level's boxes are offset apart (boxes of different levels never
    overlap) and go through one ONNX ``NonMaxSuppression``.

    cls_scores / bbox_preds: per level (B, A, H, W) / (B, 4 A, H, W) -> dets (B, K, 5: x1 y1 x2 y2 score),
    labels (B, K), as mmdeploy's rewrite returns them.
    """
    from mmdeploy.codebase.mmdet.deploy import (gather_topk, get_post_processing_params,
                                                pad_with_value_if_necessary)
    from mmdeploy.utils import is_dynamic_shape
    deploy_cfg = FUNCTION_REWRITER.get_context().cfg
    cfg = self.test_cfg if cfg is None else cfg
    pre_topk = cfg.get('nms_pre', -1)
    batch_size = cls_scores[0].shape[0]
    anchors_per_level = self.anchor_generator.grid_anchors([score.shape[-2:] for score in cls_scores],
                                                           device=cls_scores[0].device)
    level_boxes, level_scores, levels = [], [], []
    for level, (cls_score, bbox_pred, anchors) in enumerate(zip(cls_scores, bbox_preds, anchors_per_level)):
        cls_score = cls_score.detach().permute(0, 2, 3, 1)
        if self.use_sigmoid_cls:
            scores = cls_score.reshape(batch_size, -1).sigmoid()
        else:   # (background, foreground) pairs: mmdet's label 0 is the foreground
            scores = cls_score.reshape(batch_size, -1, 2).softmax(-1)[..., 0]
        scores = scores.reshape(batch_size, -1, 1)                                          # (B, HWA, 1)
        deltas = bbox_pred.detach().permute(0, 2, 3, 1).reshape(batch_size, -1, self.bbox_coder.encode_size)
        anchors = (anchors if is_dynamic_shape(deploy_cfg) else anchors.data).unsqueeze(0)
        if pre_topk > 0:   # the best nms_pre anchors of the level (padded with score 0 where it has fewer)
            scores = pad_with_value_if_necessary(scores, 1, pre_topk, 0.)
            deltas = pad_with_value_if_necessary(deltas, 1, pre_topk)
            anchors = pad_with_value_if_necessary(anchors, 1, pre_topk)
            _, top = scores.squeeze(2).topk(pre_topk)
            deltas, scores = gather_topk(deltas, scores, inds=top, batch_size=batch_size, is_batched=True)
            anchors = gather_topk(anchors, inds=top, batch_size=batch_size, is_batched=False)
        else:
            anchors = anchors.expand(batch_size, -1, -1)
        level_boxes.append(self.bbox_coder.decode(anchors, deltas, max_shape=batch_img_metas[0]['img_shape']))
        level_scores.append(scores)
        levels.append(torch.full_like(scores[0, :, 0], level, dtype=torch.long))
    boxes, scores, levels = torch.cat(level_boxes, 1), torch.cat(level_scores, 1), torch.cat(levels)
    if not with_nms:
        return boxes, scores
    post_params = get_post_processing_params(deploy_cfg)
    iou_threshold = cfg.nms.get('iou_threshold', post_params.iou_threshold)
    score_threshold = cfg.get('score_thr', post_params.score_threshold)
    keep_top_k = cfg.get('max_per_img', post_params.keep_top_k)
    max_kept = keep_top_k if keep_top_k > 0 else post_params.max_output_boxes_per_class
    return _nms_per_group(boxes, scores.reshape(batch_size, 1, -1), levels, iou_threshold, score_threshold,
                          keep_top_k, max_kept)


@FUNCTION_REWRITER.register_rewriter('mmdet.models.roi_heads.bbox_heads.bbox_head.BBoxHead.predict_by_feat',
                                     backend=ONNXRUNTIME)
def bbox_head__predict_by_feat(self, rois: Tensor, cls_scores: Tensor, bbox_preds: Tensor,
                               batch_img_metas: List[dict], rcnn_test_cfg=None, rescale: bool = False):
    """The R-CNN's detections as mmdet's ``BBoxHead.predict_by_feat``: each (RoI, class) pair keeps its own
    decoded box (class-specific regression) through the score threshold, the per-class NMS and the top-k.

    For mmdeploy 1.3.1 (any torch), whose rewrite decodes every class's box and then gives all classes of a
    RoI the box of its top-scoring class: the detections of a RoI's other classes (Mask R-CNN, the last
    cascade stage) get another class's box, and NMS suppresses among the wrong boxes.

    The RoI x class candidates are flattened (RoI-major, as mmdet's ``multiclass_nms``) and go through one
    ONNX ``NonMaxSuppression``, the boxes of each class offset apart as in mmcv's ``batched_nms`` (boxes of
    different classes never overlap); a class-agnostic head's one box per RoI serves all its classes.

    rois (B, N, 5), cls_scores (B, N, classes + 1) logits, bbox_preds (B, N, 4 * classes) or (B, N, 4)
    -> dets (B, K, 5: x1 y1 x2 y2 score), labels (B, K); rows of score 0 are padding (and, in a batch, the
    other images' detections), which mmdeploy's backend model drops.
    """
    from mmdeploy.codebase.mmdet.deploy import get_post_processing_params
    from mmdet.structures.bbox import get_box_tensor
    if bbox_preds is None:
        raise ValueError(f'{type(self).__name__} without box regression (bbox_pred None): not exported by '
                         f'mmdeploy 1.3.1 with these configs; use a box head with with_reg=True (the shipped '
                         f'configs)')
    post_params = get_post_processing_params(FUNCTION_REWRITER.get_context().cfg)
    iou_threshold = rcnn_test_cfg.nms.get('iou_threshold', post_params.iou_threshold)
    score_threshold = rcnn_test_cfg.get('score_thr', post_params.score_threshold)
    keep_top_k = rcnn_test_cfg.get('max_per_img', post_params.keep_top_k)

    batch_size, num_rois = rois.shape[:2]
    classes = self.num_classes
    scores = self.loss_cls.get_activation(cls_scores) if self.custom_cls_channels else cls_scores.softmax(-1)
    scores = scores[..., :classes].reshape(batch_size, 1, num_rois * classes)           # (B, 1, N * C)
    boxes = get_box_tensor(self.bbox_coder.decode(rois[..., 1:], bbox_preds,
                                                  max_shape=batch_img_metas[0]['img_shape']))
    boxes = boxes.reshape(batch_size, num_rois, -1, 4).expand(batch_size, num_rois, classes, 4)
    boxes = boxes.reshape(batch_size, num_rois * classes, 4)                           # row n * C + c
    labels = torch.arange(classes, device=boxes.device).repeat(num_rois)             # (N * C, )
    max_kept = keep_top_k if keep_top_k > 0 else post_params.max_output_boxes_per_class
    flat_index = torch.arange(num_rois * classes, device=boxes.device).expand(batch_size, -1)
    dets, _, index = _nms_per_group(boxes, scores, labels, iou_threshold, score_threshold, keep_top_k, max_kept,
                                    pre_inds=flat_index, output_index=True)
    return dets, index.clamp(min=0) % classes


@FUNCTION_REWRITER.register_rewriter('torch.nn.functional.adaptive_avg_pool2d', backend=ONNXRUNTIME)
def adaptive_avg_pool2d__exact(input: Tensor, output_size) -> Tensor:
    """``F.adaptive_avg_pool2d`` with PyTorch's bins at every input size: (B, C, H, W) -> (B, C, *output_size).

    For mmdeploy 1.3.1, whose rewrite pools with kernel = stride = int(input / output), fixed at the export
    size: a different result where the input is not a multiple of the output (UperNet's 1-2-3-6 pyramid
    pooling on most maps), and a static kernel in a dynamic-shape graph. Global pooling (output 1x1) is
    left to torch (GlobalAveragePool).
    """
    ctx = FUNCTION_REWRITER.get_context()
    size = _pair(output_size)
    if all(s == 1 for s in size):
        return ctx.origin_func(input, output_size)
    size = [input.shape[-2 + i] if s is None else s for i, s in enumerate(size)]
    return adaptive_avg_pool2d_traceable(input, size)


__all__ = ['check_exportable', 'regress_by_class', 'add_cast_long_symbolic', 'onnx_export__torchscript',
           'cascade_roi_head__predict_bbox', 'cascade_roi_head__predict_mask', 'bbox_head__predict_by_feat',
           'adaptive_avg_pool2d__exact']
