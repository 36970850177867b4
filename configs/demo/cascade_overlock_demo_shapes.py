# The demo detector: the real Cascade Mask R-CNN OverLoCK recipe (../det/cascade_overlock_s_3x_coco.py),
# sized for a CPU and trained from scratch on the synthetic shapes of tools/make_demo_data.py.
# Overridden here: the data, the schedule, the image size, the backbone arch (a small arch dict, no
# pretrained download, raw output maps: see below) and the widths that follow from them (FPN and RoI heads
# 64 wide, fewer RoIs).
_base_ = ['../det/cascade_overlock_s_3x_coco.py']

# ---------------------------------------------------------------- a CPU-sized OverLoCK
demo_arch = dict(depth=[1, 1, 2, 1], sub_depth=[2, 1], embed_dim=[32, 64, 128, 192], kernel_size=[7, 7, 7, 5],
                 mlp_ratio=4, sub_num_heads=[2, 4], sub_mlp_ratio=3)
ctx = demo_arch['embed_dim'][3] // 4
width = 64            # FPN / RoI head channels (256 in the real config)
classes = ('circle', 'square', 'triangle', 'star')

# Trained from scratch, the detection layout's output LayerNorms (LN2d on every map fed to the FPN) stall the
# RoI heads at the class prior; the raw maps (layout='classification': the ImageNet layout's outputs, same
# blocks) learn (measured in docs/demo.md). The real configs start from ImageNet weights (trained LayerNorms).
model = dict(
    backbone=dict(arch=dict(_delete_=True, **demo_arch), layout='classification', drop_path_rate=0.,
                  init_cfg=None),
    neck=dict(in_channels=[demo_arch['embed_dim'][0], demo_arch['embed_dim'][1],
                           demo_arch['embed_dim'][2] + ctx, demo_arch['embed_dim'][3] + ctx],
              out_channels=width),
    # anchors 16-256 px instead of 32-512: the objects are 15-70 px on 160 px images
    rpn_head=dict(in_channels=width, feat_channels=width, anchor_generator=dict(scales=[4])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=[dict(h, in_channels=width, conv_out_channels=width, fc_out_channels=256,
                        num_classes=len(classes)) for h in _base_.model.roi_head.bbox_head],
        mask_roi_extractor=dict(out_channels=width),
        mask_head=dict(in_channels=width, conv_out_channels=width, num_classes=len(classes))),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=[dict(r, sampler=dict(r['sampler'], num=32)) for r in _base_.model.train_cfg.rcnn]),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100)))

# ---------------------------------------------------------------- data: data/demo (tools/make_demo_data.py)
data_root = 'data/demo/'
image_size = 160
metainfo = dict(classes=classes, palette=[(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48)])
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_training.json',
                 data_prefix=dict(img='images/training/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_validation.json',
                 data_prefix=dict(img='images/validation/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_validation.json')
test_evaluator = val_evaluator

# ---------------------------------------------------------------- schedule: minutes on a CPU
# 8 epochs of 200 iterations at batch 2: the schedule chosen by the measured runs in docs/demo.md.
max_epochs = 8
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=2)
# From scratch, AdamW (the recipe's optimizer, made for fine-tuning a pretrained backbone at 1e-4) with a
# from-scratch lr kills many units of the RoI heads' shared fc (3136 -> 256, ReLU) within 50 iterations on the
# demo data; SGD, mmdet's from-scratch default, keeps most of them alive and learns faster (measured in
# docs/demo.md).
# foreach: one update over all parameter tensors (torch's per-tensor loop is slow on a CPU; same result).
optim_wrapper = dict(optimizer=dict(_delete_=True, type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4,
                                    foreach=True),
                     clip_grad=dict(max_norm=10.))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, eta_min_ratio=0.01,
         convert_to_iter_based=True)]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
log_processor = dict(window_size=10)
auto_scale_lr = dict(base_batch_size=2)
