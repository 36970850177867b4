"""Small building blocks of OverLoCK (names and parameter layouts follow the official release)."""
from typing import Dict, List, Optional, Tuple

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from ..ops import CHOICES, depthwise_conv2d, is_exporting, is_tracing

# torch.fx: data-dependent helpers are leaves of a symbolic trace (torchvision's create_feature_extractor, timm's
# fx features), not traced through
torch.fx.wrap('depthwise_conv2d')

# UniRepLKNet's dilated re-parameterisation table: large kernel K -> (branch kernels, dilations).
DILATED_BRANCHES: Dict[int, Tuple[List[int], List[int]]] = {
    17: ([5, 7, 9, 3, 3, 3], [1, 1, 2, 4, 5, 7]),
    15: ([5, 7, 7, 3, 3, 3], [1, 1, 2, 3, 5, 7]),
    13: ([5, 7, 7, 3, 3, 3], [1, 1, 2, 3, 4, 5]),
    11: ([5, 7, 5, 3, 3, 3], [1, 1, 2, 3, 4, 5]),
    9: ([5, 7, 5, 3, 3], [1, 1, 2, 3, 4]),
    7: ([5, 3, 3, 3], [1, 1, 2, 3]),
    5: ([3, 3], [1, 2]),
}
#: every branch of the table, (kernel, dilation), in an order that keeps each kernel size's own order (the sum in
#: :meth:`DilatedReparamBlock.forward` follows it, spelled out for TorchScript)
BRANCH_ORDER = ((5, 1), (7, 1), (3, 1), (9, 2), (7, 2), (5, 2), (3, 2), (3, 3), (3, 4), (3, 5), (3, 7))


class DropPath(nn.Module):
    """Stochastic depth: while training, drop a sample's whole residual branch with probability
    ``drop_prob`` and scale the kept ones by 1 / (1 - drop_prob). (B, ...) -> same shape.

    (The same draw as mmcv's and timm's ``DropPath``: one uniform number per sample.)
    """

    def __init__(self, drop_prob: float = 0.):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0. or not self.training:
            return x
        keep = 1. - self.drop_prob
        draw = torch.rand((x.shape[0], ) + (1, ) * (x.ndim - 1), dtype=x.dtype, device=x.device)
        return x.div(keep) * (keep + draw).floor()

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW map (eps 1e-6). (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class LayerScale(nn.Module):
    """Per-channel affine ``x * weight + bias``; weight stored as a depthwise 1x1 kernel (C, 1, 1, 1)."""

    def __init__(self, dim: int, init_value: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim, 1, 1, 1), float(init_value)))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if is_tracing() and not is_exporting():
                # the official form, a depthwise 1x1 conv: what jit-trace FLOP counters (mmengine's, fvcore's) count
                return F.conv2d(x, self.weight, self.bias, groups=self.weight.shape[0])
        # in x's dtype: a bf16 / fp16 map under autocast stays so (no promotion to the fp32 parameters' dtype)
        return torch.addcmul(self.bias.to(x.dtype).view(1, -1, 1, 1), x, self.weight.to(x.dtype).view(1, -1, 1, 1))


class GRN(nn.Module):
    """Global Response Normalisation (ConvNeXt-V2) for NCHW maps. (B, C, H, W) -> same dtype and shape.

    The spatial L2 norm is taken in fp32 (:func:`spatial_l2_norm`): it grows with sqrt(H * W) and overflows
    fp16 (max 65504) for activations of a few thousand on a 64 x 64 map. The per-channel scale it gives,
    (B, C, 1, 1), is applied in the map's own dtype, so a bf16 or fp16 map is never cast as a whole.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = spatial_l2_norm(x)
        nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
        scale = self.gamma * nx + 1                                  # (B, C, 1, 1), fp32
        # (gamma * nx + 1) * x + beta in one pass, in x's dtype
        return torch.addcmul(self.beta.to(x.dtype), x, scale.to(x.dtype))


def spatial_l2_norm(x: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each channel's map, accumulated in fp32: (B, C, H, W) -> (B, C, 1, 1) float32.

    bf16 maps are squared in bf16 and summed by a reduction that accumulates in fp32 (bf16 has fp32's range:
    no overflow), so the map is not cast to fp32 first; fp16 maps are cast (their squares overflow)."""
    if x.dtype == torch.bfloat16 and x.device.type == 'cpu':
        # CPU reductions of bf16 accumulate in fp32 (the result alone is rounded to bf16); 3x faster than
        # squaring an fp32 copy of the map (0.56 against 1.70 ms for 4x256x56x56 channels-last, one thread)
        return x.square().sum(dim=(-1, -2), keepdim=True).float().sqrt()
    if x.is_contiguous():
        return torch.linalg.vector_norm(x, ord=2, dim=(-1, -2), keepdim=True, dtype=torch.float32)
    # channels-last: a square-sum, faster than a spatial vector_norm there on CPU
    # (tools/analysis/benchmark_layers.py, docs/benchmarks.md)
    return x.float().square().sum(dim=(-1, -2), keepdim=True).sqrt()


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """A 1x1 conv (weight (C_out, C_in, 1, 1)); channels-last maps as a matmul over channels on the NHWC view,
    except while tracing or exporting (the graphs keep the Conv). (B, C_in, H, W) -> (B, C_out, H, W)."""
    if not torch.jit.is_scripting():
        if (x.dim() == 4 and not is_tracing() and not x.is_contiguous()
                and x.is_contiguous(memory_format=torch.channels_last)):
            out = F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias)
            return out.permute(0, 3, 1, 2)
    return F.conv2d(x, weight, bias)


torch.fx.wrap('spatial_l2_norm')
torch.fx.wrap('pointwise_conv')


def gelu(x: torch.Tensor, approximate: str = 'none') -> torch.Tensor:
    """``F.gelu`` that runs on the NHWC view of a channels-last CPU map when no gradient is needed (not while
    tracing: graphs keep the plain op; TorchScript takes the same path as eager). (B, C, H, W) -> same shape,
    channels-last if x is.

    PyTorch's CPU GELU of a channels-last tensor takes twice as long as of the same memory seen as a contiguous
    NHWC tensor (4x256x56x56: 5.6 against 2.6 ms in fp32, 3.7 against 1.8 ms in bf16, one thread;
    docs/benchmarks.md); the two kernels' erf differ in the last bit. Under autograd PyTorch's op sees the map as
    it is: training keeps the numbers its documented runs gave.
    """
    if (x.dim() == 4 and x.device.type == 'cpu' and not (torch.is_grad_enabled() and x.requires_grad)
            and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)):
        traced = False
        if not torch.jit.is_scripting():
            traced = is_tracing()
        if not traced:
            return F.gelu(x.permute(0, 2, 3, 1), approximate=approximate).permute(0, 3, 1, 2)
    return F.gelu(x, approximate=approximate)


torch.fx.wrap('gelu')


class GELU(nn.GELU):
    """``nn.GELU`` (same arguments, no parameters) computed by :func:`gelu`. (B, C, H, W) -> same shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu(x, self.approximate)


class SEModule(nn.Module):
    """Squeeze-and-excitation gate; hidden width max(16, dim // 8)."""

    def __init__(self, dim: int):
        super().__init__()
        hidden = max(16, dim // 8)
        self.proj = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim, hidden, 1),
            GELU(),
            nn.Conv2d(hidden, dim, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.proj(x)


class ResDWConv(nn.Conv2d):
    """Residual depthwise conv ``x + dwconv(x)``; it is the conv itself (its weight sits at its own name).

    Computed as one conv whose kernel has 1 added at its centre (the identity folded in: one pass over
    the map instead of two; same parameters and gradients), by :func:`mmoverlock.ops.depthwise_conv2d`
    (PyTorch's conv on CPU; on CUDA the candidate ``choice`` selects). (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        identity = torch.zeros(1, 1, kernel_size, kernel_size)
        identity[..., kernel_size // 2, kernel_size // 2] = 1
        self.register_buffer('identity_kernel', identity, persistent=False)   # not in the state dict
        self.choice = 'auto'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv2d(x, self.weight + self.identity_kernel.to(self.weight.dtype), self.bias, 1,
                                self.choice)


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 ``nn.Conv2d`` (same parameters) that runs as a matmul over channels on channels-last maps.

    On CPU a 1x1 conv of a channels-last map takes PyTorch's im2col path, slower than ``F.linear`` on the
    NHWC view (tools/analysis/benchmark_layers.py, docs/benchmarks.md); other inputs use the conv.
    (B, C_in, H, W) -> (B, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, bias: bool = True):
        if kernel_size != 1:
            raise ValueError(f'PointwiseConv2d: kernel_size={kernel_size}, expected 1')
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # exported graphs keep the Conv (ONNX Runtime's MatMul+BN fusion breaks on the 4-d MatMul)
        return pointwise_conv(x, self.weight, self.bias)


class DepthwiseConv2d(nn.Conv2d):
    """A stride-1 depthwise ``nn.Conv2d`` with 'same' padding (same parameters) computed by
    :func:`mmoverlock.ops.depthwise_conv2d`: on CPU the large-kernel weight gradient by FFT and the
    dilated kernels on their polyphase sub-grids (several times faster, equal up to rounding); on CUDA the
    fastest of PyTorch's conv, the Triton kernels and the FFT weight gradient, by measurement
    (``choice='auto'``; see :func:`set_depthwise_choice`). (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, kernel_size: int, dilation: int = 1, bias: bool = False):
        super().__init__(channels, channels, kernel_size, padding=dilation * (kernel_size - 1) // 2,
                         dilation=dilation, groups=channels, bias=bias)
        self.choice = 'auto'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv2d(x, self.weight, self.bias, self.dilation[0], self.choice)


def set_depthwise_choice(model: nn.Module, choice: str) -> int:
    """Set how every depthwise conv of ``model`` (:class:`DepthwiseConv2d`, :class:`ResDWConv`) picks its
    kernels on CUDA: 'auto' (measured on first use, cached), 'torch' (PyTorch's conv) or 'triton'.
    Returns the number of convs set."""
    if choice not in CHOICES:
        raise ValueError(f'depthwise_choice={choice!r} is not one of {CHOICES}')
    count = 0
    for module in model.modules():
        if isinstance(module, (DepthwiseConv2d, ResDWConv)):
            module.choice = choice
            count += 1
    return count


def fuse_bn(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BN into the preceding (bias-free) conv kernel. Returns (kernel, bias)."""
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    return kernel * scale.view(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


def dilate_kernel(kernel: torch.Tensor, dilation: int) -> torch.Tensor:
    """(C, 1, k, k) kernel with dilation r -> equivalent dense (C, 1, r(k-1)+1, r(k-1)+1) kernel."""
    if dilation == 1:
        return kernel
    c, _, k, _ = kernel.shape
    size = dilation * (k - 1) + 1
    dense = kernel.new_zeros(c, 1, size, size)
    dense[:, :, ::dilation, ::dilation] = kernel
    return dense


class DilatedReparamBlock(nn.Module):
    """UniRepLKNet's dilated re-parameterisable depthwise KxK conv.

    Train form: ``lk_origin`` (dw KxK, no bias) -> ``origin_bn`` plus dilated small-kernel branches
    ``dil_conv_k{k}_{r}`` -> ``dil_bn_k{k}_{r}``, summed. Deploy form: one dw KxK conv with bias.
    """

    def __init__(self, channels: int, kernel_size: int, deploy: bool = False):
        super().__init__()
        if kernel_size not in DILATED_BRANCHES:
            raise ValueError(f'DilatedReparamBlock kernel_size={kernel_size} is not supported; '
                             f'expected one of {sorted(DILATED_BRANCHES)}')
        self.kernel_size = kernel_size
        self.kernel_sizes, self.dilates = DILATED_BRANCHES[kernel_size]
        self.lk_origin = DepthwiseConv2d(channels, kernel_size, bias=deploy)
        if not deploy:
            self.origin_bn = nn.BatchNorm2d(channels)
            for k, r in zip(self.kernel_sizes, self.dilates):
                self.add_module(f'dil_conv_k{k}_{r}', DepthwiseConv2d(channels, k, dilation=r))
                self.add_module(f'dil_bn_k{k}_{r}', nn.BatchNorm2d(channels))
        self._register_load_state_dict_pre_hook(self._convert_loaded_form)

    def _convert_loaded_form(self, state_dict: Dict[str, torch.Tensor], prefix: str, *args) -> None:
        """load_state_dict pre-hook: train-form weights (``origin_bn``, the dilated branches) loading into a
        deploy-form block are merged into its one kernel with bias in place (as :meth:`switch_to_deploy` merges
        them); deploy-form weights (``lk_origin.bias``, no branches) cannot load into a train-form block: one-line
        ``ValueError``."""
        train_form = prefix + 'origin_bn.weight' in state_dict
        if self.deployed and train_form:
            train = {k[len(prefix):]: state_dict.pop(k) for k in list(state_dict) if k.startswith(prefix)}
            weight = train['lk_origin.weight']
            block = DilatedReparamBlock(weight.shape[0], weight.shape[-1]).to(weight.device, weight.dtype)
            block.load_state_dict(train)
            block.eval()
            block.switch_to_deploy()
            state_dict.update({prefix + k: v for k, v in block.state_dict().items()})
        elif not self.deployed and not train_form and prefix + 'lk_origin.bias' in state_dict:
            raise ValueError(f'{prefix}lk_origin is re-parameterised (deploy form); build the model with '
                             f'deploy=True to load it')

    @property
    def deployed(self) -> bool:
        return not hasattr(self, 'origin_bn')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, 'origin_bn'):     # deploy form
            return self.lk_origin(x)
        out = self.origin_bn(self.lk_origin(x))
        # the branches this kernel size has, in BRANCH_ORDER (static attribute checks: TorchScript compiles this)
        if hasattr(self, 'dil_conv_k5_1'):
            out = out + self.dil_bn_k5_1(self.dil_conv_k5_1(x))
        if hasattr(self, 'dil_conv_k7_1'):
            out = out + self.dil_bn_k7_1(self.dil_conv_k7_1(x))
        if hasattr(self, 'dil_conv_k3_1'):
            out = out + self.dil_bn_k3_1(self.dil_conv_k3_1(x))
        if hasattr(self, 'dil_conv_k9_2'):
            out = out + self.dil_bn_k9_2(self.dil_conv_k9_2(x))
        if hasattr(self, 'dil_conv_k7_2'):
            out = out + self.dil_bn_k7_2(self.dil_conv_k7_2(x))
        if hasattr(self, 'dil_conv_k5_2'):
            out = out + self.dil_bn_k5_2(self.dil_conv_k5_2(x))
        if hasattr(self, 'dil_conv_k3_2'):
            out = out + self.dil_bn_k3_2(self.dil_conv_k3_2(x))
        if hasattr(self, 'dil_conv_k3_3'):
            out = out + self.dil_bn_k3_3(self.dil_conv_k3_3(x))
        if hasattr(self, 'dil_conv_k3_4'):
            out = out + self.dil_bn_k3_4(self.dil_conv_k3_4(x))
        if hasattr(self, 'dil_conv_k3_5'):
            out = out + self.dil_bn_k3_5(self.dil_conv_k3_5(x))
        if hasattr(self, 'dil_conv_k3_7'):
            out = out + self.dil_bn_k3_7(self.dil_conv_k3_7(x))
        return out

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Merge every branch and BN into one KxK depthwise conv with bias, in place."""
        if self.deployed:
            return
        kernel, bias = fuse_bn(self.lk_origin.weight, self.origin_bn)
        for k, r in zip(self.kernel_sizes, self.dilates):
            branch_k, branch_b = fuse_bn(getattr(self, f'dil_conv_k{k}_{r}').weight,
                                         getattr(self, f'dil_bn_k{k}_{r}'))
            dense = dilate_kernel(branch_k, r)
            pad = (self.kernel_size - dense.shape[-1]) // 2
            kernel = kernel + F.pad(dense, [pad] * 4)
            bias = bias + branch_b
        conv = DepthwiseConv2d(kernel.shape[0], self.kernel_size, bias=True).to(kernel.device, kernel.dtype)
        conv.choice = self.lk_origin.choice
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        self.lk_origin = conv
        del self.origin_bn
        for k, r in zip(self.kernel_sizes, self.dilates):
            delattr(self, f'dil_conv_k{k}_{r}')
            delattr(self, f'dil_bn_k{k}_{r}')


def has_train_form_blocks(state: Dict[str, torch.Tensor]) -> bool:
    """Whether a state dict (a model's or a checkpoint's) holds train-form DilatedReparamBlocks: a BN after the
    large kernel (``origin_bn``) and the dilated branches."""
    return any(k.endswith('origin_bn.weight') for k in state)


def is_deploy_form(state: Dict[str, torch.Tensor]) -> bool:
    """Whether a state dict holds re-parameterised (deploy-form) DilatedReparamBlocks: one large kernel with
    a bias (``lk_origin.bias``) and no dilated branches or BNs. Such weights need ``deploy=True``."""
    return any(k.endswith('lk_origin.bias') for k in state) and not has_train_form_blocks(state)


def reparam_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A state dict with every train-form DilatedReparamBlock converted to its deploy form (what the release's
    ``*_reparam.pth`` holds); other keys as they are."""
    state = dict(state)
    for prefix in [k[:-len('origin_bn.weight')] for k in state if k.endswith('origin_bn.weight')]:
        weight = state[prefix + 'lk_origin.weight']
        DilatedReparamBlock(weight.shape[0], weight.shape[-1], deploy=True)._convert_loaded_form(state, prefix)
    return state
