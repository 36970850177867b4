"""ContMix and ContMixBlock as plug-in modules: shapes, gradients, registry, equality with the backbone's
Focus-Net block, and one-line errors."""
import pytest
import torch

from mmoverlock import ContMix, ContMixBlock, OverLoCK
from mmoverlock.models.backbones.overlock import SMK_SIZE
from mmoverlock.registry import MODELS


def _randomise_bn(module):
    """Non-trivial BN statistics so eval-mode outputs depend on them."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)


@pytest.mark.parametrize('hw', [(5, 6), (12, 16)])   # below kernel_size (small-map path) and above
def test_contmix_shapes_context_sizes(hw):
    mixer = ContMix(dim=16, ctx_dim=8, kernel_size=7, smk_size=3, num_groups=2, num_regions=4).eval()
    assert mixer.weight_key[0].output_size == 4 and mixer.weight_proj.in_channels == 16
    x = torch.randn(2, 16, *hw)
    for ctx_hw in [(3, 3), hw, (20, 9)]:   # any context size is resized to x's
        assert mixer(x, torch.randn(2, 8, *ctx_hw)).shape == x.shape
    self_mixer = ContMix(dim=16, ctx_dim=16, kernel_size=5, smk_size=3, num_groups=4).eval()
    assert self_mixer(x).shape == x.shape
    torch.testing.assert_close(self_mixer(x), self_mixer(x, x))   # self-context == x as the context


def test_contmix_block_shapes_and_modes():
    x = torch.randn(2, 16, 10, 12)
    block = ContMixBlock(16, 8, kernel_size=7, smk_size=3, num_groups=2, is_first=True).eval()
    out_x, out_h = block(x, torch.randn(2, 8, 5, 6))
    assert out_x.shape == (2, 16, 10, 12) and out_h.shape == (2, 8, 10, 12)
    last = ContMixBlock(16, 8, kernel_size=7, smk_size=3, num_groups=2, is_last=True).eval()
    assert last(x, torch.randn(2, 8, 10, 12), torch.randn(2, 8, 3, 4)).shape == (2, 24, 10, 12)
    # h_r defaults to h
    h = torch.randn(2, 8, 10, 12)
    torch.testing.assert_close(last(x, h), last(x, h, h))
    selfctx = ContMixBlock(16, 8, kernel_size=7, smk_size=3, num_groups=2, self_context=True).eval()
    out_x, out_h = selfctx(x)
    assert out_x.shape == x.shape and out_h.shape == (2, 8, 10, 12)
    torch.testing.assert_close(selfctx(x)[0], selfctx(x, selfctx.context_proj(x))[0])


def test_registry_builds_both():
    mixer = MODELS.build(dict(type='mmoverlock.ContMix', dim=8, ctx_dim=8, kernel_size=5, smk_size=3, num_groups=2))
    block = MODELS.build(dict(type='mmoverlock.ContMixBlock', dim=8, ctx_dim=4, kernel_size=5, smk_size=3,
                              num_groups=2, self_context=True))
    assert isinstance(mixer, ContMix) and isinstance(block, ContMixBlock)
    assert not any(k.startswith('context_proj') for k in ContMixBlock(8, 4, 5, 3, 2).state_dict())


@pytest.mark.parametrize('hw', [(4, 6), (11, 13)])
def test_gradients_reach_every_parameter(hw):
    block = ContMixBlock(16, 8, kernel_size=7, smk_size=3, num_groups=2, num_regions=3, self_context=True)
    x = torch.randn(2, 16, *hw, requires_grad=True)
    out_x, out_h = block(x)
    (out_x.square().mean() + out_h.square().mean()).backward()
    missing = [n for n, p in block.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert x.grad is not None and x.grad.abs().sum() > 0
    mixer = ContMix(16, 8, kernel_size=7, smk_size=3, num_groups=2)
    ctx = torch.randn(2, 8, 3, 3, requires_grad=True)
    mixer(torch.randn(2, 16, *hw), ctx).sum().backward()
    assert all(p.grad is not None for p in mixer.parameters()) and ctx.grad.abs().sum() > 0


def test_equals_backbone_block(fixture):
    """A standalone block configured like a Focus-Net block, loaded with its state dict, computes the same."""
    arch = fixture['arch']
    backbone = OverLoCK(arch)
    _randomise_bn(backbone)
    backbone.eval()
    ctx_dim = backbone.ctx_dim
    for j, (name, stage) in enumerate((('sub_blocks3', 2), ('sub_blocks4', 3))):
        for i, ref in enumerate(getattr(backbone, name)):
            block = ContMixBlock(arch['embed_dim'][stage], ctx_dim, kernel_size=arch['kernel_size'][stage],
                                 smk_size=SMK_SIZE, num_groups=2 * arch['sub_num_heads'][j],
                                 mlp_ratio=arch['sub_mlp_ratio'][j], is_first=ref.is_first,
                                 is_last=ref.is_last)
            block.load_state_dict(ref.state_dict(), strict=True)
            block.eval()
            size = (9, 11) if stage == 2 else (5, 6)   # stage 4: below kernel_size (small-map path)
            x = torch.randn(1, arch['embed_dim'][stage], *size)
            h, h_r = torch.randn(2, 1, ctx_dim, *size).unbind(0)
            with torch.no_grad():
                expected, got = ref(x, h, h_r), block(x, h, h_r)
            expected = expected if isinstance(expected, tuple) else (expected, )
            got = got if isinstance(got, tuple) else (got, )
            for e, g in zip(expected, got):
                torch.testing.assert_close(g, e, rtol=0, atol=0)


@pytest.mark.parametrize('kwargs, match', [
    (dict(dim=12, ctx_dim=8, num_groups=4), 'dim=12 must be divisible by 2 \\* num_groups = 8'),
    (dict(dim=16, ctx_dim=8, kernel_size=6), 'kernel_size=6 must be odd'),
    (dict(dim=16, ctx_dim=8, kernel_size=5, smk_size=7), 'smk_size=7 must be <= kernel_size=5'),
    (dict(dim=16, ctx_dim=0), 'ctx_dim=0 must be a positive integer'),
    (dict(dim=16, ctx_dim=8, num_regions=0), 'num_regions=0 must be a positive integer'),
    (dict(dim=16, ctx_dim=8, num_groups=2.0), 'num_groups=2.0 must be a positive integer'),
])
def test_bad_arguments(kwargs, match):
    for cls in (ContMix, ContMixBlock):
        with pytest.raises(ValueError, match=match):
            cls(**kwargs)
    with pytest.raises(ValueError, match='mlp_ratio=0 must be a positive number'):
        ContMixBlock(16, 8, mlp_ratio=0)


def test_bad_inputs():
    mixer = ContMix(16, 8, kernel_size=5, smk_size=3, num_groups=2)
    x = torch.randn(1, 16, 8, 8)
    with pytest.raises(ValueError, match='no context given and ctx_dim=8 != dim=16'):
        mixer(x)
    with pytest.raises(ValueError, match=r'context has shape \(1, 4, 8, 8\), expected \(B, 8, H, W\)'):
        mixer(x, torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r'x has shape \(1, 12, 8, 8\), expected \(B, 16, H, W\)'):
        mixer(torch.randn(1, 12, 8, 8), torch.randn(1, 8, 8, 8))
    with pytest.raises(ValueError, match='context batch 2 != x batch 1'):
        mixer(x, torch.randn(2, 8, 8, 8))
    block = ContMixBlock(16, 8, kernel_size=5, smk_size=3, num_groups=2)
    with pytest.raises(ValueError, match='no context h given; .*self_context=True'):
        block(x)
