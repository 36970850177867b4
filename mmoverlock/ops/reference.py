"""The reference implementations of the ops (the baselines the kernels are checked and timed against).

* :func:`na2d_av_reference` -- ``na2d_av`` as a gather by explicit window indices (NATTEN layout), for tests and
  clarity; :func:`na2d_av_unfold` -- the official NATTEN-free fallback (unfold + replicate pad), materialising
  B*G*C*k*k*H*W elements; :func:`na2d_av_reference_with_gradients` -- output and gradients by their definitions
  without autograd (the fused kernels' first-use check runs below autograd);
* :func:`depthwise_conv2d_reference_with_gradients` -- the depthwise conv and its gradients by PyTorch's conv and
  ``aten.convolution_backward``.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F

import mmoverlock.ops.checks as checks

from .depthwise_cpu import conv_backward
from .na2d_cpu import pads, window_starts

__all__ = ['na2d_av_reference', 'na2d_av_unfold', 'na2d_av_reference_with_gradients',
           'depthwise_conv2d_reference_with_gradients']


def na2d_av_reference_with_gradients(attn: torch.Tensor, value: torch.Tensor, grad_out: torch.Tensor,
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


def na2d_av_unfold(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The official NATTEN-free fallback (a baseline): unfold the valid windows, replicate-pad the
    window map, multiply and sum. NATTEN layout; materialises B*G*C*k*k*H*W elements."""
    checks.na2d_shapes(attn, value, kernel_size, 'channels_last')
    attn, value = checks.promoted(attn, value)
    b, g, h, w, c = value.shape
    k = kernel_size
    before, after = pads(k)
    v = value.permute(0, 1, 4, 2, 3).reshape(b * g * c, 1, h, w)
    windows = F.unfold(v, k)                                       # (BGC, k*k, L)
    windows = windows.view(b * g * c, k * k, h - k + 1, w - k + 1)
    windows = F.pad(windows, (before, after, before, after), mode='replicate')
    windows = windows.view(b, g, c, k * k, h, w).permute(0, 1, 4, 5, 3, 2)  # (B, G, H, W, k*k, C)
    return (attn.unsqueeze(-1) * windows).sum(-2)


def na2d_av_reference(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Straightforward gather by explicit window indices (NATTEN layout); for tests and clarity."""
    checks.na2d_shapes(attn, value, kernel_size, 'channels_last')
    attn, value = checks.promoted(attn, value)
    b, g, h, w, c = value.shape
    k = kernel_size
    taps = torch.arange(k, device=value.device)
    rows = (window_starts(h, k, value.device)[:, None] + taps)       # (H, k)
    cols = (window_starts(w, k, value.device)[:, None] + taps)       # (W, k)
    gathered = value[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # (B, G, H, W, k, k, C)
    gathered = gathered.reshape(b, g, h, w, k * k, c)
    return torch.einsum('bghwt,bghwtc->bghwc', attn, gathered)


def depthwise_conv2d_reference_with_gradients(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                              grad_out: torch.Tensor, dilation: int) -> List[torch.Tensor]:
    """PyTorch's depthwise conv and its backward without autograd: x and grad_out (N, C, H, W), weight
    (C, 1, k, k), bias (C,) or None -> [out, grad_x, grad_weight]."""
    c, k = x.shape[1], weight.shape[-1]
    pad = dilation * (k - 1) // 2
    return [F.conv2d(x, weight, bias, 1, pad, dilation, c),
            *conv_backward(grad_out, x, weight, pad, dilation, [True, True, False])[:2]]
