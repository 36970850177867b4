# Mask R-CNN + FPN (mmdet's packaged model) on OverLoCK in the detection layout. The leaves set the variant
# (arch, drop path, ImageNet checkpoint, FPN in_channels) from configs/_base_/variants/.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmoverlock.OverLoCK',
        out_indices=(0, 1, 2, 3),
        layout='detection',    # LN2d'd outputs, the last one + h_proj(norm(Overview-Net map))
        init_cfg=dict(type='Pretrained')))
