# OverLoCK-B + Mask R-CNN, 3x (36 epochs, multi-scale + DETR-style crop, lr 1e-4).
_base_ = ['./_base_/mask_rcnn_overlock_fpn.py', './_base_/overlock_coco_3x.py']

model = dict(
    backbone=dict(arch='b', drop_path_rate=0.6,   # drop path B: 0.6 (release)
                  init_cfg=dict(checkpoint='https://github.com/LMMMEng/OverLoCK/releases/download/v1/'
                                           'overlock_b_in1k_224.pth')),
    neck=dict(in_channels=[80, 160, 528, 720]))
