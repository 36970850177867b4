# OverLoCK-S + Cascade Mask R-CNN, 3x multi-scale with crop (the paper's headline detection setting).
_base_ = ['./_base_/cascade_mask_rcnn_overlock_fpn.py', './_base_/overlock_coco_3x.py']

model = dict(
    backbone=dict(arch='s', drop_path_rate=0.4,   # drop path S: 0.4 (the release's Mask R-CNN value)
                  init_cfg=dict(checkpoint='https://github.com/LMMMEng/OverLoCK/releases/download/v1/'
                                           'overlock_s_in1k_224.pth')),
    neck=dict(in_channels=[64, 128, 448, 640]))
