# OverLoCK-T (Tiny) on ImageNet-1K, 224 px, 300 epochs, 8 GPUs x 256 images.
# Official result (release README): 84.2 top-1.
_base_ = ['./_base_/overlock_in1k.py']

model = dict(
    backbone=dict(arch='t', drop_path_rate=0.15),   # scripts/train_t_model.sh --drop-path 0.15
    head=dict(in_channels=640, overview_channels=512))   # e3 + e3 // 4 and e3

crop_pct = 0.95   # the release's default_cfg for overlock_t
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=int(224 / crop_pct), edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
