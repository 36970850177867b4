# UperNet + OverLoCK-B, ADE20K 512x512, 160k iterations, 8 GPUs x 2 images.
# Official result (release README): 51.7 mIoU single scale.
_base_ = ['./_base_/upernet_overlock_160k_ade20k.py']

model = dict(
    backbone=dict(
        arch='b',
        drop_path_rate=0.5,   # release config
        init_cfg=dict(checkpoint='https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_b_in1k_224.pth')),
    # stage channels e0, e1, e2 + e3 // 4, e3 + e3 // 4 (Focus-Net outputs carry the context channels)
    decode_head=dict(in_channels=[80, 160, 528, 720]),
    auxiliary_head=dict(in_channels=528))
