# UperNet + OverLoCK-T, ADE20K 512x512, 160k iterations, 8 GPUs x 2 images.
# Official result (release README): 50.3 mIoU single scale.
_base_ = ['../_base_/variants/overlock_t.py', './_base_/upernet_overlock_160k_ade20k.py']

variant = _base_.overlock_variant
model = dict(backbone=dict(arch=variant.arch, drop_path_rate=variant.drop_path.seg,
                           init_cfg=dict(checkpoint=variant.checkpoint)),
             decode_head=dict(in_channels=variant.channels),
             auxiliary_head=dict(in_channels=variant.channels[2]))
del variant
