# OverLoCK-B: the facts every task's config takes from here (the official release's values).
# The values equal mmoverlock/variants.py's (the one table of the variants' facts; tests/test_variants.py checks).
overlock_variant = dict(
    arch='b',
    # the release's ImageNet-1K weights (the dense tasks start from them)
    checkpoint='https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_b_in1k_224.pth',
    # the same weights re-parameterised (deploy form: backbone built with deploy=True)
    reparam_checkpoint='https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_b_in1k_224_reparam.pth',
    # out_channels of stages 1-4 in the dense layouts: e0, e1, e2 + e3 // 4, e3 + e3 // 4
    channels=[80, 160, 528, 720],
    overview_channels=576,   # the Overview-Net map (e3), read by the ImageNet auxiliary head
    # stochastic depth per task: the release's train scripts and configs
    drop_path=dict(cls=0.5, det=0.6, seg=0.5),
    crop_pct=0.975)  # ImageNet test crop (the release's default_cfg)
