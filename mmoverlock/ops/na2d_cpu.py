"""The CPU kernels of ``na2d_av`` (channels-first): attn (B, G, k*k, H, W), value (B, G, C, H, W) -> (B, G, C, H, W).

Three paths, chosen by map size (:func:`mmoverlock.ops.selection.na2d_cpu_path`); none materialises anything of
size C*k*k*H*W, activation memory is O(B*G*H*W*(C + k*k)):

* the **per-window matmuls** (maps whose pixels share at most ``WINDOW_CLASSES_MAX`` distinct clamped windows,
  e.g. 14x14 with k=13): the pixels of one window form a rectangle, aggregated by one matmul
  values (C, k*k) @ kernels (k*k, n) (:func:`windows_forward`, :func:`windows_backward`);
* the **tap loop** (larger maps): for tap (a, b) the clamped gather is a slice of the
  valid windows followed by replicate padding (the map of window starts is the valid-window map,
  replicate-padded); its backward recomputes each shifted value instead of storing it (:func:`taps_forward`,
  :func:`taps_backward`). Out of place, it is also what ONNX export writes out (Slice/Pad/Mul/Add), except
  that an export of one map size writes the forward's own path where it is the per-window matmuls or the
  dense operator (:func:`windows_concat_forward`, :func:`dense_scatter_forward`);
* the **dense operator** (small maps, e.g. stage 3/4 at 224^2): the kernels are scattered into one
  (H*W, H*W) aggregation matrix per (batch, group) -- at most ``DENSE_MAX_RATIO`` times the size of ``attn``
  (``FORWARD_DENSE_MAX_RATIO`` for the forward, whose crossover lies higher) -- and applied with one batched
  matmul (BLAS), several times faster than looping over k*k taps of a tiny map (:func:`dense_forward`,
  :func:`dense_backward`).

:func:`forward` and :func:`backward` take the chosen path; :data:`PATHS` holds each path's (forward, backward)
(the crossover benchmark, tools/analysis/benchmark_cpu_paths.py, runs them all). The kernels run on any device
(CUDA runs them where its Triton kernels cannot). Inputs are checked by the op (:mod:`mmoverlock.ops.checks`).
"""
from functools import lru_cache, partial
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ..utils.compat import static_int
from .selection import na2d_cpu_path

__all__ = ['window_starts', 'window_keys', 'window_classes', 'shifted_tap', 'pads', 'taps_forward', 'taps_backward',
           'windows_forward', 'windows_concat_forward', 'windows_backward', 'dense_forward', 'dense_scatter_forward',
           'dense_backward', 'PATHS', 'FIXED_SIZE_FORMS', 'forward', 'backward']


def window_starts(length: int, kernel_size: int, device=None) -> torch.Tensor:
    """Clamped window start of every position along one axis: (length,) int64."""
    pos = torch.arange(length, device=device)
    return (pos - kernel_size // 2).clamp(0, length - kernel_size)


def pads(kernel_size: int) -> Tuple[int, int]:
    """Replicate padding (before, after) that puts the valid-window map back to the map size."""
    before = kernel_size // 2
    return before, kernel_size - 1 - before


def shifted_tap(value: torch.Tensor, a: int, b: int, kernel_size: int) -> torch.Tensor:
    """Tap (a, b) of every pixel's clamped window. value (N, C, H, W) or (B, G, C, H, W) -> the same shape.

    The valid windows' rows ``a .. a + H - k`` are sliced with the end counted from the map's end (``a - k + 1``),
    so the slice is the same whatever H: a traced graph (ONNX, TorchScript) holds constant Slice and Pad nodes
    and no shape arithmetic."""
    before, after = pads(kernel_size)
    valid = value[..., a:(a - kernel_size + 1) or None, b:(b - kernel_size + 1) or None]
    pad = (before, after, before, after) + ((0, 0) if value.dim() == 5 else ())
    return F.pad(valid, pad, mode='replicate')


def _as_4d(t: torch.Tensor) -> torch.Tensor:
    """(B, G, C, H, W) -> (B, G*C, H, W); a view for the channel-half views ContMix passes in."""
    return t.flatten(1, 2)


def taps_forward(attn: torch.Tensor, value: torch.Tensor, kernel_size: int,
                 inplace: bool = False) -> torch.Tensor:
    """The tap loop. ``inplace`` accumulates into one buffer (no autograd); otherwise out-of-place ops
    that tracers (ONNX, TorchScript) record as standard Slice/Pad/Mul/Add."""
    b, g, c, h, w = value.shape
    value4 = _as_4d(value)
    out = None
    for a in range(kernel_size):
        for bb in range(kernel_size):
            t = a * kernel_size + bb
            weight = attn[:, :, t:t + 1]
            if inplace:
                shifted = shifted_tap(value4, a, bb, kernel_size).view(b, g, c, h, w)
                if out is None:     # a contiguous output, whatever the inputs' strides
                    out = torch.mul(weight, shifted, out=value.new_empty(value.shape))
                else:
                    out.addcmul_(weight, shifted)
            else:
                # on the 5-d value: no reshape, which a traced graph would compute from the map's shape
                shifted = shifted_tap(value, a, bb, kernel_size)
                out = weight * shifted if out is None else out + weight * shifted
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


def windows_forward(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Maps with few distinct windows: all pixels of one window in one matmul, values (C, k*k) @ kernels
    (k*k, n). attn (B, G, k*k, H, W), value (B, G, C, H, W) -> (B, G, C, H, W); nothing of size HW x HW."""
    b, g, c, h, w = value.shape
    out = value.new_empty(b * g, c, h, w)
    for rows, cols, _, _, window, kernels in _window_blocks(attn, value, kernel_size):
        out[:, :, rows, cols] = torch.bmm(window, kernels).view(
            b * g, c, rows.stop - rows.start, cols.stop - cols.start)
    return out.view(b, g, c, h, w)


def windows_concat_forward(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """:func:`windows_forward` in standard ops for an export of one map size: per window a Slice of the values
    and of the kernels, one MatMul over the (B, G) batch, and the blocks joined by Concat (nothing computed from
    the batch size, which may stay dynamic). attn (B, G, k*k, H, W), value (B, G, C, H, W) -> (B, G, C, H, W)."""
    h, w = static_int(value.shape[-2]), static_int(value.shape[-1])
    k = kernel_size
    rows = []
    for r0, r1, si in window_classes(h, k):
        blocks = []
        for c0, c1, sj in window_classes(w, k):
            window = value[..., si:si + k, sj:sj + k].flatten(-2)             # (B, G, C, k*k)
            kernels = attn[..., r0:r1, c0:c1].flatten(-2)                       # (B, G, k*k, n)
            blocks.append(torch.matmul(window, kernels).unflatten(-1, (r1 - r0, c1 - c0)))
        rows.append(torch.cat(blocks, dim=-1) if len(blocks) > 1 else blocks[0])
    return torch.cat(rows, dim=-2) if len(rows) > 1 else rows[0]


def windows_backward(grad_out: torch.Tensor, attn: torch.Tensor, value: torch.Tensor, kernel_size: int,
                     attn_grad: bool, value_grad: bool
                     ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Backward of :func:`windows_forward`: per window, grad_kernels = values^T @ grad_out and
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


def taps_backward(grad_out: torch.Tensor, attn: torch.Tensor, value: torch.Tensor, kernel_size: int,
                  attn_grad: bool, value_grad: bool) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Backward of the tap loop: recomputes each shifted value instead of storing k*k of them."""
    k = kernel_size
    b, g, c, h, w = value.shape
    value4 = _as_4d(value)
    grad_out = grad_out.contiguous()
    grad_attn = torch.empty_like(attn, memory_format=torch.contiguous_format) if attn_grad else None
    grad_value = value.new_zeros(value.shape) if value_grad else None
    grad_value4 = _as_4d(grad_value) if value_grad else None
    before, after = pads(k)
    for a in range(k):
        for bb in range(k):
            t = a * k + bb
            if attn_grad:
                shifted = shifted_tap(value4, a, bb, k).view(b, g, c, h, w)
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


def dense_forward(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Small maps: one batched matmul with the aggregation matrices.
    attn (B, G, k*k, H, W), value (B, G, C, H, W) -> (B, G, C, H, W)."""
    b, g, c, h, w = value.shape
    matrix = _dense_matrix(attn, h, w, kernel_size)
    out = torch.bmm(value.reshape(b * g, c, h * w), matrix.transpose(1, 2))
    return out.view(b, g, c, h, w)


def dense_scatter_forward(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """:func:`dense_forward` in standard ops for an export of one map size: the kernels scattered into the
    transposed (H*W, H*W) aggregation matrices at constant positions (ScatterElements into zeros) and one MatMul
    (nothing computed from the batch size but the zeros' shape). attn (B, G, k*k, H, W), value (B, G, C, H, W)
    -> (B, G, C, H, W)."""
    h, w = static_int(value.shape[-2]), static_int(value.shape[-1])
    hw = h * w
    index = _dense_index(h, w, kernel_size, attn.device)          # pixel * HW + key
    transposed = (index % hw) * hw + torch.div(index, hw, rounding_mode='floor')
    kernels = attn.flatten(2)                                      # (B, G, k*k*H*W)
    matrix = kernels.new_zeros(kernels.shape[0], kernels.shape[1], hw * hw)
    matrix = matrix.scatter(2, transposed.expand_as(kernels), kernels).unflatten(-1, (hw, hw))   # row = key
    return torch.matmul(value.flatten(-2), matrix).unflatten(-1, (h, w))


def dense_backward(grad_out: torch.Tensor, attn: torch.Tensor, value: torch.Tensor, kernel_size: int,
                   attn_grad: bool, value_grad: bool) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Backward of :func:`dense_forward`: grad_value = grad_out @ M, grad_M = grad_out^T @ value, and
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


#: each CPU path's (forward, backward): forward(attn, value, k) -> out; backward(grad_out, attn, value, k,
#: attn_grad, value_grad) -> (grad_attn or None, grad_value or None)
PATHS: Dict[str, Tuple[Callable, Callable]] = {
    'windows': (windows_forward, windows_backward),
    'dense': (dense_forward, dense_backward),
    'taps': (partial(taps_forward, inplace=True), taps_backward),
}
#: the CPU forward paths an export of one map size writes in standard ops, as the eager forward computes them
#: (the tap loop, out of place, is what every other export writes)
FIXED_SIZE_FORMS: Dict[str, Callable] = {'windows': windows_concat_forward, 'dense': dense_scatter_forward}


def forward(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The op's CPU forward by the map-size rule: attn (B, G, k*k, H, W), value (B, G, C, H, W) -> (B, G, C, H,
    W), contiguous."""
    return PATHS[na2d_cpu_path(*value.shape[-2:], kernel_size, forward_only=True)][0](attn, value, kernel_size)


def backward(grad_out: torch.Tensor, attn: torch.Tensor, value: torch.Tensor, kernel_size: int, attn_grad: bool,
             value_grad: bool) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The op's CPU backward by the map-size rule: (grad_attn, grad_value), None for one not asked for."""
    return PATHS[na2d_cpu_path(*value.shape[-2:], kernel_size)][1](grad_out, attn, value, kernel_size, attn_grad,
                                                                   value_grad)
