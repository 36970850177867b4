"""Neighbourhood aggregation ``na2d_av`` (NATTEN 0.17 semantics) without NATTEN.

Every pixel (i, j) of an H x W map aggregates a k x k window of values, clamped inside the map:
the window starts at ``clamp(i - k // 2, 0, H - k)`` per axis (border pixels see a shifted window,
never padding); tap ``t = a * k + b`` is the key ``(start_i + a, start_j + b)``.

Two layouts:

* :func:`na2d_av` -- NATTEN's: attn (B, G, H, W, k*k), value (B, G, H, W, C) -> (B, G, H, W, C).
* :func:`na2d_av_channels_first` -- what the backbone uses: attn (B, G, k*k, H, W),
  value (B, G, C, H, W) -> (B, G, C, H, W); no permutes around the op.

Two lean implementations, chosen by map size (neither materialises anything of size C*k*k*H*W;
activation memory is O(B*G*H*W*(C + k*k))):

* the **tap loop** (maps with H*W > ``DENSE_MAX_RATIO`` * k*k): for tap (a, b) the clamped gather is a
  slice of the valid windows followed by replicate padding (the map of window starts is the valid-window
  map, replicate-padded); a custom autograd Function whose backward recomputes each shifted value
  instead of storing it;
* the **dense operator** (small maps, e.g. stage 3/4 at 224^2 and the small-map path): the kernels are
  scattered into one (H*W, H*W) aggregation matrix per (batch, group) -- at most ``DENSE_MAX_RATIO``
  times the size of ``attn`` -- and applied with one batched matmul (BLAS), which is several times faster
  than looping over k*k taps of a tiny map.

Tracing (ONNX export, TorchScript) records the tap loop out of place, as standard Slice/Pad/Mul/Add.
"""
from functools import lru_cache
from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ['na2d_av', 'na2d_av_channels_first', 'na2d_av_reference', 'na2d_av_unfold',
           'window_starts', 'check_window', 'DENSE_MAX_RATIO']

#: maps with H*W <= DENSE_MAX_RATIO * k*k use the dense operator (its matrix is <= this many times ``attn``);
#: 4 is about where the tap loop becomes faster on CPU (tools/analysis/benchmark_contmix.py).
DENSE_MAX_RATIO = 4


def check_window(height: int, width: int, kernel_size: int) -> None:
    """Raise a one-line error when a k x k window does not fit in the map."""
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f'na2d_av: kernel_size={kernel_size} must be a positive odd integer')
    if height < kernel_size or width < kernel_size:
        raise ValueError(f'na2d_av: feature map {height}x{width} is smaller than kernel_size={kernel_size}; '
                         f'both sides must be >= {kernel_size} (resize the map first)')


def window_starts(length: int, kernel_size: int, device=None) -> torch.Tensor:
    """Clamped window start of every position along one axis: (length,) int64."""
    pos = torch.arange(length, device=device)
    return (pos - kernel_size // 2).clamp(0, length - kernel_size)


def _pads(kernel_size: int) -> Tuple[int, int]:
    before = kernel_size // 2
    return before, kernel_size - 1 - before


def _shifted(value: torch.Tensor, a: int, b: int, kernel_size: int) -> torch.Tensor:
    """Tap (a, b) of every pixel's clamped window. value (N, C, H, W) -> (N, C, H, W)."""
    h, w = value.shape[-2:]
    before, after = _pads(kernel_size)
    valid = value[..., a:a + h - kernel_size + 1, b:b + w - kernel_size + 1]
    return F.pad(valid, (before, after, before, after), mode='replicate')


def _as_4d(t: torch.Tensor) -> torch.Tensor:
    """(B, G, C, H, W) -> (B, G*C, H, W); a view for the channel-half views ContMix passes in."""
    return t.flatten(1, 2)


class _NA2DAV(torch.autograd.Function):
    """Lean tap-loop aggregation; channels-first layout, see the module docstring."""

    @staticmethod
    def forward(ctx, attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
        ctx.save_for_backward(attn, value)
        ctx.kernel_size = kernel_size
        return _forward_taps(attn, value, kernel_size, inplace=True)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        attn, value = ctx.saved_tensors
        k = ctx.kernel_size
        b, g, c, h, w = value.shape
        value4 = _as_4d(value)
        grad_out = grad_out.contiguous()
        grad_attn = grad_value = None
        if ctx.needs_input_grad[0]:
            grad_attn = torch.empty_like(attn, memory_format=torch.contiguous_format)
        if ctx.needs_input_grad[1]:
            grad_value = value.new_zeros(value.shape)
            grad_value4 = _as_4d(grad_value)
        before, after = _pads(k)
        for a in range(k):
            for bb in range(k):
                t = a * k + bb
                if grad_attn is not None:
                    shifted = _shifted(value4, a, bb, k).view(b, g, c, h, w)
                    grad_attn[:, :, t] = torch.linalg.vecdot(grad_out, shifted, dim=2)
                if grad_value is not None:
                    grad_shifted = _as_4d(grad_out * attn[:, :, t:t + 1])
                    valid = value4[..., a:a + h - k + 1, bb:bb + w - k + 1]
                    grad_valid = torch.ops.aten.replication_pad2d_backward(
                        grad_shifted, valid, [before, after, before, after])
                    grad_value4[..., a:a + h - k + 1, bb:bb + w - k + 1] += grad_valid
        return grad_attn, grad_value, None


def _forward_taps(attn: torch.Tensor, value: torch.Tensor, kernel_size: int,
                  inplace: bool = False) -> torch.Tensor:
    """The tap loop. ``inplace`` accumulates into one buffer (no autograd); otherwise out-of-place ops
    that tracers (ONNX, TorchScript) record as standard Slice/Pad/Mul/Add."""
    b, g, c, h, w = value.shape
    value4 = _as_4d(value)
    out = None
    for a in range(kernel_size):
        for bb in range(kernel_size):
            t = a * kernel_size + bb
            shifted = _shifted(value4, a, bb, kernel_size).view(b, g, c, h, w)
            weight = attn[:, :, t:t + 1]
            if out is None:
                out = weight * shifted
            elif inplace:
                out.addcmul_(weight, shifted)
            else:
                out = out + weight * shifted
    return out


@lru_cache(maxsize=64)
def _dense_index(height: int, width: int, kernel_size: int, device: torch.device) -> torch.Tensor:
    """Flat position of every (tap, pixel) kernel entry in the (H*W, H*W) aggregation matrix:
    (k*k*H*W,) int64 in attn's (tap, row, col) order; entries are distinct (one key per tap)."""
    taps = torch.arange(kernel_size, device=device)
    rows = window_starts(height, kernel_size, device)[None, :] + taps[:, None]     # (k, H): key row
    cols = window_starts(width, kernel_size, device)[None, :] + taps[:, None]      # (k, W): key col
    key = rows[:, None, :, None] * width + cols[None, :, None, :]                  # (k, k, H, W)
    pixel = torch.arange(height * width, device=device).view(height, width)
    return (pixel * (height * width) + key).flatten()


def _dense_aggregate(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Small maps: scatter the kernels into a (H*W, H*W) matrix per (batch, group), one batched matmul.
    attn (B, G, k*k, H, W), value (B, G, C, H, W) -> (B, G, C, H, W); autograd does the backward."""
    b, g, c, h, w = value.shape
    hw = h * w
    index = _dense_index(h, w, kernel_size, attn.device)
    matrix = attn.new_zeros(b * g, hw * hw).index_copy(1, index, attn.reshape(b * g, -1))
    out = torch.bmm(value.reshape(b * g, c, hw), matrix.view(b * g, hw, hw).transpose(1, 2))
    return out.view(b, g, c, h, w)


def _check_shapes(attn: torch.Tensor, value: torch.Tensor, kernel_size: int, layout: str) -> None:
    if attn.dim() != 5 or value.dim() != 5:
        raise ValueError(f'na2d_av: expected 5-D attn and value ({layout}), '
                         f'got {tuple(attn.shape)} and {tuple(value.shape)}')
    if layout == 'channels_first':
        (ab, ag, ak, ah, aw), (vb, vg, _, vh, vw) = attn.shape, value.shape
    else:
        (ab, ag, ah, aw, ak), (vb, vg, vh, vw, _) = attn.shape, value.shape
    if ak != kernel_size * kernel_size:
        raise ValueError(f'na2d_av: attn has {ak} taps, expected kernel_size**2 = {kernel_size ** 2}')
    if (ab, ag, ah, aw) != (vb, vg, vh, vw):
        raise ValueError(f'na2d_av: attn {tuple(attn.shape)} and value {tuple(value.shape)} disagree in '
                         f'batch, groups or map size')
    check_window(vh, vw, kernel_size)


def na2d_av_channels_first(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """attn (B, G, k*k, H, W), value (B, G, C, H, W) -> (B, G, C, H, W)."""
    _check_shapes(attn, value, kernel_size, 'channels_first')
    if attn.dtype != value.dtype:
        dtype = torch.promote_types(attn.dtype, value.dtype)
        attn, value = attn.to(dtype), value.to(dtype)
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return _forward_taps(attn, value, kernel_size)
    h, w = value.shape[-2:]
    if h * w <= DENSE_MAX_RATIO * kernel_size * kernel_size:
        return _dense_aggregate(attn, value, kernel_size)
    return _NA2DAV.apply(attn, value, kernel_size)


def na2d_av(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """NATTEN 0.17 ``na2d_av``: attn (B, G, H, W, k*k), value (B, G, H, W, C) -> (B, G, H, W, C)."""
    _check_shapes(attn, value, kernel_size, 'channels_last')
    out = na2d_av_channels_first(attn.permute(0, 1, 4, 2, 3), value.permute(0, 1, 4, 2, 3), kernel_size)
    return out.permute(0, 1, 3, 4, 2)


def na2d_av_unfold(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The official NATTEN-free fallback (a baseline): unfold the valid windows, replicate-pad the
    window map, multiply and sum. NATTEN layout; materialises B*G*C*k*k*H*W elements."""
    _check_shapes(attn, value, kernel_size, 'channels_last')
    b, g, h, w, c = value.shape
    k = kernel_size
    before, after = _pads(k)
    v = value.permute(0, 1, 4, 2, 3).reshape(b * g * c, 1, h, w)
    windows = F.unfold(v, k)                                       # (BGC, k*k, L)
    windows = windows.view(b * g * c, k * k, h - k + 1, w - k + 1)
    windows = F.pad(windows, (before, after, before, after), mode='replicate')
    windows = windows.view(b, g, c, k * k, h, w).permute(0, 1, 4, 5, 3, 2)  # (B, G, H, W, k*k, C)
    return (attn.unsqueeze(-1) * windows).sum(-2)


def na2d_av_reference(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Straightforward gather by explicit window indices (NATTEN layout); for tests and clarity."""
    _check_shapes(attn, value, kernel_size, 'channels_last')
    b, g, h, w, c = value.shape
    k = kernel_size
    taps = torch.arange(k, device=value.device)
    rows = (window_starts(h, k, value.device)[:, None] + taps)       # (H, k)
    cols = (window_starts(w, k, value.device)[:, None] + taps)       # (W, k)
    gathered = value[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # (B, G, H, W, k, k, C)
    gathered = gathered.reshape(b, g, h, w, k * k, c)
    return torch.einsum('bghwt,bghwtc->bghwc', attn, gathered)
