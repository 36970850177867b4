# Mask R-CNN + FPN (mmdet's packaged model) on OverLoCK in the detection layout. Leaf configs set the
# variant: model.backbone.arch / drop_path_rate / init_cfg.checkpoint and model.neck.in_channels.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmoverlock.OverLoCK',
        arch='t',
        out_indices=(0, 1, 2, 3),
        fuse_overview=True,    # detection layout: last map + h_proj(norm(Overview-Net map))
        extra_norm=True,
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained',
                      checkpoint='https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_t_in1k_224.pth')),
    neck=dict(in_channels=[64, 128, 384, 640]))   # e0, e1, e2 + e3/4, e3 + e3/4
