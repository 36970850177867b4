# OverLoCK-T + Mask R-CNN, 1x (12 epochs, single-scale (1333, 800) + flip, lr 2e-4).
_base_ = ['../_base_/variants/overlock_t.py', './_base_/mask_rcnn_overlock_fpn.py',
          './_base_/overlock_coco_1x.py']

variant = _base_.overlock_variant
model = dict(backbone=dict(arch=variant.arch, drop_path_rate=variant.drop_path.det,
                           init_cfg=dict(checkpoint=variant.checkpoint)),
             neck=dict(in_channels=variant.channels))
del variant
