# OverLoCK-B on ImageNet-1K in the deploy (re-parameterised) form, for the release's *_in1k_224_reparam.pth.
_base_ = ['./overlock_b_in1k.py']

model = dict(backbone=dict(deploy=True))
