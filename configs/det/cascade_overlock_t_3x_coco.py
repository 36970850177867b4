# OverLoCK-T + Cascade Mask R-CNN, 3x (36 epochs, multi-scale + DETR-style crop, lr 1e-4).
_base_ = ['../_base_/variants/overlock_t.py', './_base_/cascade_mask_rcnn_overlock_fpn.py',
          './_base_/overlock_coco_3x.py']

variant = _base_.overlock_variant
model = dict(backbone=dict(arch=variant.arch, drop_path_rate=variant.drop_path.det,
                           init_cfg=dict(checkpoint=variant.checkpoint)),
             neck=dict(in_channels=variant.channels))
del variant
