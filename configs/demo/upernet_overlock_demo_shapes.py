# The demo segmentor: the real UperNet OverLoCK recipe (../seg/upernet_overlock_t_160k_ade20k.py), sized for a
# CPU and trained from scratch on the ADE-style label maps of tools/make_demo_data.py (0 background, 1-4 shapes).
# Overridden here: the data, the schedule, the image size, the backbone arch (the demo detector's small arch
# dict, no pretrained download, raw output maps as in the demo detector: from scratch the output LayerNorms
# stall learning, see cascade_overlock_demo_shapes.py; here too: the LN'd maps gave background only, measured in
# docs/demo.md) and the head widths that follow from it.
_base_ = ['../seg/upernet_overlock_t_160k_ade20k.py']

# ---------------------------------------------------------------- a CPU-sized OverLoCK (as the demo detector)
demo_arch = dict(depth=[1, 1, 2, 1], sub_depth=[2, 1], embed_dim=[32, 64, 128, 192], kernel_size=[7, 7, 7, 5],
                 mlp_ratio=4, sub_num_heads=[2, 4], sub_mlp_ratio=3)
ctx = demo_arch['embed_dim'][3] // 4
stage_channels = [demo_arch['embed_dim'][0], demo_arch['embed_dim'][1],
                  demo_arch['embed_dim'][2] + ctx, demo_arch['embed_dim'][3] + ctx]
classes = ('background', 'circle', 'square', 'triangle', 'star')
image_size = 160
crop_size = (image_size, image_size)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch=dict(_delete_=True, **demo_arch), layout='classification', drop_path_rate=0., init_cfg=None),
    decode_head=dict(in_channels=stage_channels, channels=64, num_classes=len(classes)),   # 512 in the recipe
    auxiliary_head=dict(in_channels=stage_channels[2], channels=32, num_classes=len(classes)))

# ---------------------------------------------------------------- data: data/demo (tools/make_demo_data.py)
# The ADE20K layout (images/*, annotations/* with .jpg / .png), but label 0 is a real class here (background),
# so reduce_zero_label is off.
data_root = 'data/demo/'
metainfo = dict(classes=classes, palette=[(0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48)])
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs')]
demo_dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo, img_suffix='.jpg',
                    seg_map_suffix='.png', reduce_zero_label=False)
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(demo_dataset, _delete_=True, pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/training', seg_map_path='annotations/training')))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(demo_dataset, _delete_=True, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation')))
test_dataloader = val_dataloader

# ---------------------------------------------------------------- schedule: minutes on a CPU
max_iters = 600
train_cfg = dict(type='mmoverlock.ResumableIterBasedTrainLoop', max_iters=max_iters, val_interval=200)
optim_wrapper = dict(optimizer=dict(lr=1e-3), clip_grad=dict(max_norm=10.))   # from scratch: 1e-3, not 6e-5
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters)]
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=200))
auto_scale_lr = dict(base_batch_size=8)
