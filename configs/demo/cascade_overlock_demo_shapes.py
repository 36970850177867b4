# The demo detector: the real Cascade Mask R-CNN OverLoCK recipe (../det/cascade_overlock_s_3x_coco.py) --
# three cascade stages with 4conv1fc box heads and mask heads over an OverLoCK backbone with ContMix --, sized
# for a CPU and trained from scratch on the synthetic shapes of tools/make_demo_data.py. Each change below was
# measured on the demo data (docs/demo.md, "Why the demo config is as it is").
# tools/demo.py trains it with 2 processes (DDP over gloo, one per core): 2 images each, 4 per step.
_base_ = ['../det/cascade_overlock_s_3x_coco.py']

# ---------------------------------------------------------------- a CPU-sized OverLoCK
demo_arch = dict(depth=[1, 1, 2, 1], sub_depth=[2, 1], embed_dim=[32, 64, 128, 192], kernel_size=[7, 7, 7, 5],
                 mlp_ratio=4, sub_num_heads=[2, 4], sub_mlp_ratio=3)
ctx = demo_arch['embed_dim'][3] // 4
width = 64            # FPN and RoI feature channels (256 in the real config)
head_width = 32       # channels of the box and mask heads' convs (256)
classes = ('circle', 'square', 'triangle', 'star')

# Trained from scratch, the detection layout's output LayerNorms (LN2d on every map fed to the FPN) stall the
# RoI heads at the class prior; the raw maps (layout='classification': the ImageNet layout's outputs, same
# blocks) learn. The real configs start from ImageNet weights (trained LayerNorms).
model = dict(
    backbone=dict(arch=dict(_delete_=True, **demo_arch), layout='classification', drop_path_rate=0.,
                  init_cfg=None),
    neck=dict(in_channels=[demo_arch['embed_dim'][0], demo_arch['embed_dim'][1],
                           demo_arch['embed_dim'][2] + ctx, demo_arch['embed_dim'][3] + ctx],
              out_channels=width),
    # anchors 16-256 px instead of 32-512: the objects are 26-64 px on the 128 px inputs
    rpn_head=dict(in_channels=width, feat_channels=width, anchor_generator=dict(scales=[4])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=[dict(h, in_channels=width, conv_out_channels=head_width, fc_out_channels=128,
                        num_classes=len(classes)) for h in _base_.model.roi_head.bbox_head],
        mask_roi_extractor=dict(out_channels=width),
        mask_head=dict(in_channels=width, conv_out_channels=head_width, num_classes=len(classes))),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        # 16 RoIs per image per stage (512 in the real config): 1-4 objects per image; half of them may be
        # positive (0.25 in the real config), so each stage's heads see twice the shapes per step: bbox AP50
        # 0.755 against 0.694 for seed 0 (docs/demo.md)
        rcnn=[dict(r, sampler=dict(r['sampler'], num=16, pos_fraction=0.5)) for r in _base_.model.train_cfg.rcnn]),
    # at most 20 detections per image (100): 1-4 objects per image; an untrained model's 100 masks per image
    # cost more than the rest of its evaluation
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100), rcnn=dict(max_per_img=20)))

# ---------------------------------------------------------------- data: data/demo (tools/make_demo_data.py)
# The images are drawn at 160 px and read at 128 px: the objects keep their size relative to the image, and the
# metrics are computed on the same 160 px annotations as before.
data_root = 'data/demo/'
image_size = 128
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
# 17 epochs of 100 steps of 4 images (2 processes x 2), validated every 4 epochs and at the end.
max_epochs = 17
train_cfg = dict(type='mmoverlock.ResumableEpochBasedTrainLoop', max_epochs=max_epochs, val_interval=4)
# From scratch, AdamW (the recipe's optimizer, made for fine-tuning a pretrained backbone at 1e-4) with a
# from-scratch lr kills many units of the RoI heads' shared fc within 50 iterations on the demo data; SGD,
# mmdet's from-scratch default, keeps them alive and learns faster.
# lr 0.06 for 4 images per step: 0.04 and 0.08 measured too (docs/demo.md).
# foreach: one multi-tensor update per param group (torch's per-tensor loop is slow on a CPU; same result), and
# mmoverlock's constructor keeps the recipe's paramwise rule (no decay on norms) in 2 groups instead of one per
# parameter (515): a training step 15-20 ms shorter (0.31-0.34 -> 0.30-0.31 s, one thread, 2 images), the same
# updates up to the order of the gradient-norm sum (tests/test_grouped_params.py).
optim_wrapper = dict(constructor='mmoverlock.GroupedParamsOptimWrapperConstructor',
                     optimizer=dict(_delete_=True, type='SGD', lr=0.06, momentum=0.9, weight_decay=1e-4,
                                    foreach=True),
                     clip_grad=dict(max_norm=10.))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, eta_min_ratio=0.01,
         convert_to_iter_based=True)]
# With 2 images per process, the backbone's BatchNorms normalise each batch by its own colour statistics and
# the network comes to rely on it; tested with the running statistics, the same weights lose a third of their
# AP50. For the last third of the steps the statistics are frozen, so those steps train the tested network.
custom_hooks = [*_base_.custom_hooks,
                dict(type='mmoverlock.FreezeBNStatsHook', begin_fraction=2 / 3, modules=['backbone'])]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_epochs, max_keep_ckpts=1,
                                                               save_best=None))
log_processor = dict(window_size=10)
auto_scale_lr = dict(base_batch_size=4)
