# UperNet + OverLoCK on ADE20K, 160k iterations: the official recipe (OverLoCK release,
# segmentation/configs/overlock/upernet_overlock_*_ade20k_8xb2.py, mmseg 0.30) written for mmseg 1.x over
# its packaged bases. The leaves set the variant (arch, drop path, head in_channels, ImageNet checkpoint)
# from configs/_base_/variants/.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',           # UperNet (channels 512) + FCN aux head (index 2, loss 0.4)
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['mmoverlock'], allow_failed_imports=False)

crop_size = (512, 512)
norm_cfg = dict(type='SyncBN', requires_grad=True)   # SyncBN in the heads (tools/ use BN where there is no CUDA)
# The official train pipeline ends with Pad(size=crop_size, pad_val=0, seg_pad_val=255); in mmseg 1 the data
# preprocessor pads (pad_val=0, seg_pad_val=255 come from the packaged base).
data_preprocessor = dict(size=crop_size)

model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='mmoverlock.OverLoCK',
        out_indices=(0, 1, 2, 3),
        layout='segmentation',   # LN2d'd outputs, no Overview-Net fusion into the last map
        init_cfg=dict(type='Pretrained')),
    decode_head=dict(in_index=[0, 1, 2, 3], channels=512, num_classes=150, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_index=2, num_classes=150, norm_cfg=norm_cfg,
                        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    test_cfg=dict(mode='whole'))   # whole-image inference, as the release

# ---------------------------------------------------------------------------------------------- data
# Train: as the packaged ADE20K base (Resize (2048, 512) x 0.5-2.0, RandomCrop 512 cat_max_ratio 0.75, flip 0.5,
# PhotoMetricDistortion, reduce_zero_label), restated so that the recipe is readable in one place.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
# Test: resize to (2048, 512) keeping the ratio, then resize (not pad) each side to a multiple of 32 with
# bicubic interpolation: the release's ResizeToMultiple(size_divisor=32, interpolation='bicubic'), which mmseg 1
# still ships. The label map is loaded after the resizes, so predictions are scaled back to the original size
# and scored against the untouched annotation (mmseg 1's EncoderDecoder.postprocess_result).
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32, interpolation='bicubic'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
# Multi-scale + flip ("MS" column, ``tools/test.py ... --tta``): mmseg 0.30's MultiScaleFlipAug with img_ratios
# 0.5-1.75 scales the *test scale* (2048, 512) by each ratio (mmseg 1's packaged tta_pipeline scales the raw
# image instead), then the same multiple-of-32 resize; logits are averaged by SegTTAModel.
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(int(2048 * r), int(512 * r)), keep_ratio=True) for r in img_ratios],
        [dict(type='ResizeToMultiple', size_divisor=32, interpolation='bicubic')],
        [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')],
        [dict(type='LoadAnnotations', reduce_zero_label=True)],
        [dict(type='PackSegInputs')],
    ]),
]
tta_model = dict(type='SegTTAModel')

# 8 GPUs x 2 images = batch 16
# mmengine's InfiniteSampler, positioned on resume instead of loading the batches already trained
train_dataloader = dict(batch_size=2, sampler=dict(type='mmoverlock.ResumableInfiniteSampler'),
                        dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# ---------------------------------------------------------------------------------------------- schedule
# AdamW lr 6e-5, betas (0.9, 0.999), weight decay 0.01; no decay for parameters whose *name* contains 'norm'
# (the release's custom_keys; mmengine matches custom keys by name as mmcv 1 did, so the same parameters are hit).
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
# mmcv 1's lr_config(policy='poly', power=1.0, min_lr=0, warmup='linear', warmup_iters=1500, warmup_ratio=1e-6)
# multiplies the poly curve over all 160k iterations, lr * (1 - it / 160000), by the linear warm-up factor
# 1e-6 + (1 - 1e-6) * it / 1500 while it < 1500. Two overlapping, chainable mmengine schedulers give that
# product exactly (mmseg 1's configs instead start the poly decay after warm-up). mmengine schedulers reach
# their final value at step end - 1, hence end = 1500 + 1 and 160000 + 1.
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1501),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=160001),
]
auto_scale_lr = dict(enable=False, base_batch_size=16)

# 160k iterations; validate every 16k and keep the checkpoint with the best mIoU (the release validated every 8k
# with save_best='mIoU'; pass --cfg-options train_cfg.val_interval=8000 to match it exactly).
# (mmengine's IterBasedTrainLoop, resuming exactly: docs/reliability.md)
train_cfg = dict(type='mmoverlock.ResumableIterBasedTrainLoop', max_iters=160000, val_interval=16000)
# mmoverlock's CheckpointHook writes atomically and deletes the old checkpoint only after the new one is on
# disk; the checks fail the run early, in one line, on head in_channels that do not match the backbone and on a
# load_from checkpoint that does not fit the model.
default_hooks = dict(
    checkpoint=dict(type='mmoverlock.AtomicCheckpointHook', by_epoch=False, interval=16000, max_keep_ckpts=1,
                    save_best='mIoU', rule='greater'))
custom_hooks = [dict(type='mmoverlock.ChannelCheckHook'), dict(type='mmoverlock.CheckpointCheckHook'),
                dict(type='mmoverlock.DistributedEndHook')]   # multi-process runs end in order (exit 0 = success)
