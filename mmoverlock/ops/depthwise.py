"""Depthwise ``conv2d`` with faster exact CPU paths for large and dilated kernels (the DilatedReparamBlocks).

``depthwise_conv2d(x, weight, bias, dilation)`` is mathematically equal to
``F.conv2d(x, weight, bias, stride=1, padding=dilation * (k - 1) // 2, dilation=dilation, groups=C)``
for ``x`` of shape (B, C, H, W) and ``weight`` of shape (C, 1, k, k), odd ``k``. On CPU (fp32/fp64;
single-threaded PyTorch 2.13 timings, AVX2) PyTorch's depthwise kernels are slow in two places, and
this module replaces only those, still computing every convolution with PyTorch's own kernels:

* the weight gradient of large kernels (2x64x56x56, k=17: 150-240 ms against ~3-9 ms forward):
  computed as an FFT cross-correlation of the input with the output gradient (``fft_weight_grad``);
* every pass of dilated kernels (2x64x56x56, k=9, dilation 2: ~50 ms forward, 125-200 ms input
  gradient, ~50 ms weight gradient): a dilated stride-1 'same' conv only mixes pixels whose
  coordinates agree modulo d, so it equals PyTorch's *undilated* depthwise conv applied to the d*d
  polyphase sub-grids of the map (``_split_phases``, batch B*d*d, maps ceil(H/d) x ceil(W/d)).

``choose_paths`` holds the rule (by kernel size, dilation and padding; documented there). Anything
else -- CUDA, half/bfloat16, CPU autocast, tracing/scripting/compiling, and the shapes where PyTorch
measured as fast -- goes straight to ``F.conv2d``. Double backward through the custom Function is not
supported (``once_differentiable``).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .tracing import is_tracing

__all__ = ['depthwise_conv2d', 'fft_weight_grad', 'choose_paths']

# Rule thresholds (see ``choose_paths``).
FFT_MIN_KERNEL = 9          # FFT weight gradient from this kernel size up (any dilation)
POLY_FWD_MIN_PAD = 5        # dilated forward via phases when padding d*(k-1)//2 >= this

TORCH, POLY, FFT = 'torch', 'poly', 'fft'


def choose_paths(x: torch.Tensor, kernel_size: int, dilation: int) -> Tuple[str, str, str]:
    """Return the ``(forward, input_grad, weight_grad)`` paths for a depthwise conv of x (B, C, H, W).

    Each is ``'torch'`` (PyTorch's conv as called), ``'poly'`` (PyTorch's undilated conv on the d*d
    phase sub-grids) or, for the weight gradient, ``'fft'``. Rule (single-thread CPU timings, fp32,
    channels-last, torch 2.13, AMD EPYC with AVX2; docs/benchmarks.md):

    * not CPU, not float32/float64, CPU autocast on, or tracing/scripting/compiling: all ``'torch'``;
    * weight gradient: ``'fft'`` when ``k >= 9`` (FFT cost hardly depends on k: PyTorch is faster up
      to k=7 -- k=5/7 at 56x56 ~6/8 ms against ~8 ms --, about even to 1.8x slower at k=9, 12-28x
      slower at k=15/17; for dilated k=9 the FFT also beats 'poly' and is more accurate on large
      maps); else ``'poly'`` when ``d > 1`` (3-7x faster than PyTorch's dilated weight gradient);
      else ``'torch'``;
    * input gradient: ``'poly'`` when ``d > 1`` (PyTorch's dilated input gradient: 1-50x slower);
    * forward: ``'poly'`` when ``d > 1`` and padding ``d * (k - 1) // 2 >= 5`` (PyTorch's dilated
      forward is fast up to padding 4 -- (3,2), (3,3), (3,4), (5,2) -- and 3-30x slower above).
    """
    if x.device.type != 'cpu' or x.dtype not in (torch.float32, torch.float64):
        return TORCH, TORCH, TORCH
    if is_tracing() or torch.jit.is_scripting() or _cpu_autocast() or torch.compiler.is_compiling():
        return TORCH, TORCH, TORCH
    dilated = dilation > 1
    fwd = POLY if dilated and dilation * (kernel_size - 1) // 2 >= POLY_FWD_MIN_PAD else TORCH
    ig = POLY if dilated else TORCH
    wg = FFT if kernel_size >= FFT_MIN_KERNEL else (POLY if dilated else TORCH)
    return fwd, ig, wg


def _cpu_autocast() -> bool:
    return torch.is_autocast_enabled('cpu')


def _fast_len(n: int) -> int:
    """Smallest 2-3-5-smooth integer >= n (a fast FFT length for pocketfft)."""
    m = max(int(n), 1)
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def fft_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel_size: int,
                    dilation: int = 1) -> torch.Tensor:
    """Weight gradient of a stride-1 'same' depthwise conv by FFT cross-correlation.

    ``dW[c, 0, a, b] = sum_{n,i,j} grad_out[n, c, i, j] * x[n, c, i + a*d - p, j + b*d - p]`` (zero
    outside the map), ``p = d * (k - 1) // 2``. Computed per (n, c) plane as the circular correlation
    ``irfft2(conj(rfft2(grad_out)) * rfft2(x))`` (summed over n in the frequency domain) read at the
    lags ``-p, -p + d, ..., p`` of each axis. FFT length per axis is the smallest smooth number
    ``>= H + p`` (resp. ``W + p``): then a lag ``|s| <= p`` never aliases with a lag of non-zero
    overlap (``|s'| < H``), so the result is exact up to rounding.

    Args:
        x: (B, C, H, W) conv input, any memory format.
        grad_out: (B, C, H, W) gradient of the conv output.
        kernel_size: odd k.
        dilation: d >= 1.
    Returns:
        (C, 1, k, k) contiguous tensor, dtype of ``x``.
    """
    n, c, h, w = x.shape
    pad = dilation * (kernel_size - 1) // 2
    lh, lw = _fast_len(h + pad), _fast_len(w + pad)
    xf = torch.fft.rfft2(x.contiguous(), s=(lh, lw))              # (B, C, lh, lw // 2 + 1)
    gf = torch.fft.rfft2(grad_out.contiguous(), s=(lh, lw))
    spec = xf.mul_(gf.conj())
    spec = spec.sum(0) if n > 1 else spec[0]                        # (C, lh, lw // 2 + 1)
    corr = torch.fft.irfft2(spec, s=(lh, lw))                       # (C, lh, lw)
    lags = torch.arange(-pad, pad + 1, dilation, device=x.device)
    corr = corr.index_select(1, lags % lh).index_select(2, lags % lw)
    return corr.unsqueeze(1).contiguous()


def _split_phases(t: torch.Tensor, d: int) -> torch.Tensor:
    """(B, C, H, W) -> (B*d*d, C, ceil(H/d), ceil(W/d)) channels-last; phase (r, s) = t[..., r::d, s::d].

    Batch index of phase (r, s) of sample b is ``(b * d + r) * d + s``. The map is zero-padded at the
    bottom/right to a multiple of d first. One copy, done in NHWC order (channels innermost).
    """
    b, c, h, w = t.shape
    hd, wd = -(-h // d), -(-w // d)
    t = t.permute(0, 2, 3, 1)                                          # (B, H, W, C) view
    if hd * d != h or wd * d != w:
        t = F.pad(t, (0, 0, 0, wd * d - w, 0, hd * d - h))
    t = t.reshape(b, hd, d, wd, d, c).permute(0, 2, 4, 1, 3, 5).reshape(b * d * d, hd, wd, c)
    return t.permute(0, 3, 1, 2)


def _merge_phases(t: torch.Tensor, d: int, b: int, h: int, w: int,
                  memory_format: torch.memory_format) -> torch.Tensor:
    """Inverse of ``_split_phases`` (crops the padding): (B*d*d, C, hd, wd) -> (B, C, H, W)."""
    _, c, hd, wd = t.shape
    t = t.permute(0, 2, 3, 1).reshape(b, d, d, hd, wd, c).permute(0, 3, 1, 4, 2, 5)
    t = t.reshape(b, hd * d, wd * d, c)[:, :h, :w].permute(0, 3, 1, 2)
    return t.contiguous(memory_format=memory_format)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _conv_bwd(grad_out, x, weight, pad, dilation, mask):
    """aten.convolution_backward of a depthwise stride-1 conv: (grad_x, grad_w, grad_b)."""
    c = x.shape[1]
    return torch.ops.aten.convolution_backward(
        grad_out, x, weight, [c] if mask[2] else None, [1, 1], [pad, pad], [dilation, dilation],
        False, [0, 0], c, mask)


class _DepthwiseConv2d(torch.autograd.Function):
    """Stride-1 'same' depthwise conv with selectable forward / input-grad / weight-grad paths."""

    @staticmethod
    def forward(ctx, x, weight, bias, dilation, fwd_path, ig_path, wg_path):
        c, k = x.shape[1], weight.shape[-1]
        if fwd_path == POLY and dilation > 1:
            b, _, h, w = x.shape
            y = F.conv2d(_split_phases(x, dilation), weight, bias, 1, (k - 1) // 2, 1, c)
            y = _merge_phases(y, dilation, b, h, w, _memory_format(x))
        else:
            y = F.conv2d(x, weight, bias, 1, dilation * (k - 1) // 2, dilation, c)
        ctx.save_for_backward(x, weight)
        ctx.conf = (dilation, ig_path, wg_path, bias is not None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        d, ig_path, wg_path, has_bias = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and has_bias
        k = weight.shape[-1]
        pad = d * (k - 1) // 2
        poly_x = need_x and ig_path == POLY and d > 1
        poly_w = need_w and wg_path == POLY and d > 1
        fft_w = need_w and wg_path == FFT
        torch_x = need_x and not poly_x
        torch_w = need_w and not (poly_w or fft_w)
        grad_x = grad_w = grad_b = None
        if torch_x or torch_w:
            grad_x, grad_w, grad_b = _conv_bwd(grad_out, x, weight, pad, d, [torch_x, torch_w, need_b])
        elif need_b:
            grad_b = grad_out.sum((0, 2, 3))
        if poly_x or poly_w:
            b, _, h, w = x.shape
            gs = _split_phases(grad_out, d)
            if poly_x:
                # the input gradient reads only the input's shape / layout, and gs has that shape
                gxs = _conv_bwd(gs, gs, weight, (k - 1) // 2, 1, [True, False, False])[0]
                grad_x = _merge_phases(gxs, d, b, h, w, _memory_format(x))
            if poly_w:
                grad_w = _conv_bwd(gs, _split_phases(x, d), weight, (k - 1) // 2, 1,
                                   [False, True, False])[1]
        if fft_w:
            grad_w = fft_weight_grad(x, grad_out, k, d).to(weight.dtype)
        return grad_x, grad_w, grad_b, None, None, None, None


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     dilation: int = 1) -> torch.Tensor:
    """Depthwise stride-1 conv with 'same' zero padding ``dilation * (k - 1) // 2``.

    Equal to ``F.conv2d(x, weight, bias, 1, dilation * (k - 1) // 2, dilation, groups=C)``; on CPU
    the paths chosen by ``choose_paths`` replace PyTorch's slow depthwise cases.

    Args:
        x: (B, C, H, W), any memory format (the output keeps a channels-last input's format).
        weight: (C, 1, k, k), odd k.
        bias: optional (C,).
        dilation: int >= 1.
    Returns:
        (B, C, H, W), dtype of x.
    """
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f'depthwise_conv2d: expected 4-D x and weight, got {tuple(x.shape)}, '
                         f'{tuple(weight.shape)}')
    c, k = x.shape[1], weight.shape[-1]
    if tuple(weight.shape) != (c, 1, k, k) or k % 2 != 1:
        raise ValueError(f'depthwise_conv2d: weight must be (C, 1, k, k) with odd k and C={c}, '
                         f'got {tuple(weight.shape)}')
    dilation = int(dilation)
    if dilation < 1:
        raise ValueError(f'depthwise_conv2d: dilation must be >= 1, got {dilation}')
    fwd, ig, wg = choose_paths(x, k, dilation)
    grad = torch.is_grad_enabled()
    custom = fwd != TORCH or (grad and x.requires_grad and ig != TORCH) or (
        grad and weight.requires_grad and wg != TORCH)
    if not custom or weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        return F.conv2d(x, weight, bias, 1, dilation * (k - 1) // 2, dilation, c)
    return _DepthwiseConv2d.apply(x, weight, bias, dilation, fwd, ig, wg)
