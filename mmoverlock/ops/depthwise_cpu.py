"""The CPU paths of the stride-1 'same' depthwise conv2d: x (B, C, H, W), weight (C, 1, k, k) -> (B, C, H, W).

PyTorch's depthwise kernels are slow on CPU in two places (timings: docs/benchmarks.md, "Depthwise convs on
CPU"); these paths replace only those, still computing every convolution with PyTorch's own kernels:

* the weight gradient of large kernels: an FFT cross-correlation of the input with the output gradient
  (:func:`fft_weight_grad`; :func:`fft_weight_grad_any` for half inputs, also a CUDA candidate);
* the forward of k=13 on channels-last maps: PyTorch's conv with the kernel ringed by zeros to 15x15
  (:func:`torch_forward`), faster than its own k=13;
* every pass of dilated kernels: a dilated stride-1 'same' conv only mixes pixels whose coordinates agree
  modulo d, so it equals PyTorch's *undilated* depthwise conv applied to the d*d polyphase sub-grids of the
  map (:func:`split_phases`, batch B*d*d, maps ceil(H/d) x ceil(W/d)).

Which pass takes which path: :func:`mmoverlock.ops.selection.choose_paths`. :class:`DepthwiseConv2dPaths` is
the autograd Function over the chosen paths (CPU eager; its backward is not differentiable).
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .selection import FFT, POLY, ringed_kernel_size
from .triton_common import memory_format

__all__ = ['fast_fft_length', 'fft_weight_grad', 'fft_weight_grad_any', 'split_phases', 'merge_phases', 'torch_forward',
           'conv_backward', 'paths_forward', 'paths_backward', 'DepthwiseConv2dPaths']


def fast_fft_length(n: int) -> int:
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
    lh, lw = fast_fft_length(h + pad), fast_fft_length(w + pad)
    xf = torch.fft.rfft2(x.contiguous(), s=(lh, lw))              # (B, C, lh, lw // 2 + 1)
    gf = torch.fft.rfft2(grad_out.contiguous(), s=(lh, lw))
    spec = xf.mul_(gf.conj())
    spec = spec.sum(0) if n > 1 else spec[0]                        # (C, lh, lw // 2 + 1)
    corr = torch.fft.irfft2(spec, s=(lh, lw))                       # (C, lh, lw)
    lags = torch.arange(-pad, pad + 1, dilation, device=x.device)
    corr = corr.index_select(1, lags % lh).index_select(2, lags % lw)
    return corr.unsqueeze(1).contiguous()


def split_phases(t: torch.Tensor, d: int) -> torch.Tensor:
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


def merge_phases(t: torch.Tensor, d: int, b: int, h: int, w: int,
                 memory_format: torch.memory_format) -> torch.Tensor:
    """Inverse of ``split_phases`` (crops the padding): (B*d*d, C, hd, wd) -> (B, C, H, W)."""
    _, c, hd, wd = t.shape
    t = t.permute(0, 2, 3, 1).reshape(b, d, d, hd, wd, c).permute(0, 3, 1, 4, 2, 5)
    t = t.reshape(b, hd * d, wd * d, c)[:, :h, :w].permute(0, 3, 1, 2)
    return t.contiguous(memory_format=memory_format)


def torch_forward(x: torch.Tensor, weight: torch.Tensor, bias, dilation: int) -> torch.Tensor:
    """PyTorch's stride-1 'same' depthwise conv, x (B, C, H, W), weight (C, 1, k, k) -> (B, C, H, W); a kernel
    size of :data:`~mmoverlock.ops.selection.RINGED_FORWARD_KERNELS` ringed by zeros to the size it maps to
    (:func:`~mmoverlock.ops.selection.ringed_kernel_size`). Differentiable, but the ringed form's backward is
    PyTorch's slower one at the larger size: callers ring only a forward whose gradients come from elsewhere."""
    c, k = x.shape[1], weight.shape[-1]
    size = ringed_kernel_size(x, k, dilation)
    if size != k:
        ring = (size - k) // 2
        weight, k = F.pad(weight, (ring, ring, ring, ring)), size
    return F.conv2d(x, weight, bias, 1, dilation * (k - 1) // 2, dilation, c)


def conv_backward(grad_out, x, weight, pad, dilation, mask):
    """aten.convolution_backward of a depthwise stride-1 conv: (grad_x, grad_w, grad_b)."""
    c = x.shape[1]
    return torch.ops.aten.convolution_backward(
        grad_out, x, weight, [c] if mask[2] else None, [1, 1], [pad, pad], [dilation, dilation],
        False, [0, 0], c, mask)


def paths_forward(x, weight, bias, dilation, fwd_path):
    """The CPU forward by path: PyTorch's conv (:func:`torch_forward`), or (``'poly'``, d > 1) on the polyphase
    sub-grids."""
    c, k = x.shape[1], weight.shape[-1]
    if fwd_path == POLY and dilation > 1:
        b, _, h, w = x.shape
        y = F.conv2d(split_phases(x, dilation), weight, bias, 1, (k - 1) // 2, 1, c)
        return merge_phases(y, dilation, b, h, w, memory_format(x))
    return torch_forward(x, weight, bias, dilation)


def paths_backward(grad_out, x, weight, d, ig_path, wg_path, need_x, need_w, need_b):
    """(grad_x, grad_w, grad_b) by path, None for one not needed (``need_b``: the conv has a bias)."""
    k = weight.shape[-1]
    pad = d * (k - 1) // 2
    poly_x = need_x and ig_path == POLY and d > 1
    poly_w = need_w and wg_path == POLY and d > 1
    fft_w = need_w and wg_path == FFT
    torch_x = need_x and not poly_x
    torch_w = need_w and not (poly_w or fft_w)
    grad_x = grad_w = grad_b = None
    if torch_x or torch_w:
        grad_x, grad_w, grad_b = conv_backward(grad_out, x, weight, pad, d, [torch_x, torch_w, need_b])
    elif need_b:
        grad_b = grad_out.sum((0, 2, 3))
    if poly_x or poly_w:
        b, _, h, w = x.shape
        gs = split_phases(grad_out, d)
        if poly_x:
            # the input gradient reads only the input's shape / layout, and gs has that shape
            gxs = conv_backward(gs, gs, weight, (k - 1) // 2, 1, [True, False, False])[0]
            grad_x = merge_phases(gxs, d, b, h, w, memory_format(x))
        if poly_w:
            grad_w = conv_backward(gs, split_phases(x, d), weight, (k - 1) // 2, 1, [False, True, False])[1]
    if fft_w:
        grad_w = fft_weight_grad(x, grad_out, k, d).to(weight.dtype)
    return grad_x, grad_w, grad_b


class DepthwiseConv2dPaths(torch.autograd.Function):
    """Stride-1 'same' depthwise conv with selectable forward / input-grad / weight-grad paths (CPU eager)."""

    @staticmethod
    def forward(ctx, x, weight, bias, dilation, fwd_path, ig_path, wg_path):
        y = paths_forward(x, weight, bias, dilation, fwd_path)
        ctx.save_for_backward(x, weight)
        ctx.conf = (dilation, ig_path, wg_path, bias is not None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        d, ig_path, wg_path, has_bias = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grads = paths_backward(grad_out, x, weight, d, ig_path, wg_path, need_x, need_w, need_b and has_bias)
        return (*grads, None, None, None, None)


def fft_weight_grad_any(x: torch.Tensor, grad_out: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """fft_weight_grad for every dtype: half inputs transformed in fp32 (cuFFT's half transforms take
    power-of-two sizes only), the result in x's dtype."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return fft_weight_grad(x.float(), grad_out.float(), kernel_size, dilation).to(x.dtype)
    return fft_weight_grad(x, grad_out.to(x.dtype), kernel_size, dilation)
