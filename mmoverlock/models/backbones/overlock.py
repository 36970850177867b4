"""OverLoCK backbone (CVPR 2025): Base-Net, Overview-Net and Focus-Net in one module.

One implementation serves the three official layouts (``layout``); they differ in their output heads only:

================  ===================================================================================
layout            outputs
================  ===================================================================================
classification    raw maps (index 4 = the Overview-Net map, for the auxiliary head)
detection         LN2d-normed maps (``extra_norm``); the last one plus ``h_proj(extra_norm[4](overview))``
segmentation      LN2d-normed maps
================  ===================================================================================

In the dense layouts the *normed* stage-2 map also feeds stage 3 (as the release computes it).
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from torch.nn.modules.batchnorm import _BatchNorm

from ...checkpoint.load import load_overlock_checkpoint
from ...checkpoint.stem import adapt_input_conv
from ...registry import MODELS
from ...variants import ARCH_KEYS, VARIANTS
from ..contmix import ContMixBlock
from ..layers import (GELU, GRN, DilatedReparamBlock, DropPath, LayerNorm2d, LayerScale, PointwiseConv2d,
                      ResDWConv, SEModule, set_depthwise_choice)

#: The official variants (the release's ``overlock_{xt,t,s,b}`` model definitions), by short and long name, from
#: :mod:`mmoverlock.variants`.
arch_settings: Dict[str, dict] = {v.name: v.arch for v in VARIANTS.values()}
arch_settings.update({v.alias: arch_settings[v.name] for v in VARIANTS.values()})

#: layout -> (LN2d on the outputs, Overview-Net fusion into the last map); see the module docstring
LAYOUTS: Dict[str, tuple] = {
    'classification': (False, False),
    'detection': (True, True),
    'segmentation': (True, False),
}
#: the stem's first conv, the one layer that reads the image (its weight adapts to ``in_channels`` on loading)
STEM_CONV = 'patch_embed1.0.weight'
SMK_SIZE = 5                       # small dynamic kernel
LS_INIT = (None, None, 1., 1.)     # LayerScale init of the Base/Overview-Net blocks, per stage
NUM_OUTPUTS = 5                    # out indices 0-3: stages; 4: the Overview-Net map

#: The one stage table: the backbone's parts in execution order as (stage, modules that feed the stage's first
#: block, the stage's block list). Layer-wise lr decay derives its layers from it -- mmpretrain's and mmdet's
#: constructors through :meth:`OverLoCK.get_layer_depth` / :meth:`OverLoCK.get_stage_depth`, timm's through
#: ``mmoverlock.timm``'s ``group_matcher``: the stem first, then one layer per block (the feeding modules join
#: the first block of their stage), the output heads last.
STAGE_TABLE: Tuple[Tuple[str, Tuple[str, ...], Optional[str]], ...] = (
    ('stem', ('patch_embed1', ), None),
    ('base1', (), 'blocks1'),
    ('base2', ('patch_embed2', ), 'blocks2'),
    ('base3', ('patch_embed3', ), 'blocks3'),
    ('overview', ('patch_embed4', ), 'blocks4'),
    ('focus3', ('high_level_proj', ), 'sub_blocks3'),
    ('focus4', ('patch_embedx', ), 'sub_blocks4'),
    ('heads', ('extra_norm', 'h_proj'), None),
)


def _per_stage(value, n: int, name: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ValueError(f'OverLoCK arch: {name}={value} must be a number or a list of {n} values')
    return values


def resolve_arch(arch: Union[str, dict]) -> dict:
    """An arch name ('xt', 't', 's', 'b') or a dict with all of ARCH_KEYS -> a normalised dict."""
    if isinstance(arch, str):
        if arch.lower() not in arch_settings:
            raise ValueError(f"OverLoCK: unknown arch '{arch}'; valid: {sorted(set(arch_settings))} "
                             f"or a dict with keys {list(ARCH_KEYS)}")
        arch = arch_settings[arch.lower()]
    elif not isinstance(arch, dict):
        raise TypeError(f'OverLoCK: arch must be a str or a dict, got {type(arch).__name__}')
    missing = [k for k in ARCH_KEYS if k not in arch]
    if missing:
        raise ValueError(f'OverLoCK: arch dict lacks {missing}; it needs all of {list(ARCH_KEYS)}')
    arch = dict(arch)
    arch['depth'] = _per_stage(arch['depth'], 4, 'depth')
    arch['embed_dim'] = _per_stage(arch['embed_dim'], 4, 'embed_dim')
    arch['kernel_size'] = _per_stage(arch['kernel_size'], 4, 'kernel_size')
    arch['mlp_ratio'] = _per_stage(arch['mlp_ratio'], 4, 'mlp_ratio')
    arch['sub_depth'] = _per_stage(arch['sub_depth'], 2, 'sub_depth')
    arch['sub_num_heads'] = _per_stage(arch['sub_num_heads'], 2, 'sub_num_heads')
    arch['sub_mlp_ratio'] = _per_stage(arch['sub_mlp_ratio'], 2, 'sub_mlp_ratio')
    return arch


class RepConvBlock(nn.Module):
    """Base-Net / Overview-Net block: ``x = dwconv(x); x = ls(x) + proj(x)``. (B, C, H, W) -> same."""

    def __init__(self, dim: int, kernel_size: int, mlp_ratio: float = 4., ls_init_value: Optional[float] = None,
                 drop_path: float = 0., deploy: bool = False):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.dwconv = ResDWConv(dim, 3)
        self.proj = nn.Sequential(
            LayerNorm2d(dim),
            DilatedReparamBlock(dim, kernel_size, deploy=deploy),
            nn.BatchNorm2d(dim),
            SEModule(dim),
            PointwiseConv2d(dim, hidden),
            GELU(),
            ResDWConv(hidden, 3),
            GRN(hidden),
            PointwiseConv2d(hidden, dim),
            DropPath(drop_path) if drop_path > 0 else nn.Identity(),
        )
        self.ls = LayerScale(dim, ls_init_value) if ls_init_value is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dwconv(x)
        return self.ls(x) + self.proj(x)


def stem(in_chans: int, dim: int) -> nn.Sequential:
    """``patch_embed1``: four 3x3 convs (strides 2, 1, 2, 1) with BN/GELU; (B, 3, H, W) -> (B, dim, H/4, W/4)."""
    half = dim // 2
    return nn.Sequential(
        nn.Conv2d(in_chans, half, 3, 2, 1, bias=False), nn.BatchNorm2d(half), GELU(),
        nn.Conv2d(half, half, 3, 1, 1, bias=False), nn.BatchNorm2d(half), GELU(),
        nn.Conv2d(half, dim, 3, 2, 1, bias=False), nn.BatchNorm2d(dim), GELU(),
        nn.Conv2d(dim, dim, 3, 1, 1, bias=False), nn.BatchNorm2d(dim))


def downsample(in_dim: int, out_dim: int) -> nn.Sequential:
    """3x3 stride-2 conv + BN; (B, in_dim, H, W) -> (B, out_dim, ceil(H/2), ceil(W/2))."""
    return nn.Sequential(nn.Conv2d(in_dim, out_dim, 3, 2, 1, bias=False), nn.BatchNorm2d(out_dim))


@MODELS.register_module()
class OverLoCK(BaseModule):
    """OverLoCK backbone.

    Submodules keep the official names (checkpoint keys):

    ========================  =======================================================================
    ``patch_embed1``          stem: four 3x3 convs to stride 4
    ``patch_embed2/3/4``      3x3 stride-2 downsamplers into stages 2, 3 and 4 (Overview-Net)
    ``blocks1..3``            Base-Net blocks (:class:`RepConvBlock`), stages 1-3
    ``blocks4``               Overview-Net blocks, stride 32
    ``high_level_proj``       1x1 conv: Overview-Net map -> the context (e3 // 4 channels)
    ``sub_blocks3/4``         Focus-Net blocks (:class:`ContMixBlock`) at strides 16 and 32
    ``patch_embedx.x_proj``   downsampler of the Focus-Net features between sub_blocks3 and 4
    ``patch_embedx.h_proj``   downsampler of the Focus-Net context between sub_blocks3 and 4
    ``extra_norm.0..3``       LN2d on the four outputs (dense layouts)
    ``extra_norm.4``          LN2d on the Overview-Net map before its fusion (detection layout)
    ``h_proj``                Overview-Net fusion: 1x1 conv + LayerScale, added to the last output
                              (detection layout; not ``patch_embedx.h_proj``)
    ========================  =======================================================================

    Args:
        arch: 'xt' | 't' | 's' | 'b' (or 'x-tiny', 'tiny', 'small', 'base'), or a dict with
            ``depth, sub_depth, embed_dim, kernel_size, mlp_ratio, sub_num_heads, sub_mlp_ratio``.
        out_indices: which maps to return: 0-3 the four stages (strides 4, 8, 16, 32; channels
            ``e0, e1, e2 + c, e3 + c`` with c = e3 // 4), 4 the Overview-Net map (stride 32, e3 channels).
        layout: 'classification' | 'detection' | 'segmentation' (module docstring): which output heads
            the model has. The released ImageNet checkpoints are 'classification'.
        drop_path_rate: stochastic depth, linear over all blocks (stages 1-4, then Focus-Net 3, 4).
        frozen_stages: -1 none; 0 the stem; i in 1..4 the stem and stages 1..i (stage 3 = Base-Net and
            Focus-Net stage 3; stage 4 = Overview-Net, Focus-Net stage 4 and the output heads).
        norm_eval: keep every BatchNorm in eval mode while training.
        with_cp: gradient checkpointing per block.
        deploy: build the re-parameterised (inference) form directly.
        in_channels: image channels. Weights of a 3-channel stem (the release's) are adapted on loading as timm's
            ``adapt_input_conv`` does (:func:`mmoverlock.checkpoint.adapt_input_conv`).
        depthwise_choice: how the depthwise convs pick their kernels on CUDA (:func:`mmoverlock.ops.depthwise_conv2d`):
            'auto' (default; PyTorch's conv, the Triton kernels or the FFT weight gradient, whichever measured
            fastest on first use; PyTorch's conv in deterministic runs), 'torch' or 'triton'. CPU ignores it.
        init_cfg: e.g. ``dict(type='Pretrained', checkpoint=FILE_OR_URL, prefix='backbone.')``; official
            ImageNet checkpoints load without a key map (see :mod:`mmoverlock.checkpoint`).
    """

    #: TorchScript: mmengine's ``is_init`` property is Python-side bookkeeping
    __jit_unused_properties__ = ['is_init']

    def __init__(self, arch: Union[str, dict] = 't', out_indices: Sequence[int] = (0, 1, 2, 3),
                 layout: str = 'detection', drop_path_rate: float = 0.,
                 frozen_stages: int = -1, norm_eval: bool = False, with_cp: bool = False, deploy: bool = False,
                 in_channels: int = 3, depthwise_choice: str = 'auto', init_cfg: Optional[dict] = None):
        super().__init__(init_cfg)
        self.arch = arch = resolve_arch(arch)
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        bad = [i for i in out_indices if not 0 <= int(i) < NUM_OUTPUTS]
        if bad or not out_indices:
            raise ValueError(f'OverLoCK: out_indices={tuple(out_indices)} out of range; each must be in '
                             f'0..3 (stages) or 4 (Overview-Net map)')
        repeated = sorted({int(i) for i in out_indices if list(out_indices).count(i) > 1})
        if repeated:
            raise ValueError(f'OverLoCK: out_indices={tuple(out_indices)} repeats {repeated}; name each map once, '
                             f'e.g. out_indices={tuple(sorted({int(i) for i in out_indices}))}')
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f'OverLoCK: frozen_stages={frozen_stages} out of range; expected -1 (none), '
                             f'0 (stem) or 1..4')
        if layout not in LAYOUTS:
            raise ValueError(f"OverLoCK: layout='{layout}' is not one of {list(LAYOUTS)}")
        self.out_indices = tuple(int(i) for i in out_indices)
        self.layout = layout
        self.normed_outputs, self.fuses_overview = LAYOUTS[layout]
        self.frozen_stages, self.norm_eval, self.with_cp = frozen_stages, norm_eval, with_cp

        e = arch['embed_dim']
        ctx_dim = e[3] // 4
        self.ctx_dim = ctx_dim
        ks = arch['kernel_size']
        depth, sub_depth = arch['depth'], arch['sub_depth']
        dpr = torch.linspace(0, drop_path_rate, sum(depth) + sum(sub_depth), device='cpu').tolist()
        dpr_iter = iter(dpr)

        self.patch_embed1 = stem(in_channels, e[0])
        self.patch_embed2 = downsample(e[0], e[1])
        self.patch_embed3 = downsample(e[1], e[2])
        self.patch_embed4 = downsample(e[2], e[3])
        for i in range(4):
            self.add_module(f'blocks{i + 1}', nn.ModuleList(
                RepConvBlock(e[i], ks[i], arch['mlp_ratio'][i], LS_INIT[i], next(dpr_iter), deploy)
                for _ in range(depth[i])))

        self.high_level_proj = nn.Conv2d(e[3], ctx_dim, 1)
        self.patch_embedx = nn.Module()
        self.patch_embedx.x_proj = downsample(e[2], e[3])
        self.patch_embedx.h_proj = downsample(ctx_dim, ctx_dim)
        for j, stage in enumerate((2, 3)):
            n = sub_depth[j]
            self.add_module(f'sub_blocks{stage + 1}', nn.ModuleList(
                ContMixBlock(e[stage], ctx_dim, kernel_size=ks[stage], smk_size=SMK_SIZE,
                             num_groups=2 * arch['sub_num_heads'][j], mlp_ratio=arch['sub_mlp_ratio'][j],
                             ls_init_value=1., drop_path=next(dpr_iter),
                             is_first=(j == 0 and i == 0), is_last=(j == 1 and i == n - 1), deploy=deploy)
                for i in range(n)))

        self.out_channels: List[int] = [
            [e[0], e[1], e[2] + ctx_dim, e[3] + ctx_dim, e[3]][i] for i in self.out_indices]
        all_channels = [e[0], e[1], e[2] + ctx_dim, e[3] + ctx_dim]
        if self.normed_outputs:
            self.extra_norm = nn.ModuleList(LayerNorm2d(c) for c in all_channels)
            if self.fuses_overview:
                self.extra_norm.append(LayerNorm2d(e[3]))
                self.h_proj = nn.Sequential(nn.Conv2d(e[3], e[3] + ctx_dim, 1), LayerScale(e[3] + ctx_dim, 1e-5))
        set_depthwise_choice(self, depthwise_choice)
        self._freeze_stages()
        self._register_load_state_dict_pre_hook(self._adapt_stem)

    def _adapt_stem(self, state_dict, prefix, *args) -> None:
        """load_state_dict pre-hook: a stem weight for another number of image channels (the release's 3) is
        adapted to ``in_channels`` in place (:func:`~mmoverlock.checkpoint.adapt_input_conv`)."""
        key = prefix + STEM_CONV
        own = self.patch_embed1[0].weight
        if key in state_dict and state_dict[key].dim() == 4 and state_dict[key].shape[1] != own.shape[1]:
            state_dict[key] = adapt_input_conv(own.shape[1], state_dict[key])

    # ------------------------------------------------------------------ layer-wise lr decay
    def _stage_of(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """(stage index in STAGE_TABLE, block index in the stage's list; 0 for the modules feeding it)."""
        if not param_name.startswith(prefix):
            return len(STAGE_TABLE) - 1, 0          # the model's heads
        top, _, rest = param_name[len(prefix):].partition('.')
        for index, (_, feeders, blocks) in enumerate(STAGE_TABLE):
            if top in feeders:
                return index, 0
            if top == blocks:
                return index, int(rest.split('.')[0])
        return len(STAGE_TABLE) - 1, 0

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """mmpretrain's layer-decay contract: (layer id, number of layers) of a parameter of the model, from
        STAGE_TABLE: the stem 0, then one layer per block in execution order (Base-Net, Overview-Net,
        Focus-Net; downsamplers and projections join the first block of the stage they feed), the output
        heads and every parameter outside ``prefix`` (the model's heads) last. OverLoCK-T: 32 layers."""
        stage, block = self._stage_of(param_name, prefix)
        counts = [len(getattr(self, blocks)) if blocks else 0 for _, _, blocks in STAGE_TABLE]
        num_layers = sum(counts) + 2
        if stage == 0:
            return 0, num_layers
        if stage == len(STAGE_TABLE) - 1:
            return num_layers - 1, num_layers
        return 1 + sum(counts[:stage]) + block, num_layers

    def no_weight_decay(self) -> List[str]:
        """Parameter names (of this module) that layer-decay constructors keep out of weight decay beyond the
        1-D ones: ContMix's relative position bias tables (as Swin's), and the per-channel scales and shifts kept
        in 4-D tensors -- LayerScale weights (C, 1, 1, 1) and GRN's gamma / beta (1, C, 1, 1), which are 1-D (so
        not decayed) in ConvNeXt(-V2)."""
        names = []
        for module_name, module in self.named_modules():
            if isinstance(module, (GRN, LayerScale, ContMixBlock)):
                own = {GRN: ('gamma', 'beta'), LayerScale: ('weight', ), ContMixBlock: ('rpb1', 'rpb2')}[type(module)]
                names += [f'{module_name}.{p}' for p in own]
        return names

    def get_stage_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """(stage id, number of stages) of a parameter, from STAGE_TABLE: stem 0, Base-Net 1-3, Overview-Net 4,
        Focus-Net 5-6, heads 7 (mmdet's ``decay_type='stage_wise'``)."""
        return self._stage_of(param_name, prefix)[0], len(STAGE_TABLE)

    # ------------------------------------------------------------------ init, freezing, deploy
    def init_weights(self) -> None:
        """The official init (trunc-normal 0.02 convs, zero biases), then a Pretrained ``init_cfg`` through
        :func:`load_overlock_checkpoint` (or any other mmengine ``init_cfg``)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            # keys the checkpoint lacks (e.g. extra_norm, h_proj of an ImageNet one) keep the init above
            load_overlock_checkpoint(self, self.init_cfg['checkpoint'], prefix=self.init_cfg.get('prefix'),
                                     logger=MMLogger.get_current_instance())
        elif self.init_cfg:
            super().init_weights()   # any other mmengine init_cfg
        self._is_init = True

    def stage_modules(self, stage: int) -> List[nn.Module]:
        """Modules belonging to ``stage`` (0 = stem, 1-4) for freezing."""
        norms = list(getattr(self, 'extra_norm', []))
        if stage == 0:
            return [self.patch_embed1]
        if stage == 1:
            return [self.blocks1] + norms[0:1]
        if stage == 2:
            return [self.patch_embed2, self.blocks2] + norms[1:2]
        if stage == 3:
            return [self.patch_embed3, self.blocks3, self.sub_blocks3] + norms[2:3]
        return [self.patch_embed4, self.blocks4, self.high_level_proj, self.patch_embedx, self.sub_blocks4,
                getattr(self, 'h_proj', nn.Identity())] + norms[3:]

    def _freeze_stages(self) -> None:
        for stage in range(self.frozen_stages + 1):
            for module in self.stage_modules(stage):
                module.eval()
                for p in module.parameters():
                    p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def switch_to_deploy(self) -> None:
        """Re-parameterise every DilatedReparamBlock in place (mmpretrain's convention)."""
        for m in self.modules():
            if isinstance(m, DilatedReparamBlock):
                m.switch_to_deploy()

    # ------------------------------------------------------------------ forward
    def _run(self, block: nn.Module, *args):
        if self.with_cp and self.training and any(a.requires_grad for a in args if a is not None):
            return cp.checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """(B, in_channels, H, W) -> the five maps [s1, s2, s3, s4, overview], outputs norms applied.

        TorchScript compiles this (gradient checkpointing is eager-only); the output norms and the fusion
        are there in the dense layouts only (static ``hasattr`` checks)."""
        x = self.patch_embed1(x)
        for blk in self.blocks1:
            if torch.jit.is_scripting():
                x = blk(x)
            else:
                x = self._run(blk, x)
        out1 = x
        if hasattr(self, 'extra_norm'):
            out1 = self.extra_norm[0](x)
        x = self.patch_embed2(x)
        for blk in self.blocks2:
            if torch.jit.is_scripting():
                x = blk(x)
            else:
                x = self._run(blk, x)
        if hasattr(self, 'extra_norm'):
            x = self.extra_norm[1](x)     # the dense layouts feed the *normed* stage-2 map on
        out2 = x
        x = self.patch_embed3(x)
        for blk in self.blocks3:
            if torch.jit.is_scripting():
                x = blk(x)
            else:
                x = self._run(blk, x)

        # Overview-Net: a coarse look at the whole image.
        ctx = self.patch_embed4(x)
        for blk in self.blocks4:
            if torch.jit.is_scripting():
                ctx = blk(ctx)
            else:
                ctx = self._run(blk, ctx)

        # Focus-Net: look closely, guided by the overview.
        ctx_ori = self.high_level_proj(ctx)
        ctx_up = F.interpolate(ctx_ori, size=x.shape[-2:], mode='bilinear', align_corners=False)
        h = ctx_up
        for blk in self.sub_blocks3:
            if torch.jit.is_scripting():
                out = blk(x, h, ctx_up)
            else:
                out = self._run(blk, x, h, ctx_up)
            if isinstance(out, tuple):
                x, h = out
            else:
                x = out
        out3 = torch.cat([x, h], dim=1)
        if hasattr(self, 'extra_norm'):
            out3 = self.extra_norm[2](out3)
        x = self.patch_embedx.x_proj(x)
        h = self.patch_embedx.h_proj(h)
        for blk in self.sub_blocks4:
            if torch.jit.is_scripting():
                out = blk(x, h, ctx_ori)
            else:
                out = self._run(blk, x, h, ctx_ori)
            if isinstance(out, tuple):      # (x, h); the last block returns the whole map
                x, h = out
            else:
                x = out
        out4 = x
        if hasattr(self, 'extra_norm'):
            out4 = self.extra_norm[3](x)
        if hasattr(self, 'h_proj'):
            out4 = out4 + self.h_proj(self.extra_norm[4](ctx))
        return [out1, out2, out3, out4, ctx]

    @torch.jit.unused
    def forward(self, x: torch.Tensor) -> tuple:
        """(B, in_channels, H, W) -> tuple of the maps named by ``out_indices``. (TorchScript cannot type a
        tuple of as many maps as ``out_indices`` names: script :meth:`forward_features`.)"""
        outs = self.forward_features(x)
        return tuple(outs[i] for i in self.out_indices)
