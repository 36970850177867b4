# OverLoCK-XT: the facts every task's config takes from here (the official release's values).
# The values equal mmoverlock/variants.py's (the one table of the variants' facts; tests/test_variants.py checks).
# The release trains OverLoCK-XT on ImageNet only (no COCO / ADE20K recipe): drop path for cls alone.
overlock_variant = dict(
    arch='xt',
    # the release's ImageNet-1K weights (the dense tasks start from them)
    checkpoint='https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_xt_in1k_224.pth',
    # the same weights re-parameterised (deploy form: backbone built with deploy=True)
    reparam_checkpoint='https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_xt_in1k_224_reparam.pth',
    # out_channels of stages 1-4 in the dense layouts: e0, e1, e2 + e3 // 4, e3 + e3 // 4
    channels=[56, 112, 340, 420],
    overview_channels=336,   # the Overview-Net map (e3), read by the ImageNet auxiliary head
    # stochastic depth per task: the release's train scripts and configs
    drop_path=dict(cls=0.1),
    crop_pct=0.925)  # ImageNet test crop (the release's default_cfg)
