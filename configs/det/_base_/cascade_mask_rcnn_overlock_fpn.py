# Cascade Mask R-CNN + FPN on OverLoCK (detection layout) with the heads of mmdet's ConvNeXt cascade configs
# (configs/convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py): three
# stages of 4conv1fc shared bbox heads with SyncBN, decoded-box GIoU loss weight 10. The release has no
# cascade config; this is the protocol under which ConvNeXt, UniRepLKNet and MogaNet report. The leaves set
# the variant from configs/_base_/variants/.
_base_ = ['mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py']


def giou_4conv1fc_head(target_stds):
    return dict(
        type='ConvFCBBoxHead', num_shared_convs=4, num_shared_fcs=1, in_channels=256, conv_out_channels=256,
        fc_out_channels=1024, roi_feat_size=7, num_classes=80,
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=target_stds),
        reg_class_agnostic=False, reg_decoded_bbox=True, norm_cfg=dict(type='SyncBN', requires_grad=True),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=10.0))


model = dict(
    backbone=dict(
        _delete_=True,
        type='mmoverlock.OverLoCK',
        out_indices=(0, 1, 2, 3),
        layout='detection',    # LN2d'd outputs, the last one + h_proj(norm(Overview-Net map))
        init_cfg=dict(type='Pretrained')),
    roi_head=dict(bbox_head=[giou_4conv1fc_head([0.1, 0.1, 0.2, 0.2]),       # per-stage stds as mmdet's
                             giou_4conv1fc_head([0.05, 0.05, 0.1, 0.1]),
                             giou_4conv1fc_head([0.033, 0.033, 0.067, 0.067])]))
del giou_4conv1fc_head
