"""The ops' input checks: one-line errors that name the bad value and what would be right.

``na2d_av``: the window fits the map, the shapes of attn and value agree (either layout), one floating dtype and
one device (:func:`na2d_inputs`), and the public functions' dtype promotion (:func:`promoted`). ``depthwise_conv2d``:
4-D tensors, a (C, 1, k, k) weight with odd k, dilation >= 1, a known ``choice``.
"""
from typing import Sequence, Tuple

import torch

from .triton_common import SUPPORTED_DTYPES

__all__ = ['check_window', 'na2d_shapes', 'na2d_dtypes', 'na2d_inputs', 'na2d_backward_inputs', 'promoted',
           'depthwise_args', 'depthwise_choice']


def check_window(height: int, width: int, kernel_size: int) -> None:
    """Raise a one-line error when a k x k window does not fit in the map."""
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f'na2d_av: kernel_size={kernel_size} must be a positive odd integer')
    if height < kernel_size or width < kernel_size:
        raise ValueError(f'na2d_av: feature map {height}x{width} is smaller than kernel_size={kernel_size}; '
                         f'both sides must be >= {kernel_size} (resize the map first)')


def na2d_shapes(attn: torch.Tensor, value: torch.Tensor, kernel_size: int, layout: str) -> None:
    """attn and value of ``layout`` 'channels_first' ((B, G, k*k, H, W), (B, G, C, H, W)) or 'channels_last'
    (NATTEN's: (B, G, H, W, k*k), (B, G, H, W, C)) that agree, with a window that fits."""
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


def na2d_dtypes(attn: torch.Tensor, value: torch.Tensor) -> None:
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


def na2d_inputs(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> None:
    """Everything the op requires of its (channels-first) inputs: shapes, one dtype, one device."""
    na2d_shapes(attn, value, kernel_size, 'channels_first')
    na2d_dtypes(attn, value)


def na2d_backward_inputs(grad_out: torch.Tensor, attn: torch.Tensor, value: torch.Tensor) -> None:
    """The backward op's inputs: attn and value as the forward's, grad_out of value's shape and dtype."""
    na2d_dtypes(attn, value)
    if grad_out.shape != value.shape or grad_out.dtype != value.dtype:
        raise ValueError(f'na2d_av_backward: grad_out {tuple(grad_out.shape)} {grad_out.dtype} does not match '
                         f'value {tuple(value.shape)} {value.dtype}')


def promoted(attn: torch.Tensor, value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """attn and value in one dtype: the wider of the two, as autocast's ``promote`` policy casts."""
    if attn.dtype == value.dtype:
        return attn, value
    dtype = torch.promote_types(attn.dtype, value.dtype)
    return attn.to(dtype), value.to(dtype)


def depthwise_args(x: torch.Tensor, weight: torch.Tensor, dilation) -> int:
    """x (B, C, H, W), weight (C, 1, k, k) with odd k, dilation >= 1: the dilation as an int."""
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
    return dilation


def depthwise_choice(choice: str, choices: Sequence[str]) -> None:
    """``choice`` is one of ``choices``."""
    if choice not in choices:
        raise ValueError(f"depthwise_conv2d: choice={choice!r} is not one of {tuple(choices)}")
