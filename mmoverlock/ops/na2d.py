"""Neighbourhood aggregation ``na2d_av`` (NATTEN 0.17 semantics) without NATTEN.

Every pixel (i, j) of an H x W map aggregates a k x k window of values, clamped inside the map:
the window starts at ``clamp(i - k // 2, 0, H - k)`` per axis (border pixels see a shifted window,
never padding); tap ``t = a * k + b`` is the key ``(start_i + a, start_j + b)``.

Two layouts:

* :func:`na2d_av` -- NATTEN's: attn (B, G, H, W, k*k), value (B, G, H, W, C) -> (B, G, H, W, C).
* :func:`na2d_av_channels_first` -- what the backbone uses: attn (B, G, k*k, H, W),
  value (B, G, C, H, W) -> (B, G, C, H, W); no permutes around the op.

One op, ``torch.ops.mmoverlock.na2d_av`` (channels-first), registered with ``torch.library``: autograd
(its backward is the op ``mmoverlock::na2d_av_backward``), a fake implementation for ``torch.compile``
(one graph node; only attn and value are saved for backward) and a kernel per device. On torch < 2.4 the
autograd is an ``autograd.Function`` around the same kernels, and torch 2.1 registers no fake implementation
(:mod:`mmoverlock.utils.compat`, docs/compat.md).

* **CUDA**: fused Triton kernels (:mod:`mmoverlock.ops.na2d_triton`, Triton >= 2.1): one pass over the k*k
  taps per pixel tile for the forward and grad_attn, an inverse-neighbourhood gather for grad_value; launched on
  the tensors' device. Their first use per dtype and device checks them against the reference gather
  (:mod:`mmoverlock.ops.selfcheck`). Without Triton >= 2.1, or where that check failed, CUDA runs the CPU
  kernels below (the same choice by map size), after a one-line warning saying why;
* **CPU**, chosen by map size; none materialises anything of size C*k*k*H*W, activation memory is
  O(B*G*H*W*(C + k*k)):

  - the **per-window matmuls** (maps whose pixels share at most ``WINDOW_CLASSES_MAX`` distinct clamped
    windows, e.g. 14x14 with k=13): the pixels of one window form a rectangle, aggregated by one matmul
    values (C, k*k) @ kernels (k*k, n);

  - the **tap loop** (H*W > ``DENSE_MAX_RATIO`` * k*k): for tap (a, b) the clamped gather is a slice of the
    valid windows followed by replicate padding (the map of window starts is the valid-window map,
    replicate-padded); its backward recomputes each shifted value instead of storing it;
  - the **dense operator** (small maps, e.g. stage 3/4 at 224^2 and the small-map path): the kernels are
    scattered into one (H*W, H*W) aggregation matrix per (batch, group) -- at most ``DENSE_MAX_RATIO``
    times the size of ``attn`` -- and applied with one batched matmul (BLAS), several times faster than
    looping over k*k taps of a tiny map.

One dtype rule on every path: the op takes attn and value of one floating dtype (float16, bfloat16, float32,
float64) on one device and raises a one-line ``ValueError`` naming both dtypes otherwise -- its CPU, CUDA and
fake implementations alike; the public functions (:func:`na2d_av_channels_first`, :func:`na2d_av`,
:func:`triton_na2d_av`) first promote mixed dtypes to ``torch.promote_types`` of the two, as autocast's
``promote`` policy does. Outputs and gradients are contiguous on every path.

A second op, ``torch.ops.mmoverlock.na2d_av_triton``, runs the Triton kernels on whatever device its tensors
are on (CUDA, or CPU under Triton's interpreter); it shares the fake implementation and the autograd
functions of ``mmoverlock::na2d_av`` (:func:`triton_na2d_av` calls it).

TorchScript tracing (e.g. mmengine's FLOP counter) records the op as one node, ``mmoverlock::na2d_av``;
ONNX export writes it out as the tap loop in standard ops (Slice/Pad/Mul/Add), dynamic sizes kept.
"""
import warnings
from functools import lru_cache, partial
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..utils import compat
from . import selfcheck
from .tracing import is_exporting
from .triton_common import SUPPORTED_DTYPES

__all__ = ['na2d_av', 'na2d_av_channels_first', 'na2d_av_reference', 'na2d_av_unfold', 'triton_na2d_av',
           'window_starts', 'window_keys', 'window_classes', 'check_window', 'uses_dense', 'uses_windows',
           'DENSE_MAX_RATIO', 'WINDOW_CLASSES_MAX', 'SUPPORTED_DTYPES']

#: maps with H*W <= DENSE_MAX_RATIO * k*k use the dense operator (its matrix is <= this many times ``attn``);
#: the crossover with the tap loop: tools/analysis/benchmark_cpu_paths.py, figures in docs/benchmarks.md
DENSE_MAX_RATIO = 4
#: maps whose pixels share at most this many distinct clamped windows use one matmul per window (e.g. 14x14
#: with k=13: 4 windows; 7x7 with k=7: 1); against the dense operator: the same tool and doc
WINDOW_CLASSES_MAX = 4


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
            if out is None and inplace:     # a contiguous output, whatever the inputs' strides
                out = torch.mul(weight, shifted, out=value.new_empty(value.shape))
            elif out is None:
                out = weight * shifted
            elif inplace:
                out.addcmul_(weight, shifted)
            else:
                out = out + weight * shifted
    return out


def window_keys(height, width, kernel_size: int, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Key row of every (tap row, pixel row) and key col of every (tap col, pixel col) of the clamped
    windows: (k, H) and (k, W) int64. Sizes may be traced 0-d tensors (nothing cached here)."""
    taps = torch.arange(kernel_size, device=device)
    rows = window_starts(height, kernel_size, device)[None, :] + taps[:, None]
    cols = window_starts(width, kernel_size, device)[None, :] + taps[:, None]
    return rows, cols


@lru_cache(maxsize=64)
def _dense_index(height: int, width: int, kernel_size: int, device: torch.device) -> torch.Tensor:
    """Flat position of every (tap, pixel) kernel entry in the (H*W, H*W) aggregation matrix:
    (k*k*H*W,) int64 in attn's (tap, row, col) order; entries are distinct (one key per tap)."""
    rows, cols = window_keys(height, width, kernel_size, device)
    key = rows[:, None, :, None] * width + cols[None, :, None, :]                  # (k, k, H, W)
    pixel = torch.arange(height * width, device=device).view(height, width)
    return (pixel * (height * width) + key).flatten()


def _check_dtypes(attn: torch.Tensor, value: torch.Tensor) -> None:
    """The op's one dtype rule (and one device): a one-line error naming what is wrong."""
    if attn.dtype != value.dtype:
        raise ValueError(f'na2d_av: attn is {attn.dtype} and value is {value.dtype}; the op takes one dtype '
                         f'(na2d_av_channels_first promotes both to '
                         f'{torch.promote_types(attn.dtype, value.dtype)})')
    if attn.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f'na2d_av: dtype {attn.dtype} is not supported; use float16, bfloat16, float32 or '
                         f'float64')
    if attn.device != value.device:
        raise ValueError(f'na2d_av: attn is on {attn.device} and value on {value.device}; put both on one '
                         f'device')


def _check_inputs(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> None:
    """Everything the op requires of its (channels-first) inputs: shapes, one dtype, one device."""
    _check_shapes(attn, value, kernel_size, 'channels_first')
    _check_dtypes(attn, value)


def _check_backward_inputs(grad_out: torch.Tensor, attn: torch.Tensor, value: torch.Tensor) -> None:
    _check_dtypes(attn, value)
    if grad_out.shape != value.shape or grad_out.dtype != value.dtype:
        raise ValueError(f'na2d_av_backward: grad_out {tuple(grad_out.shape)} {grad_out.dtype} does not match '
                         f'value {tuple(value.shape)} {value.dtype}')


def _promoted(attn: torch.Tensor, value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """attn and value in one dtype: the wider of the two, as autocast's ``promote`` policy casts."""
    if attn.dtype == value.dtype:
        return attn, value
    dtype = torch.promote_types(attn.dtype, value.dtype)
    return attn.to(dtype), value.to(dtype)


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


def uses_dense(height: int, width: int, kernel_size: int) -> bool:
    """Whether the CPU kernel takes the dense operator (small maps) rather than the tap loop."""
    return height * width <= DENSE_MAX_RATIO * kernel_size * kernel_size


def uses_windows(height: int, width: int, kernel_size: int) -> bool:
    """Whether the CPU kernel takes the per-window matmuls: few distinct clamped windows (maps near k)."""
    return (height - kernel_size + 1) * (width - kernel_size + 1) <= WINDOW_CLASSES_MAX


@lru_cache(maxsize=128)
def window_classes(length: int, kernel_size: int) -> Tuple[Tuple[int, int, int], ...]:
    """The positions along one axis grouped by their clamped window: ((first, end, window start), ...);
    consecutive ranges, since the start never decreases (border positions share the border window)."""
    starts = [min(max(i - kernel_size // 2, 0), length - kernel_size) for i in range(length)]
    groups, first = [], 0
    for i in range(1, length + 1):
        if i == length or starts[i] != starts[first]:
            groups.append((first, i, starts[first]))
            first = i
    return tuple(groups)


def _window_blocks(attn: torch.Tensor, value: torch.Tensor, kernel_size: int):
    """For each distinct clamped window: the pixels that use it (a rectangle) and the window itself, as
    matmul operands: (rows, cols, window rows, window cols, values (BG, C, k*k), kernels (BG, k*k, n))."""
    b, g, c, h, w = value.shape
    k = kernel_size
    for r0, r1, si in window_classes(h, k):
        for c0, c1, sj in window_classes(w, k):
            window = value[..., si:si + k, sj:sj + k].reshape(b * g, c, k * k)     # copies one window only
            kernels = attn[..., r0:r1, c0:c1].reshape(b * g, k * k, (r1 - r0) * (c1 - c0))
            yield slice(r0, r1), slice(c0, c1), slice(si, si + k), slice(sj, sj + k), window, kernels


def _windows_aggregate(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Maps with few distinct windows: all pixels of one window in one matmul, values (C, k*k) @ kernels
    (k*k, n). attn (B, G, k*k, H, W), value (B, G, C, H, W) -> (B, G, C, H, W); nothing of size HW x HW."""
    b, g, c, h, w = value.shape
    out = value.new_empty(b * g, c, h, w)
    for rows, cols, _, _, window, kernels in _window_blocks(attn, value, kernel_size):
        out[:, :, rows, cols] = torch.bmm(window, kernels).view(
            b * g, c, rows.stop - rows.start, cols.stop - cols.start)
    return out.view(b, g, c, h, w)


def _windows_backward(grad_out: torch.Tensor, attn: torch.Tensor, value: torch.Tensor, kernel_size: int,
                      attn_grad: bool, value_grad: bool
                      ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Backward of :func:`_windows_aggregate`: per window, grad_kernels = values^T @ grad_out and
    grad_values = grad_out @ kernels^T, the latter summed into the window."""
    b, g, c, h, w = value.shape
    k2 = kernel_size * kernel_size
    grad_out4 = grad_out.reshape(b * g, c, h, w)
    grad_attn = attn.new_empty(b * g, k2, h, w) if attn_grad else None
    grad_value = value.new_zeros(b * g, c, h, w) if value_grad else None
    for rows, cols, window_rows, window_cols, window, kernels in _window_blocks(attn, value, kernel_size):
        grad = grad_out4[:, :, rows, cols].reshape(b * g, c, -1)
        if attn_grad:
            grad_attn[:, :, rows, cols] = torch.bmm(window.transpose(1, 2), grad).view(
                b * g, k2, rows.stop - rows.start, cols.stop - cols.start)
        if value_grad:
            grad_value[:, :, window_rows, window_cols] += torch.bmm(grad, kernels.transpose(1, 2)).view(
                b * g, c, kernel_size, kernel_size)
    return (grad_attn.view(attn.shape) if attn_grad else None,
            grad_value.view(value.shape) if value_grad else None)


def _taps_backward(grad_out: torch.Tensor, attn: torch.Tensor, value: torch.Tensor, kernel_size: int,
                   attn_grad: bool, value_grad: bool) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Backward of the tap loop: recomputes each shifted value instead of storing k*k of them."""
    k = kernel_size
    b, g, c, h, w = value.shape
    value4 = _as_4d(value)
    grad_out = grad_out.contiguous()
    grad_attn = torch.empty_like(attn, memory_format=torch.contiguous_format) if attn_grad else None
    grad_value = value.new_zeros(value.shape) if value_grad else None
    grad_value4 = _as_4d(grad_value) if value_grad else None
    before, after = _pads(k)
    for a in range(k):
        for bb in range(k):
            t = a * k + bb
            if attn_grad:
                shifted = _shifted(value4, a, bb, k).view(b, g, c, h, w)
                grad_attn[:, :, t] = torch.linalg.vecdot(grad_out, shifted, dim=2)
            if value_grad:
                grad_shifted = _as_4d(grad_out * attn[:, :, t:t + 1])
                valid = value4[..., a:a + h - k + 1, bb:bb + w - k + 1]
                grad_valid = torch.ops.aten.replication_pad2d_backward(
                    grad_shifted, valid, [before, after, before, after])
                grad_value4[..., a:a + h - k + 1, bb:bb + w - k + 1] += grad_valid
    return grad_attn, grad_value


def _dense_matrix(attn: torch.Tensor, height: int, width: int, kernel_size: int) -> torch.Tensor:
    """The (B*G, H*W, H*W) aggregation matrices: row p holds pixel p's kernel at its window's keys."""
    hw = height * width
    index = _dense_index(height, width, kernel_size, attn.device)
    matrix = attn.new_zeros(attn.shape[0] * attn.shape[1], hw * hw)
    return matrix.index_copy(1, index, attn.reshape(matrix.shape[0], -1)).view(-1, hw, hw)


def _dense_aggregate(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Small maps: one batched matmul with the aggregation matrices.
    attn (B, G, k*k, H, W), value (B, G, C, H, W) -> (B, G, C, H, W)."""
    b, g, c, h, w = value.shape
    matrix = _dense_matrix(attn, h, w, kernel_size)
    out = torch.bmm(value.reshape(b * g, c, h * w), matrix.transpose(1, 2))
    return out.view(b, g, c, h, w)


def _dense_backward(grad_out: torch.Tensor, attn: torch.Tensor, value: torch.Tensor, kernel_size: int,
                    attn_grad: bool, value_grad: bool) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Backward of :func:`_dense_aggregate`: grad_value = grad_out @ M, grad_M = grad_out^T @ value, and
    grad_attn = grad_M read at the kernel entries."""
    b, g, c, h, w = value.shape
    grad_out = grad_out.reshape(b * g, c, h * w)
    grad_attn = grad_value = None
    if value_grad:
        grad_value = torch.bmm(grad_out, _dense_matrix(attn, h, w, kernel_size)).view(b, g, c, h, w)
    if attn_grad:
        grad_matrix = torch.bmm(grad_out.transpose(1, 2), value.reshape(b * g, c, h * w))   # (BG, HW, HW)
        index = _dense_index(h, w, kernel_size, attn.device)
        grad_attn = grad_matrix.view(b * g, -1).index_select(1, index).view(attn.shape)
    return grad_attn, grad_value


def _cpu_kernels(height: int, width: int, kernel_size: int):
    """(forward, backward) of the op on CPU (and on any device without a faster kernel), by map size:
    per-window matmuls, the dense operator or the tap loop."""
    if uses_windows(height, width, kernel_size):
        return _windows_aggregate, _windows_backward
    if uses_dense(height, width, kernel_size):
        return _dense_aggregate, _dense_backward
    return partial(_forward_taps, inplace=True), _taps_backward


def _cpu_forward(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    forward, _ = _cpu_kernels(*value.shape[-2:], kernel_size)
    return forward(attn, value, kernel_size)


def _cpu_backward(grad_out, attn, value, kernel_size, attn_grad, value_grad):
    _, backward = _cpu_kernels(*value.shape[-2:], kernel_size)
    return backward(grad_out, attn, value, kernel_size, attn_grad, value_grad)


@lru_cache(maxsize=1)
def _triton_kernels():
    """mmoverlock.ops.na2d_triton, or None where Triton is not installed or older than the kernels need
    (:func:`mmoverlock.utils.compat.triton_unusable`)."""
    if compat.triton_unusable('na2d_av') is not None:
        return None
    from . import na2d_triton
    return na2d_triton


@lru_cache(maxsize=1)
def _warn_no_triton() -> None:
    """Say once, in one line, why CUDA runs the CPU kernels."""
    warnings.warn(f"{compat.triton_unusable('na2d_av')}; na2d_av runs its CPU kernels on CUDA (slow)")


def _require_triton():
    kernels = _triton_kernels()
    if kernels is None:
        raise RuntimeError(compat.triton_unusable('na2d_av_triton'))
    return kernels


#: the first-use check's problem (B, G, C, H, W, k): borders and interior pixels, C of OverLoCK's channel block
CHECK_PROBLEM = (1, 2, 16, 9, 11, 5)
_FALLBACK = 'its CPU kernels'


def reference_with_gradients(attn: torch.Tensor, value: torch.Tensor, grad_out: torch.Tensor,
                             kernel_size: int) -> List[torch.Tensor]:
    """The reference gather and its gradients by their definitions, without autograd (the first-use check runs
    inside the op's kernel, below autograd): attn (B, G, k*k, H, W), value and grad_out (B, G, C, H, W) ->
    [out, grad_attn, grad_value] in the inputs' layouts. ``key[p, t]`` is the flat key of pixel p's tap t;
    ``out[c, p] = sum_t attn[t, p] value[c, key[p, t]]``, ``grad_attn[t, p] = sum_c grad_out[c, p]
    value[c, key[p, t]]`` and ``grad_value[c, q] = sum_{key[p, t] = q} attn[t, p] grad_out[c, p]``."""
    b, g, c, h, w = value.shape
    k = kernel_size
    taps = torch.arange(k, device=value.device)
    rows = window_starts(h, k, value.device)[:, None] + taps                    # (H, k)
    cols = window_starts(w, k, value.device)[:, None] + taps                    # (W, k)
    key = (rows[:, None, :, None] * w + cols[None, :, None, :]).reshape(h * w, k * k)
    gathered = value.reshape(b, g, c, h * w)[..., key]                          # (B, G, C, H*W, k*k)
    weights = attn.reshape(b, g, k * k, h * w).transpose(2, 3)[:, :, None]      # (B, G, 1, H*W, k*k)
    grads = grad_out.reshape(b, g, c, h * w, 1)
    out = (gathered * weights).sum(-1).view(value.shape)
    grad_attn = (gathered * grads).sum(2).transpose(2, 3).reshape(attn.shape)
    grad_value = value.new_zeros(b, g, c, h * w).index_add_(3, key.reshape(-1),
                                                            (weights * grads).reshape(b, g, c, -1))
    return [out, grad_attn, grad_value.view(value.shape)]


def check_fused_kernels(device: torch.device, dtype: torch.dtype) -> Tuple[list, list]:
    """The first-use check's computation (:mod:`mmoverlock.ops.selfcheck`): forward, grad_attn and grad_value of
    the Triton kernels on :data:`CHECK_PROBLEM` in ``dtype`` on ``device``, in each tile configuration of
    :func:`mmoverlock.ops.na2d_triton.check_tiles`, and :func:`reference_with_gradients` on the CPU in float64
    from the same rounded inputs: (kernel outputs, reference outputs)."""
    kernels = _require_triton()
    b, g, c, h, w, k = CHECK_PROBLEM
    generator = torch.Generator().manual_seed(0)
    attn = torch.randn(b, g, k * k, h, w, generator=generator, dtype=torch.float64).softmax(2).to(dtype)
    value = torch.randn(b, g, c, h, w, generator=generator, dtype=torch.float64).to(dtype)
    grad_out = torch.randn(b, g, c, h, w, generator=generator, dtype=torch.float64).to(dtype)
    reference = reference_with_gradients(attn.double(), value.double(), grad_out.double(), k)
    attn, value, grad_out = (t.to(device) for t in (attn, value, grad_out))
    got, expected = [], []
    for tiles in kernels.check_tiles():
        tiles = tiles or {}
        out = kernels.na2d_av_forward(attn, value, k, tiles=tiles.get('forward'))
        got += [out, *kernels.na2d_av_backward(grad_out, attn, value, k, tiles=tiles or None)]
        expected += reference
    return got, expected


def _fused_kernels(tensor: torch.Tensor):
    """mmoverlock.ops.na2d_triton where its kernels may compute on ``tensor``'s device in its dtype: Triton
    usable (else one warning) and the first-use check passed there (:mod:`mmoverlock.ops.selfcheck`); else
    None (the CPU kernels run on the device)."""
    kernels = _triton_kernels()
    if kernels is None:
        _warn_no_triton()
        return None
    return kernels if selfcheck.trusted('na2d_av', tensor, check_fused_kernels, _FALLBACK) else None


def _gradients(grad_attn: Optional[torch.Tensor], grad_value: Optional[torch.Tensor], attn: torch.Tensor,
               value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The backward op's outputs: contiguous gradients, and an empty tensor for one that was not asked for
    (an op cannot return None)."""
    return (attn.new_empty(0) if grad_attn is None else grad_attn.contiguous(),
            value.new_empty(0) if grad_value is None else grad_value.contiguous())


# ---------------------------------------------------------------------------------------- the registered ops
# Registered with torch.library's dispatcher-level API (define / impl / register_fake / register_autograd):
# unlike the ``torch.library.custom_op`` decorator it adds no per-call wrapper (aliasing checks, a dynamo
# guard) around the kernels (host time per call: tools/analysis/benchmark_op_overhead.py, docs/benchmarks.md).
_LIBRARY = torch.library.Library('mmoverlock', 'FRAGMENT')   # (the namespace is shared with other ops)
_LIBRARY.define('na2d_av(Tensor attn, Tensor value, SymInt kernel_size) -> Tensor')
_LIBRARY.define('na2d_av_backward(Tensor grad_out, Tensor attn, Tensor value, SymInt kernel_size, bool attn_grad, '
                'bool value_grad) -> (Tensor, Tensor)')
_LIBRARY.define('na2d_av_triton(Tensor attn, Tensor value, SymInt kernel_size) -> Tensor')
_LIBRARY.define('na2d_av_triton_backward(Tensor grad_out, Tensor attn, Tensor value, SymInt kernel_size, '
                'bool attn_grad, bool value_grad) -> (Tensor, Tensor)')


# mmoverlock::na2d_av -- the CPU kernels on CPU, the Triton kernels on CUDA
def _na2d_av_cpu(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """attn (B, G, k*k, H, W), value (B, G, C, H, W), one dtype -> (B, G, C, H, W), contiguous."""
    _check_inputs(attn, value, kernel_size)
    return _cpu_forward(attn, value, kernel_size)


def _na2d_av_cuda(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The Triton kernels once checked on the device (:func:`_fused_kernels`), else the CPU kernels there."""
    _check_inputs(attn, value, kernel_size)
    kernels = _fused_kernels(value)
    if kernels is None:
        return _cpu_forward(attn, value, kernel_size)
    return kernels.na2d_av_forward(attn, value, kernel_size)


def _na2d_av_fake(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    _check_inputs(attn, value, kernel_size)
    return value.new_empty(value.shape)


def _na2d_av_backward_cpu(grad_out: torch.Tensor, attn: torch.Tensor, value: torch.Tensor, kernel_size: int,
                          attn_grad: bool, value_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(grad_attn, grad_value) of ``mmoverlock::na2d_av``; an empty tensor for one not asked for."""
    _check_backward_inputs(grad_out, attn, value)
    return _gradients(*_cpu_backward(grad_out, attn, value, kernel_size, attn_grad, value_grad), attn, value)


def _na2d_av_backward_cuda(grad_out, attn, value, kernel_size, attn_grad, value_grad):
    _check_backward_inputs(grad_out, attn, value)
    kernels = _fused_kernels(value)
    backward = _cpu_backward if kernels is None else kernels.na2d_av_backward
    return _gradients(*backward(grad_out, attn, value, kernel_size, attn_grad, value_grad), attn, value)


def _na2d_av_backward_fake(grad_out, attn, value, kernel_size, attn_grad, value_grad):
    _check_backward_inputs(grad_out, attn, value)
    return (attn.new_empty(attn.shape if attn_grad else 0), value.new_empty(value.shape if value_grad else 0))


# mmoverlock::na2d_av_triton -- the Triton kernels on whatever device the tensors are on
def _na2d_av_triton(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The Triton kernels on the tensors' device (CUDA, or CPU under Triton's interpreter)."""
    _check_inputs(attn, value, kernel_size)
    return _require_triton().na2d_av_forward(attn, value, kernel_size)


def _na2d_av_triton_backward(grad_out: torch.Tensor, attn: torch.Tensor, value: torch.Tensor, kernel_size: int,
                             attn_grad: bool, value_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(grad_attn, grad_value) of ``mmoverlock::na2d_av_triton``; an empty tensor for one not asked for."""
    _check_backward_inputs(grad_out, attn, value)
    return _gradients(*_require_triton().na2d_av_backward(grad_out, attn, value, kernel_size, attn_grad,
                                                          value_grad), attn, value)


_LIBRARY.impl('na2d_av', _na2d_av_cpu, 'CPU')
_LIBRARY.impl('na2d_av', _na2d_av_cuda, 'CUDA')
_LIBRARY.impl('na2d_av_backward', _na2d_av_backward_cpu, 'CPU')
_LIBRARY.impl('na2d_av_backward', _na2d_av_backward_cuda, 'CUDA')
_LIBRARY.impl('na2d_av_triton', _na2d_av_triton, 'CPU')
_LIBRARY.impl('na2d_av_triton', _na2d_av_triton, 'CUDA')
_LIBRARY.impl('na2d_av_triton_backward', _na2d_av_triton_backward, 'CPU')
_LIBRARY.impl('na2d_av_triton_backward', _na2d_av_triton_backward, 'CUDA')
for _name in ('na2d_av', 'na2d_av_triton'):     # none on torch 2.1 (compat.FAKE_REGISTRATION, docs/compat.md)
    compat.register_fake(f'mmoverlock::{_name}', _na2d_av_fake, lib=_LIBRARY)
    compat.register_fake(f'mmoverlock::{_name}_backward', _na2d_av_backward_fake, lib=_LIBRARY)


# One autograd for both ops: only attn and value are saved; the backward is the matching backward op.
def _setup_context(ctx, inputs, output) -> None:
    attn, value, kernel_size = inputs
    ctx.save_for_backward(attn, value)      # nothing of size k*k*C*H*W: the backward recomputes
    ctx.kernel_size = kernel_size


def _autograd_backward(backward_op):
    """The backward of an aggregation op whose gradients ``backward_op`` computes."""
    def backward(ctx, grad_out: torch.Tensor):
        attn, value = ctx.saved_tensors
        attn_grad, value_grad = ctx.needs_input_grad[:2]
        grad_attn, grad_value = backward_op(grad_out, attn, value, ctx.kernel_size, attn_grad, value_grad)
        return (grad_attn if attn_grad else None), (grad_value if value_grad else None), None
    return backward


_NA2D_AV = torch.ops.mmoverlock.na2d_av.default
_NA2D_AV_TRITON = torch.ops.mmoverlock.na2d_av_triton.default
# (torch < 2.4: an autograd.Function with the same setup_context and backward, compat.register_autograd)
compat.register_autograd('mmoverlock::na2d_av', _autograd_backward(torch.ops.mmoverlock.na2d_av_backward.default),
                         setup_context=_setup_context, lib=_LIBRARY)
compat.register_autograd('mmoverlock::na2d_av_triton',
                         _autograd_backward(torch.ops.mmoverlock.na2d_av_triton_backward.default),
                         setup_context=_setup_context, lib=_LIBRARY)


def na2d_av_channels_first(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """attn (B, G, k*k, H, W), value (B, G, C, H, W) -> (B, G, C, H, W), contiguous:
    ``torch.ops.mmoverlock.na2d_av`` after promoting mixed dtypes to the wider one. Under ONNX export the op
    is written out as its standard-op tap loop (Slice/Pad/Mul/Add). TorchScript calls the op."""
    if torch.jit.is_scripting():
        dtype = torch.promote_types(attn.dtype, value.dtype)
        return torch.ops.mmoverlock.na2d_av(attn.to(dtype), value.to(dtype), kernel_size)
    attn, value = _promoted(attn, value)
    if is_exporting():
        _check_inputs(attn, value, kernel_size)
        return _forward_taps(attn, value, kernel_size)
    return _NA2D_AV(attn, value, kernel_size)


def triton_na2d_av(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The fused Triton kernels whatever the device (tests, benchmarks): attn (B, G, k*k, H, W), value
    (B, G, C, H, W) -> (B, G, C, H, W), contiguous, differentiable (``torch.ops.mmoverlock.na2d_av_triton``,
    mixed dtypes promoted as by :func:`na2d_av_channels_first`). CUDA tensors, or CPU tensors under Triton's
    interpreter (``TRITON_INTERPRET=1`` set before triton is first imported)."""
    _require_triton()
    attn, value = _promoted(attn, value)
    return _NA2D_AV_TRITON(attn, value, kernel_size)


def na2d_av(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """NATTEN 0.17 ``na2d_av``: attn (B, G, H, W, k*k), value (B, G, H, W, C) -> (B, G, H, W, C)."""
    _check_shapes(attn, value, kernel_size, 'channels_last')
    out = na2d_av_channels_first(attn.permute(0, 1, 4, 2, 3), value.permute(0, 1, 4, 2, 3), kernel_size)
    return out.permute(0, 1, 3, 4, 2)


def na2d_av_unfold(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The official NATTEN-free fallback (a baseline): unfold the valid windows, replicate-pad the
    window map, multiply and sum. NATTEN layout; materialises B*G*C*k*k*H*W elements."""
    _check_shapes(attn, value, kernel_size, 'channels_last')
    attn, value = _promoted(attn, value)
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
    attn, value = _promoted(attn, value)
    b, g, h, w, c = value.shape
    k = kernel_size
    taps = torch.arange(k, device=value.device)
    rows = (window_starts(h, k, value.device)[:, None] + taps)       # (H, k)
    cols = (window_starts(w, k, value.device)[:, None] + taps)       # (W, k)
    gathered = value[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # (B, G, H, W, k, k, C)
    gathered = gathered.reshape(b, g, h, w, k * k, c)
    return torch.einsum('bghwt,bghwtc->bghwc', attn, gathered)
