# The official OverLoCK COCO 3x recipe: the 1x recipe with lr 1e-4, 36 epochs (steps 27/33) and
# multi-scale training with the DETR-style crop branch (the release's *_3x_coco.py).
_base_ = ['./overlock_coco_1x.py']

optim_wrapper = dict(optimizer=dict(lr=1e-4))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),   # release: 500, not 1000
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]

# Flip, then with equal chance (a) short side 480..800 step 32, long <= 1333, or (b) short side 400/500/600,
# absolute-range crop 384-600 (negative crops allowed), then (a)'s resize. Same as mmdet's ConvNeXt 3x.
multi_scales = [(s, 1333) for s in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoice', transforms=[
        [dict(type='RandomChoiceResize', scales=multi_scales, keep_ratio=True)],
        [dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
         dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
         dict(type='RandomChoiceResize', scales=multi_scales, keep_ratio=True)],
    ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
