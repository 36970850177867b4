"""Test-time augmentation for instance segmentation (mmdet 3.3's ``DetTTAModel`` merges boxes only).

Imported by the det configs (``custom_imports``), not by ``import mmoverlock``: it needs mmdet.
"""
from typing import List, Optional

import torch
from mmcv.ops import batched_nms
from mmdet.models.test_time_augs import DetTTAModel
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox_flip
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData

from ...registry import MODELS

_MASK_FLIP_DIMS = {'horizontal': (-1, ), 'vertical': (-2, ), 'diagonal': (-2, -1)}


def unflip_masks(masks: torch.Tensor, direction: str) -> torch.Tensor:
    """Undo a flip of (N, H, W) masks predicted on a flipped view."""
    if direction not in _MASK_FLIP_DIMS:
        raise ValueError(f"flip_direction '{direction}' is not one of {sorted(_MASK_FLIP_DIMS)}")
    return masks.flip(_MASK_FLIP_DIMS[direction])


@MODELS.register_module()
class DetTTAModelWithMasks(DetTTAModel):
    """mmdet's ``DetTTAModel`` (boxes of all views merged by class-wise NMS) extended to instance masks:
    each kept box keeps the mask predicted in its own view, flipped back to the image's orientation.

    Masks must come at the original image size (Mask R-CNN's ``rescale=True``), shape (N, H, W).
    """

    def __init__(self, tta_cfg: Optional[dict] = None, **kwargs):
        super().__init__(tta_cfg=ConfigDict(tta_cfg or {}), **kwargs)

    def test_step(self, data):
        """Predict every view with its flip hidden from the detector, then merge.

        mmdet 3.3's ``CascadeRoIHead.predict_mask`` passes the stage masks of one view through
        ``merge_aug_masks``, which "un-flips" them when the view's meta says ``flip`` (and fails on tensors);
        the flip is undone once, here, in :meth:`_merge_single_sample`, from ``tta_flip``.
        """
        views = data['data_samples'] if isinstance(data, dict) else data[1]
        for sample in (s for view in views for s in view):
            sample.set_metainfo(dict(tta_flip=sample.metainfo.get('flip', False), flip=False))
        return super().test_step(data)

    def _merge_single_sample(self, data_samples: List[DetDataSample]) -> DetDataSample:
        with_masks = data_samples[0].pred_instances.get('masks', None) is not None
        bboxes, scores, labels, masks = [], [], [], []
        for sample in data_samples:
            pred, meta = sample.pred_instances, sample.metainfo
            view_bboxes, view_masks = pred.bboxes, pred.get('masks', None)
            if meta.get('tta_flip', meta.get('flip', False)):
                view_bboxes = bbox_flip(view_bboxes, meta['ori_shape'], meta['flip_direction'])
                if with_masks:
                    view_masks = unflip_masks(view_masks, meta['flip_direction'])
            bboxes.append(view_bboxes)
            scores.append(pred.scores)
            labels.append(pred.labels)
            masks.append(view_masks)
        bboxes, scores, labels = torch.cat(bboxes), torch.cat(scores), torch.cat(labels)
        if bboxes.numel() == 0:
            return data_samples[0]
        dets, keep = batched_nms(bboxes, scores, labels, self.tta_cfg.nms)
        dets, keep = dets[:self.tta_cfg.max_per_img], keep[:self.tta_cfg.max_per_img]
        merged = data_samples[0]
        merged.pred_instances = InstanceData(bboxes=dets[:, :-1], scores=dets[:, -1], labels=labels[keep])
        if with_masks:
            merged.pred_instances.masks = torch.cat(masks)[keep]
        return merged
