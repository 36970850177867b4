# OverLoCK on ImageNet-1K: the official recipe (the release's timm-style train.py and scripts/train_*_model.sh)
# written for mmpretrain 1.x over its packaged bases. The leaves set the variant (arch, head widths, drop path,
# test crop_pct) from configs/_base_/variants/.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
# mmoverlock.models.mmpretrain (the mmpretrain adapter): the ImageNet head with its Overview-Net auxiliary head
custom_imports = dict(imports=['mmoverlock', 'mmoverlock.models.mmpretrain'], allow_failed_imports=False)

# ---------------------------------------------------------------------------------------------- model
model = dict(
    type='mmoverlock.OverLoCKClassifier',   # mmpretrain's ImageClassifier that also reads the release's weights
    # ImageNet layout: raw stage-4 map (e3 + e3 // 4 channels) and the Overview-Net map (e3) for the aux head
    backbone=dict(type='mmoverlock.OverLoCK', out_indices=(3, 4), layout='classification'),
    neck=None,
    head=dict(
        type='mmoverlock.OverLoCKClsHead',
        num_classes=1000,
        projection=1024,            # the release's head width
        aux_loss_weight=0.4,        # --aux-loss-ratio 0.4: main + 0.4 x Overview-Net head
        # timm's Mixup smooths the (mixed) targets by 0.1 and trains with SoftTargetCrossEntropy; LabelSmoothLoss
        # in 'original' mode computes the same soft-target loss for mixed and for hard labels.
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        topk=(1, 5)),
    # --mixup 0.8 --cutmix 1.0 --mixup-prob 1.0 --mixup-switch-prob 0.5 --mixup-mode batch: one of the two per
    # batch with equal chance
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))
# timm's train.py converts every BatchNorm to SyncBatchNorm in distributed training (no --no-sync-bn in the
# release scripts); mmengine does the same with sync_bn and reverts it in a single process.
sync_bn = 'torch'

# ---------------------------------------------------------------------------------------------- data
# ImageNet mean / std (timm's IMAGENET_DEFAULT_*) in 0-255 RGB, from the packaged base; num_classes there
# lets Mixup / CutMix make one-hot targets.
data_preprocessor = dict(num_classes=1000, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                         to_rgb=True)
bgr_mean = data_preprocessor['mean'][::-1]
bgr_std = data_preprocessor['std'][::-1]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    # RandomResizedCrop 224, scale 0.08-1, ratio 3/4-4/3, --train-interpolation random (bilinear or bicubic)
    dict(type='RandomChoice', transforms=[
        [dict(type='RandomResizedCrop', scale=224, crop_ratio_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
              backend='pillow', interpolation=interp)] for interp in ('bilinear', 'bicubic')]),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    # --aa rand-m9-mstd0.5-inc1 (colour jitter 0.4 is ignored by timm when RandAugment is on)
    dict(type='RandAugment', policies='timm_increasing', num_policies=2, total_level=10, magnitude_level=9,
         magnitude_std=0.5, hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
    # --reprob 0.25 --remode pixel: per-pixel N(0, 1) noise after normalisation = N(mean, std) before it
    dict(type='RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02, max_area_ratio=1 / 3,
         fill_color=bgr_mean, fill_std=bgr_std),
    dict(type='PackInputs'),
]
# timm eval transform: resize the shorter side to floor(224 / crop_pct) (bicubic, PIL), centre crop 224.
# crop_pct is per variant (the release's model default_cfg): the leaves set the ResizeEdge scale.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
# 8 GPUs x 256 images = batch 2048
train_dataloader = dict(batch_size=256, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=256, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# ---------------------------------------------------------------------------------------------- schedule
# --auto-lr: lr = total batch / 1024 x 1e-3 = 2e-3 at 2048; AdamW weight decay 0.05. timm's optimizer factory
# exempts every parameter with ndim <= 1 from weight decay (the model defines no no_weight_decay list), which
# is flat_decay_mult=0 exactly (norm weights and biases are all 1-d here).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(_delete_=True, flat_decay_mult=0.0),
    clip_grad=dict(max_norm=5.0, norm_type=2))   # --clip-grad 5 (mode norm)
# The release trained with --native-amp: add --amp to tools/train.py (AmpOptimWrapper, dynamic loss scale).
# timm's CosineLRScheduler (t_initial 300, warmup_t 5, warmup_lr_init 1e-6, lr_min 1e-5), stepped per epoch:
# epoch t < 5: 1e-6 + t / 5 * (lr - 1e-6); t >= 5: 1e-5 + (lr - 1e-5) * (1 + cos(pi * t / 300)) / 2 (the
# cosine keeps its phase from epoch 0: no warmup_prefix). The overlapping chainable schedulers below follow
# that curve within 0.05 % (mmengine schedulers reach their end value at step end - 1: warm-up end = 5 + 1).
# The release's timm also runs 10 cool-down epochs at 1e-5 after epoch 300 (its --cooldown-epochs default);
# the release's scripts say 300 epochs: add --cfg-options train_cfg.max_epochs=310 for that tail.
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / 2e-3, by_epoch=True, begin=0, end=6),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=0, end=300),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
# tools/train.py --auto-scale-lr rescales lr 2e-3 by (actual batch / 2048)
auto_scale_lr = dict(base_batch_size=2048)

# --model-ema --model-ema-decay 0.9999 (timm ModelEmaV2: every step, buffers included). mmengine's momentum is
# 1 - decay. Validation and test use the EMA weights, and checkpoints store them as the model's state_dict.
# mmoverlock's hooks: atomic checkpoints (the old one deleted only after the new one is on disk), and one-line
# errors before the run for head in_channels that do not match the backbone and for a load_from checkpoint
# that does not fit the model.
custom_hooks = [dict(type='EMAHook', momentum=1e-4, update_buffers=True, priority='ABOVE_NORMAL'),
                dict(type='mmoverlock.ChannelCheckHook'), dict(type='mmoverlock.CheckpointCheckHook'),
                dict(type='mmoverlock.DistributedEndHook')]   # multi-process runs end in order (exit 0 = success)
default_hooks = dict(checkpoint=dict(type='mmoverlock.AtomicCheckpointHook', interval=1, max_keep_ckpts=1,
                                     save_best='auto'))
