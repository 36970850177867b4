# OverLoCK-T + Cascade Mask R-CNN, 3x (36 epochs, multi-scale + DETR-style crop, lr 1e-4).
_base_ = ['./_base_/cascade_mask_rcnn_overlock_fpn.py', './_base_/overlock_coco_3x.py']

model = dict(
    backbone=dict(arch='t', drop_path_rate=0.2,   # drop path T: 0.2 (the release's Mask R-CNN value)
                  init_cfg=dict(checkpoint='https://github.com/LMMMEng/OverLoCK/releases/download/v1/'
                                           'overlock_t_in1k_224.pth')),
    neck=dict(in_channels=[64, 128, 384, 640]))
