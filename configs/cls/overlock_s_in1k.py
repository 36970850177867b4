# OverLoCK-S (Small) on ImageNet-1K, 224 px, 300 epochs, 8 GPUs x 256 images.
# Official result (release README): 84.8 top-1.
_base_ = ['../_base_/variants/overlock_s.py', './_base_/overlock_in1k.py']

variant = _base_.overlock_variant
model = dict(backbone=dict(arch=variant.arch, drop_path_rate=variant.drop_path.cls),
             head=dict(in_channels=variant.channels[3], overview_channels=variant.overview_channels))
test_pipeline = [dict(t, scale=int(224 / variant.crop_pct)) if t.type == 'ResizeEdge' else t
                 for t in _base_.test_pipeline]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
del variant
