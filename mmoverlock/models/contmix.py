"""ContMix: context-mixing dynamic kernels, and the block built on it (the official ``DynamicConvBlock``).

One formulation serves eager runs, ONNX export and FLOP counting: the two shape-dependent steps (fitting a
map smaller than the kernel, pooling the context to region centres) are the helpers :func:`fit_to_kernel`
and :func:`pool_regions`, which take their branch-free, dynamic-size form while exporting
(:func:`mmoverlock.ops.is_exporting`), and the aggregation is the registered op ``mmoverlock::na2d_av``.
"""
import contextlib
from functools import lru_cache
from typing import List, Optional, Tuple, Union

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from ..ops import na2d_av_channels_first
from ..ops.tracing import is_exporting, is_fixed_size_export, is_tracing
from ..registry import MODELS
from ..utils.compat import static_int
from .layers import (GELU, GRN, DepthwiseConv2d, DilatedReparamBlock, DropPath, LayerNorm2d, LayerScale,
                     PointwiseConv2d, ResDWConv, SEModule)

NUM_REGIONS = 7  # default: the context is pooled to 7 x 7 = 49 region centres (official)


def _check_positive_int(name: str, value, owner: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'{owner}: {name}={value!r} must be a positive integer')


def _check_contmix_args(dim, ctx_dim, kernel_size, smk_size, num_groups, num_regions, owner: str) -> None:
    """One-line errors for arguments ContMix cannot work with."""
    for name, value in (('dim', dim), ('ctx_dim', ctx_dim), ('kernel_size', kernel_size),
                        ('smk_size', smk_size), ('num_groups', num_groups), ('num_regions', num_regions)):
        _check_positive_int(name, value, owner)
    for name, value in (('kernel_size', kernel_size), ('smk_size', smk_size)):
        if value % 2 != 1:
            raise ValueError(f'{owner}: {name}={value} must be odd (a centred window)')
    if smk_size > kernel_size:
        raise ValueError(f'{owner}: smk_size={smk_size} must be <= kernel_size={kernel_size} '
                         f'(maps are resized to fit the large kernel only)')
    if dim % (2 * num_groups):
        raise ValueError(f'{owner}: dim={dim} must be divisible by 2 * num_groups = {2 * num_groups}')


def relative_offsets(length: int, kernel_size: int, device: torch.device) -> torch.Tensor:
    """(k, L) index into the 2k-1 relative offsets along one axis: key - position + k - 1 of every (tap,
    position) of the clamped windows (NATTEN's: a window starts at clamp(i - k // 2, 0, L - k))."""
    pos = torch.arange(length, device=device)
    start = (pos - kernel_size // 2).clamp(0, length - kernel_size)
    return start[None, :] + torch.arange(kernel_size, device=device)[:, None] - pos[None, :] + kernel_size - 1


def rpb_index(height: int, width: int, kernel_size: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Index of each (tap, pixel) into a (2k-1, 2k-1) relative position table: rows (k,1,H,1), cols (1,k,1,W)."""
    rows = relative_offsets(height, kernel_size, device)
    cols = relative_offsets(width, kernel_size, device)
    return rows[:, None, :, None], cols[None, :, None, :]


@lru_cache(maxsize=256)
def _flat_rpb_index(height: int, width: int, kernel_size: int, device: torch.device) -> torch.Tensor:
    """:func:`rpb_index` as one flat index into the flattened (2k-1)^2 table: (k*k*H*W,) int64."""
    rows, cols = rpb_index(height, width, kernel_size, device)
    return (rows * (2 * kernel_size - 1) + cols).flatten()


def relative_position_bias(rpb: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Gather a (G, 2k-1, 2k-1) table into the bias of every clamped window: (G, k*k, H, W)."""
    kernel_size = (rpb.shape[-1] + 1) // 2
    if not torch.jit.is_scripting():
        if not is_tracing():
            # one index_select with a cached flat index: ~10x faster on CPU than the 2-d advanced index below
            # (1.3 against 0.11 ms for G8 k13 14x14), and its backward an index_add
            index = _flat_rpb_index(height, width, kernel_size, rpb.device)
            return rpb.flatten(1).index_select(1, index).view(rpb.shape[0], kernel_size * kernel_size, height,
                                                              width)
    # scripted, or traced (sizes may be traced tensors: recorded, not cached)
    rows, cols = rpb_index(height, width, kernel_size, rpb.device)
    return rpb[:, rows, cols].flatten(1, 2)


def _pool_matrix(in_size, out_size, like: torch.Tensor) -> torch.Tensor:
    """(out, in) averaging matrix of ``adaptive_avg_pool`` along one axis: bin i averages
    [floor(i * in / out), ceil((i + 1) * in / out)). Sizes may be ints or traced 0-d tensors."""
    i = torch.arange(out_size, device=like.device)
    start = torch.div(i * in_size, out_size, rounding_mode='floor')
    end = torch.div((i + 1) * in_size + out_size - 1, out_size, rounding_mode='floor')
    pos = torch.arange(in_size, device=like.device)
    mask = ((pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])).to(like.dtype)
    return mask / mask.sum(1, keepdim=True)


def adaptive_avg_pool2d_traceable(x: torch.Tensor, size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d`` as two matmuls with averaging matrices, so that it exports to ONNX with
    dynamic input and output sizes. x (B, C, H, W) -> (B, C, *size)."""
    rows = _pool_matrix(x.shape[-2], size[0], x)
    cols = _pool_matrix(x.shape[-1], size[1], x)
    return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


def fit_size_traceable(height, width, kernel_size: int):
    """:func:`small_map_size` without a Python branch: the size the map is resized to, (height, width)
    itself when it fits. Sizes are ints or traced 0-d int64 tensors -> two 0-d int64 tensors."""
    h, w = torch.as_tensor(height), torch.as_tensor(width)
    k = torch.as_tensor(kernel_size)
    # float64 like Python's int(k / h * w)
    long_h = torch.floor(k.double() / w.double() * h.double()).long()
    long_w = torch.floor(k.double() / h.double() * w.double()).long()
    fits = torch.minimum(h, w) >= k
    new_h = torch.where(fits, h, torch.where(h < w, k, long_h))
    new_w = torch.where(fits, w, torch.where(h < w, long_w, k))
    # explicit 0-d: the ONNX exporter otherwise loses the rank and emits an empty Resize 'sizes'
    return new_h.reshape(()), new_w.reshape(())


def small_map_size(height: int, width: int, kernel_size: int) -> Optional[Tuple[int, int]]:
    """The size a map smaller than the kernel is resized to (official rule), or None if it fits."""
    if min(height, width) >= kernel_size:
        return None
    if height < width:
        return kernel_size, int(kernel_size / height * width)
    return int(kernel_size / width * height), kernel_size


def fit_to_kernel(maps: List[torch.Tensor], kernel_size: int
                  ) -> Tuple[List[torch.Tensor], Optional[Tuple[int, int]]]:
    """Resize (bilinear) maps smaller than the kernel to :func:`small_map_size`; the size to pool the result
    back to, or None when they fit. While exporting, always resize (an identity when the map fits) to the
    size :func:`fit_size_traceable` computes, so one graph is right for every input size -- except in an export
    of one map size (:func:`mmoverlock.ops.fixed_size_export`), which takes the eager rule.
    maps: list of (B, C_i, H, W) -> (list of resized maps, (H, W) or None)."""
    h, w = maps[0].shape[-2], maps[0].shape[-1]
    if torch.jit.is_scripting():
        size = small_map_size(h, w, kernel_size)
    elif is_exporting() and not is_fixed_size_export():
        size = fit_size_traceable(h, w, kernel_size)
    else:
        size = small_map_size(static_int(h), static_int(w), kernel_size)
    if size is None:
        return maps, None
    resized = F.interpolate(torch.cat(maps, 1), size=[size[0], size[1]], mode='bilinear', align_corners=False)
    return list(resized.split([m.shape[1] for m in maps], dim=1)), (h, w)


def pool_back(x: torch.Tensor, size: Optional[Tuple[int, int]]) -> torch.Tensor:
    """Undo :func:`fit_to_kernel` by adaptive average pooling to ``size`` (a no-op for None)."""
    if size is None:
        return x
    if not torch.jit.is_scripting():
        if is_exporting():
            return adaptive_avg_pool2d_traceable(x, size)
    return F.adaptive_avg_pool2d(x, [size[0], size[1]])


def pool_regions(context: torch.Tensor, num_regions: int) -> torch.Tensor:
    """Average-pool a context map to R x R region centres: (B, C, H, W) -> (B, C, R, R). (ONNX opset 17 has
    no adaptive pooling of a dynamic map: exported as two averaging matmuls.)"""
    if not torch.jit.is_scripting():
        if is_exporting():
            return adaptive_avg_pool2d_traceable(context, (num_regions, num_regions))
    return F.adaptive_avg_pool2d(context, [num_regions, num_regions])


def contmix_kernels(query: torch.Tensor, key: torch.Tensor, proj_weight: torch.Tensor,
                    proj_bias: Optional[torch.Tensor],
                    rpb_small: torch.Tensor, rpb_large: torch.Tensor, scale: float, num_groups: int
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """ContMix's dynamic kernels from the projected queries and keys.

    query (B, dim // 2, H, W), key (B, dim // 2, R, R), ``weight_proj``'s weight (T, R*R, 1, 1) and bias (T,)
    or None (T = K*K + S*S taps), position bias tables (G, 2S-1, 2S-1) and (G, 2K-1, 2K-1) -> small (B, G, S*S, H, W)
    and large (B, G, K*K, H, W) kernels, softmax-normalised over taps, in query's dtype.
    """
    b, _, h, w = query.shape
    g = num_groups
    dtype = query.dtype
    # The affinity (a sum of d products) overflows fp16 for activations of a few hundred, so under fp16 it and
    # the softmax below run in fp32; fp64 stays fp64. bf16 has fp32's range: on CPU it stays bf16 (no casts of
    # the (B, G, T, HW) affinities), the matmuls and the softmax accumulating in fp32 inside their kernels.
    bf16_cpu = dtype == torch.bfloat16 and query.device.type == 'cpu'
    acc = dtype if bf16_cpu else torch.promote_types(dtype, torch.float32)
    query = (query.to(acc) * scale).reshape(b, g, -1, h * w)                          # (B, G, d, HW)
    key = key.to(acc).reshape(b, g, -1, key.shape[-2] * key.shape[-1])                # (B, G, d, R*R)
    # weight_proj (a 1x1 conv over the R*R region channels) folded into the keys:
    # W @ (key^T @ query) == (W @ key^T) @ query, which is ~3x fewer multiply-adds.
    if torch.jit.is_scripting():
        kernels = _folded_affinity(query, key, proj_weight.to(acc).flatten(1), proj_bias, acc)
    else:
        # (autocast exists on CPU and CUDA; other devices, e.g. 'meta', have none to turn off)
        off = query.device.type in ('cpu', 'cuda')
        with torch.autocast(device_type=query.device.type, enabled=False) if off else contextlib.nullcontext():
            kernels = _folded_affinity(query, key, proj_weight.to(acc).flatten(1), proj_bias, acc)
    kernels = kernels.view(b, g, -1, h, w)
    smk, k = (rpb_small.shape[-1] + 1) // 2, (rpb_large.shape[-1] + 1) // 2
    small, large = kernels.split([smk * smk, k * k], dim=2)
    # Softmax in fp32 under fp16 (bias + exp overflow there), in bf16 on a bf16 CPU run (see above).
    # (the tables are gathered in their own dtype, then cast: index_select of bf16 is 5x slower than of fp32)
    small = softmax_over_taps(small + relative_position_bias(rpb_small, h, w).to(acc))
    large = softmax_over_taps(large + relative_position_bias(rpb_large, h, w).to(acc))
    return small.to(dtype), large.to(dtype)


def softmax_over_taps(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the taps of (B, G, T, H, W) kernel logits (dim 2). Exported with the taps moved last:
    ONNX Runtime's CPU Softmax over a middle axis took 10.1 ms for (4, 8, 169, 14, 14) against 2.2 ms for
    Transpose + Softmax over the last axis + Transpose (eager PyTorch: 1.7 ms either way)."""
    if not torch.jit.is_scripting():
        if is_exporting():
            b, g, t, h, w = logits.shape
            taps_last = logits.flatten(3).transpose(2, 3)                       # (B, G, HW, T)
            return taps_last.softmax(dim=-1).transpose(2, 3).reshape(b, g, t, h, w)
    return logits.softmax(dim=2)


def _folded_affinity(query: torch.Tensor, key: torch.Tensor, proj_weight: torch.Tensor,
                     proj_bias: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """(proj_weight @ key^T) @ query + bias: query (B, G, d, HW), key (B, G, d, R*R), proj_weight (T, R*R),
    proj_bias (T,) or None -> (B, G, T, HW); the bias in ``dtype``."""
    if not torch.jit.is_scripting():
        if is_tracing():
            # the broadcast made explicit, so that jit-trace FLOP counters (mmengine's matmul rule ignores
            # broadcast batch dims) count the B*G matmuls
            proj_weight = proj_weight.expand(key.shape[0], key.shape[1], -1, -1)
    kernels = torch.matmul(torch.matmul(proj_weight, key.transpose(-1, -2)), query)        # (B, G, T, HW)
    if proj_bias is not None:
        kernels = kernels + proj_bias.to(dtype).view(-1, 1)
    return kernels


def aggregate_halves(x: torch.Tensor, small: torch.Tensor, large: torch.Tensor, smk_size: int,
                     kernel_size: int) -> torch.Tensor:
    """x (B, dim, H, W): the first half of the channels aggregated with the small kernels (B, G, S*S, H, W), the
    second half with the large ones (B, G, K*K, H, W) -> (B, dim, H, W), channels-last if x is."""
    b, c, h, w = x.shape
    g = small.shape[1]
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    values = x.contiguous().view(b, 2, g, c // (2 * g), h, w)
    x_small = na2d_av_channels_first(small.to(x.dtype), values[:, 0], smk_size)
    x_large = na2d_av_channels_first(large.to(x.dtype), values[:, 1], kernel_size)
    out = torch.cat([x_small.reshape(b, c // 2, h, w), x_large.reshape(b, c // 2, h, w)], dim=1)
    # keep a channels-last network channels-last (depthwise convs are much faster in it on CPU)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


class _ContMixBase(BaseModule):
    """Kernel generation and aggregation, shared by :class:`ContMix` and :class:`ContMixBlock`.

    Two kernels per group: a small one (``smk_size``) for the first half of the channels and a large one
    (``kernel_size``) for the second half; each is softmax-normalised over its taps with a relative position
    bias and aggregates a clamped window (NATTEN semantics). Submodule names are the official ones
    (checkpoint keys):

    ================  ==========================================================================
    ``rpb1``          relative position bias table of the small kernels, (G, 2S-1, 2S-1)
    ``rpb2``          relative position bias table of the large kernels, (G, 2K-1, 2K-1)
    ``weight_query``  1x1 conv + BN: queries (dim // 2 channels) from the query source
    ``weight_key``    R x R average pool + 1x1 conv + BN: keys (dim // 2) from the context's regions
    ``weight_proj``   1x1 conv from the R*R region affinities to the K*K + S*S kernel taps
    ================  ==========================================================================
    """

    #: TorchScript: mmengine's ``is_init`` property is Python-side bookkeeping
    __jit_unused_properties__ = ['is_init']

    def __init__(self, dim: int, ctx_dim: int, kernel_size: int, smk_size: int, num_groups: int,
                 num_regions: int, init_cfg=None):
        super().__init__(init_cfg)
        _check_contmix_args(dim, ctx_dim, kernel_size, smk_size, num_groups, num_regions, type(self).__name__)
        self.dim, self.ctx_dim, self.num_regions = dim, ctx_dim, num_regions
        self.kernel_size, self.smk_size, self.num_groups = kernel_size, smk_size, num_groups
        self.scale = (dim // num_groups) ** -0.5
        self.rpb1 = nn.Parameter(torch.zeros(num_groups, 2 * smk_size - 1, 2 * smk_size - 1))
        self.rpb2 = nn.Parameter(torch.zeros(num_groups, 2 * kernel_size - 1, 2 * kernel_size - 1))
        self.weight_query = nn.Sequential(PointwiseConv2d(dim, dim // 2, bias=False), nn.BatchNorm2d(dim // 2))
        # the pool is a placeholder for the checkpoint layout: keys pool with pool_regions (export-safe)
        self.weight_key = nn.Sequential(nn.AdaptiveAvgPool2d(num_regions),
                                        nn.Conv2d(ctx_dim, dim // 2, 1, bias=False),
                                        nn.BatchNorm2d(dim // 2))
        self.weight_proj = nn.Conv2d(num_regions ** 2, kernel_size ** 2 + smk_size ** 2, 1)

    def dynamic_kernels(self, query_src: torch.Tensor, context: torch.Tensor
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
        """query_src (B, dim, H, W), context (B, ctx_dim, H, W) ->
        small (B, G, S*S, H, W) and large (B, G, K*K, H, W) kernels, softmax-normalised over taps."""
        query = self.weight_query(query_src)
        key = self.weight_key[2](self.weight_key[1](pool_regions(context, self.num_regions)))
        return contmix_kernels(query, key, self.weight_proj.weight, self.weight_proj.bias, self.rpb1, self.rpb2,
                               self.scale, self.num_groups)

    def aggregate(self, x: torch.Tensor, small: torch.Tensor, large: torch.Tensor) -> torch.Tensor:
        """x (B, dim, H, W): first half aggregated with the small kernels, second half with the large."""
        return aggregate_halves(x, small, large, self.smk_size, self.kernel_size)

    def mix(self, x: torch.Tensor, query_src: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Dynamic-kernel aggregation of x; maps under K are resized to fit and pooled back.
        x, query_src (B, dim, H, W); context (B, ctx_dim, H, W) -> (B, dim, H, W)."""
        maps, size = fit_to_kernel([x, query_src, context], self.kernel_size)
        small, large = self.dynamic_kernels(maps[1], maps[2])
        return pool_back(self.aggregate(maps[0], small, large), size)


@MODELS.register_module()
class ContMix(_ContMixBase):
    """The bare ContMix mixer: dynamic kernels from the affinity of each pixel to R x R context regions.

    Args:
        dim: channels of the aggregated features (and of the query source).
        ctx_dim: channels of the context the keys come from.
        kernel_size: large dynamic kernel size K.
        smk_size: small dynamic kernel size S (<= K).
        num_groups: G; ``dim`` must be divisible by 2 * G.
        init_cfg: mmengine init config.
        num_regions: R; the context is average-pooled to R x R region centres (official: 7).

    Plug-in use: ``forward(x, context=None)`` (see :meth:`forward`).
    """

    def __init__(self, dim: int, ctx_dim: int, kernel_size: int = 7, smk_size: int = 5,
                 num_groups: int = 4, init_cfg=None, num_regions: int = NUM_REGIONS):
        super().__init__(dim, ctx_dim, kernel_size, smk_size, num_groups, num_regions, init_cfg)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, dim, H, W) is both value and query source; context (B, ctx_dim, h', w') from anywhere is
        resized to x's size (bilinear). Without a context, x itself is the context (self-context; needs
        ``ctx_dim == dim``). -> (B, dim, H, W)."""
        if not torch.jit.is_scripting():
            _check_input('x', x, self.dim, type(self).__name__)
        if context is None:
            if self.ctx_dim != self.dim:
                raise ValueError(f'ContMix: no context given and ctx_dim={self.ctx_dim} != dim={self.dim}; pass '
                                 f'a (B, {self.ctx_dim}, h, w) context or use ctx_dim=dim')
            context = x
        elif not torch.jit.is_scripting():
            _check_context(context, x, self.ctx_dim, type(self).__name__, 'context')
        return self.mix(x, x, _resize_context(context, x))


def _check_input(name: str, t: torch.Tensor, channels: int, owner: str) -> None:
    if t.dim() != 4 or t.shape[1] != channels:
        raise ValueError(f'{owner}: {name} has shape {tuple(t.shape)}, expected (B, {channels}, H, W)')


def _check_context(context: torch.Tensor, x: torch.Tensor, channels: int, owner: str, name: str) -> None:
    """A context map's channels and batch, against x's."""
    _check_input(name, context, channels, owner)
    if context.shape[0] != x.shape[0]:
        raise ValueError(f'{owner}: {name} batch {context.shape[0]} != x batch {x.shape[0]}')


def _resize_context(context: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A context map resized (bilinear) to x's spatial size: (B, C, h', w') -> (B, C, H, W)."""
    if context.shape[-2:] != x.shape[-2:]:
        context = F.interpolate(context, size=x.shape[-2:], mode='bilinear', align_corners=False)
    return context


# torch.fx: the shape-dependent steps and the op calls are leaves of a symbolic trace (torchvision's
# create_feature_extractor, timm's fx features); TorchScript skips the Python checks (jit.unused)
for _name in ('fit_to_kernel', 'pool_back', 'contmix_kernels', 'aggregate_halves', '_check_input', '_check_context',
              '_resize_context'):
    torch.fx.wrap(_name)
_check_input = torch.jit.unused(_check_input)
_check_context = torch.jit.unused(_check_context)


@MODELS.register_module()
class ContMixBlock(_ContMixBase):
    """The Focus-Net block (official ``DynamicConvBlock``): fuses features x (dim channels) with a context
    h (ctx_dim channels) and returns both updated, or the whole ``dim + ctx_dim`` map if ``is_last``.

    forward(x (B, dim, H, W), h (B, ctx_dim, H', W') or None, h_r (B, ctx_dim, H'', W'') or None)
        -> (x (B, dim, H, W), h (B, ctx_dim, H, W))  or  (B, dim + ctx_dim, H, W) when ``is_last``.

    As a plug-in block in any NCHW network: ``h`` is a context from elsewhere (any spatial size, resized
    bilinearly to x's); ``h_r`` is the residual context mixed in by blocks that are not ``is_first``
    (``h = x_scale(h) + h_scale(h_r)``) and defaults to ``h``. Without ``h`` the block needs
    ``self_context=True``: the context is then ``context_proj(x)``, a 1x1 projection of x to ctx_dim
    channels (ContMix pools it to R x R region centres for the keys). ``context_proj`` exists only with
    ``self_context=True``, so the default state-dict layout is exactly the official one.

    Args beyond :class:`ContMix`'s:
        mlp_ratio: hidden width of the MLP, ``int(dim * mlp_ratio)``.
        ls_init_value: initial LayerScale of ``ls1`` / ``ls2``.
        drop_path: stochastic depth rate of both residual branches.
        is_first: the first Focus-Net block (no ``x_scale`` / ``h_scale``: nothing to mix h_r into).
        is_last: return the whole ``dim + ctx_dim`` map instead of (x, h).
        deploy: build ``lepe``'s DilatedReparamBlock re-parameterised.
        self_context: without ``h``, take the context from ``context_proj(x)``.

    Official submodule names beyond those of the mixer (checkpoint keys): ``dwconv1`` / ``dwconv2``
    (residual 3x3 depthwise convs), ``norm1`` / ``norm2``, ``fusion`` (x and h fused to dim channels),
    ``dyconv_proj`` (after the aggregation), ``lepe`` (the large-kernel static branch), ``se_layer``,
    ``gate``, ``proj``, ``mlp``, ``ls1`` / ``ls2``, ``x_scale`` / ``h_scale`` (context mixing).
    """

    def __init__(self, dim: int, ctx_dim: int, kernel_size: int = 7, smk_size: int = 5, num_groups: int = 4,
                 mlp_ratio: float = 3., ls_init_value: float = 1., drop_path: float = 0.,
                 is_first: bool = False, is_last: bool = False, deploy: bool = False, init_cfg=None,
                 num_regions: int = NUM_REGIONS, self_context: bool = False):
        super().__init__(dim, ctx_dim, kernel_size, smk_size, num_groups, num_regions, init_cfg)
        if not (isinstance(mlp_ratio, (int, float)) and mlp_ratio > 0):
            raise ValueError(f'ContMixBlock: mlp_ratio={mlp_ratio!r} must be a positive number')
        out_dim = dim + ctx_dim
        self.self_context = self_context
        if self_context:
            self.context_proj = PointwiseConv2d(dim, ctx_dim)
        hidden = int(dim * mlp_ratio)
        self.is_first, self.is_last = is_first, is_last
        if not is_first:
            self.x_scale = LayerScale(ctx_dim, ls_init_value)
            self.h_scale = LayerScale(ctx_dim, ls_init_value)
        self.dwconv1 = ResDWConv(out_dim, 3)
        self.norm1 = LayerNorm2d(out_dim)
        self.fusion = nn.Sequential(
            DepthwiseConv2d(out_dim, 3, bias=True), nn.BatchNorm2d(out_dim), GELU(),
            PointwiseConv2d(out_dim, dim), GRN(dim))
        self.dyconv_proj = nn.Sequential(PointwiseConv2d(dim, dim, bias=False), nn.BatchNorm2d(dim))
        self.lepe = nn.Sequential(DilatedReparamBlock(dim, kernel_size, deploy), nn.BatchNorm2d(dim))
        self.se_layer = SEModule(dim)
        self.gate = nn.Sequential(PointwiseConv2d(dim, dim, bias=False), nn.BatchNorm2d(dim), nn.SiLU())
        self.proj = nn.Sequential(nn.BatchNorm2d(dim), PointwiseConv2d(dim, out_dim))
        self.dwconv2 = ResDWConv(out_dim, 3)
        self.norm2 = LayerNorm2d(out_dim)
        self.mlp = nn.Sequential(PointwiseConv2d(out_dim, hidden), GELU(), ResDWConv(hidden, 3), GRN(hidden),
                                 PointwiseConv2d(hidden, out_dim))
        self.ls1 = LayerScale(out_dim, ls_init_value)
        self.ls2 = LayerScale(out_dim, ls_init_value)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, h: Optional[torch.Tensor] = None, h_r: Optional[torch.Tensor] = None
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """x (B, dim, H, W), h (B, ctx_dim, H', W') or None, h_r (B, ctx_dim, H'', W'') or None ->
        (x (B, dim, H, W), h (B, ctx_dim, H, W)), or (B, dim + ctx_dim, H, W) when ``is_last``."""
        if not torch.jit.is_scripting():
            _check_input('x', x, self.dim, type(self).__name__)
        if h is None:
            if not hasattr(self, 'context_proj'):
                raise ValueError(f'ContMixBlock: no context h given; pass h (B, {self.ctx_dim}, H, W) or build '
                                 f'the block with self_context=True')
            h = self.context_proj(x)
        else:
            if not torch.jit.is_scripting():
                _check_context(h, x, self.ctx_dim, type(self).__name__, 'h')
            h = _resize_context(h, x)
        if hasattr(self, 'x_scale'):      # not is_first
            if h_r is None:
                h_r = h
            else:
                if not torch.jit.is_scripting():
                    _check_context(h_r, x, self.ctx_dim, type(self).__name__, 'h_r')
                h_r = _resize_context(h_r, x)
            h = self.x_scale(h) + self.h_scale(h_r)
        f = self.dwconv1(torch.cat([x, h], dim=1))
        identity = f
        f = self.norm1(f)
        x = self.fusion(f)
        gate = self.gate(x)
        lepe = self.lepe(x)
        parts = f.split([self.dim, self.ctx_dim], dim=1)
        x = self.mix(x, parts[0], parts[1])
        x = self.dyconv_proj(x) + lepe
        x = gate * self.se_layer(x)
        x = self.proj(x)
        x = self.ls1(identity) + self.drop_path(x)
        x = self.dwconv2(x)
        x = self.ls2(x) + self.drop_path(self.mlp(self.norm2(x)))
        if self.is_last:
            return x
        return x[:, :self.dim], x[:, self.dim:]

    def switch_to_deploy(self) -> None:
        self.lepe[0].switch_to_deploy()
