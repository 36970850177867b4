# The official OverLoCK COCO 1x recipe (mmdet 2.28 release), in mmdet 3 spelling: data, schedule, optimizer,
# hooks. Model-free, so Mask R-CNN and Cascade Mask R-CNN share it. Values: the release's
# detection/configs/maskrcnn_overlock/*_1x_coco.py.
_base_ = [
    'mmdet::_base_/datasets/coco_instance.py',   # (1333, 800) keep-ratio resize + flip 0.5; test (1333, 800)
    'mmdet::_base_/schedules/schedule_1x.py',    # 12 epochs, steps 8/11, linear warm-up 500 iters from 0.001
    'mmdet::_base_/default_runtime.py',
]
# mmoverlock.models.mmdet (the mmdet adapter): test-time augmentation that also merges masks (--tta)
custom_imports = dict(imports=['mmoverlock', 'mmoverlock.models.mmdet'], allow_failed_imports=False)

# AdamW lr 2e-4, wd 0.05; no decay for parameters whose *name* contains 'norm' (the release's custom_keys
# rule, not norm_decay_mult, which would also hit BatchNorm).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))

# The release keeps one checkpoint per epoch plus the best (first metric: coco/bbox_mAP). mmoverlock's
# CheckpointHook writes each checkpoint atomically and deletes the old one only after the new one is on disk;
# the two checks fail the run early, in one line, on a neck/head whose in_channels do not match the backbone
# and on a load_from checkpoint that does not fit the model (or holds more than tensors).
default_hooks = dict(checkpoint=dict(type='mmoverlock.AtomicCheckpointHook', interval=1, max_keep_ckpts=1,
                                     save_best='auto'))
custom_hooks = [dict(type='mmoverlock.ChannelCheckHook'), dict(type='mmoverlock.CheckpointCheckHook'),
                dict(type='mmoverlock.DistributedEndHook')]   # multi-process runs end in order (exit 0 = success)

# lr above is for 16 images = 8 GPUs x 2; `tools/train.py --auto-scale-lr` rescales it to the real batch.
# mmengine's epoch loop and sampler, extended to resume inside an epoch: `--resume` from a checkpoint saved by
# iteration continues after the batches already trained, in the same order (docs/reliability.md).
train_dataloader = dict(batch_size=2, sampler=dict(type='mmoverlock.ResumableSampler'))
train_cfg = dict(type='mmoverlock.ResumableEpochBasedTrainLoop')
auto_scale_lr = dict(enable=False, base_batch_size=16)

# `tools/test.py --tta`: three scales x flip (the scales of mmdet's retinanet_tta.py; the release has no TTA),
# boxes merged by NMS, each kept box with the mask of its own view.
tta_model = dict(type='mmoverlock.DetTTAModelWithMasks',
                 tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=s, keep_ratio=True) for s in [(1333, 800), (666, 400), (2000, 1200)]],
        [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
        [dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor',
                                               'flip', 'flip_direction'))],
    ]),
]
