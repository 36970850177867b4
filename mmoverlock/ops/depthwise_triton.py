"""Triton kernels of the stride-1 'same' depthwise conv2d (the DilatedReparamBlocks' and ResDWConvs' convs).

``y[n, c, i, j] = bias[c] + sum_{a, b} w[c, 0, a, b] * x[n, c, i + a*d - p, j + b*d - p]``, zero outside
the map, ``p = d * (k - 1) // 2``, odd k, dilation d >= 1; x (N, C, H, W) in any strides (NCHW,
channels-last, views). Three passes, each with one program per tile of ``BLOCK_P`` pixels (flattened
``i * W + j``) and a block of ``BLOCK_C`` channels, held as (BLOCK_P, BLOCK_C):

* **forward** -- a loop over the k*k taps; each tap loads the tile's shifted inputs (masked at the map's
  border) and one weight per channel, accumulating ``w * x``;
* **input gradient** -- the same kernel with the kernel flipped: for a symmetric 'same' padding,
  ``grad_x[i] = sum_a w[a] * grad_y[i + p - a*d] = sum_a w[k-1-a] * grad_y[i + a*d - p]``;
* **weight gradient** -- a reduction over batch and pixels, deterministic in two passes (no atomics): each
  program sums ``grad_y * shifted x`` over a fixed chunk of (batch, pixel) positions into its own row of a
  partial buffer (S, k*k, C), tap by tap; the rows are then summed by ``torch.sum`` (a fixed-order
  reduction).

Accumulation is in fp32 for fp16 / bf16 / fp32 inputs, in fp64 for fp64 (gradcheck). Outputs are new
tensors in the input's memory format (channels-last stays channels-last) unless written into given buffers.

Runs on Triton >= 2.1: only ``tl.program_id``, ``tl.arange``, ``tl.load`` / ``tl.store`` with masks,
``tl.sum``, ``tl.zeros`` and ``range`` loops are used, and Triton 2.1 compiles both kernels for sm_80 and sm_90
in every dtype (tests/test_triton21.py). This module defines its ``@triton.jit`` functions on import, so
``TRITON_INTERPRET=1`` (Triton >= 3.0's CPU interpreter, used by the tests) must be set before it is first
imported; :mod:`mmoverlock.ops.depthwise_op` imports it lazily. The ops check the kernels on their first use
per dtype and device (:mod:`mmoverlock.ops.selfcheck`).
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .triton_common import (INTERPRET, accumulator, accumulator_dtype, cdiv, check_kernel_tensors,
                            memory_format, next_power_of_2, output_buffer)

__all__ = ['depthwise_forward', 'depthwise_input_grad', 'depthwise_weight_grad', 'triton_depthwise_conv2d',
           'INTERPRET', 'KERNELS', 'tile_config', 'weight_grad_chunks']

#: tile sizes on a GPU: pixels x channels held in registers per program, and the largest channel block
GPU_TILE_ELEMENTS = 2048
GPU_MAX_BLOCK_C = 32
GPU_MAX_BLOCK_P = 128
#: weight gradient on a GPU: about this many programs (S chunks x channel blocks) share the reduction
GPU_WEIGHT_GRAD_PROGRAMS = 512
#: the interpreter runs every program as numpy calls: few, large programs are much faster there
INTERPRETER_TILE_ELEMENTS = 1 << 16

#: The tile settings in use: the GPU's, or the interpreter's large tiles. Tests set ``GPU_TILING = True``
#: under the interpreter to run the GPU's tiling (many programs, chunked reductions).
GPU_TILING = not INTERPRET


@triton.jit
def _dw_conv_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr, C, H, W,
        sx_n, sx_c, sx_h, sx_w,
        sw_c, sw_h, sw_w,
        sy_n, sy_c, sy_h, sy_w,
        K: tl.constexpr, DIL: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """y (N, C, H, W) = depthwise 'same' conv of x with w (C, k, k strides given) [+ bias]."""
    n = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = p < H * W
    mask_c = c < C
    i = p // W
    j = p % W
    pad = DIL * (K - 1) // 2
    x_tile = x_ptr + n * sx_n + (c * sx_c)[None, :]                              # (1, BLOCK_C)
    w_tile = w_ptr + c * sw_c                                                    # (BLOCK_C,)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    for a in range(K):
        ii = i + (a * DIL - pad)
        ok_i = mask_p & (ii >= 0) & (ii < H)
        for b in range(K):
            jj = j + (b * DIL - pad)
            ok = ok_i & (jj >= 0) & (jj < W)
            weight = tl.load(w_tile + a * sw_h + b * sw_w, mask=mask_c, other=0.).to(ACC)
            shifted = tl.load(x_tile + (ii * sx_h + jj * sx_w)[:, None], mask=ok[:, None] & mask_c[None, :],
                              other=0.)
            acc += shifted.to(ACC) * weight[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=mask_c, other=0.).to(ACC)[None, :]
    y_tile = y_ptr + n * sy_n + (c * sy_c)[None, :] + (i * sy_h + j * sy_w)[:, None]
    tl.store(y_tile, acc.to(y_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


@triton.jit
def _dw_weight_grad_kernel(
        x_ptr, g_ptr, part_ptr, C, H, W, total, tiles,
        sx_n, sx_c, sx_h, sx_w,
        sg_n, sg_c, sg_h, sg_w,
        sp_s, sp_t,
        K: tl.constexpr, DIL: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """part[s, a*K + b, c] = sum over chunk s of the flattened (n, i, j) positions of
    ``g[n, c, i, j] * x[n, c, i + a*d - p, j + b*d - p]``; chunk s = ``tiles`` tiles of BLOCK_P positions."""
    s = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = c < C
    hw = H * W
    pad = DIL * (K - 1) // 2
    first = s * tiles * BLOCK_P
    part_tile = part_ptr + s.to(tl.int64) * sp_s + c
    for a in range(K):
        for b in range(K):
            acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
            for t in range(tiles):
                q = first + t * BLOCK_P + tl.arange(0, BLOCK_P)
                mask_q = q < total
                n = (q // hw).to(tl.int64)
                r = q % hw
                i = r // W
                j = r % W
                ii = i + (a * DIL - pad)
                jj = j + (b * DIL - pad)
                ok = mask_q & (ii >= 0) & (ii < H) & (jj >= 0) & (jj < W)
                grad = tl.load(g_ptr + (n * sg_n + i * sg_h + j * sg_w)[:, None] + (c * sg_c)[None, :],
                               mask=mask_q[:, None] & mask_c[None, :], other=0.)
                shifted = tl.load(x_ptr + (n * sx_n + ii * sx_h + jj * sx_w)[:, None] + (c * sx_c)[None, :],
                                  mask=ok[:, None] & mask_c[None, :], other=0.)
                acc += grad.to(ACC) * shifted.to(ACC)
            tl.store(part_tile + (a * K + b) * sp_t, tl.sum(acc, axis=0), mask=mask_c)


#: the kernels by name. Their tiles come from :func:`tile_config`, not from autotuning: the tuning policy of
#: :mod:`mmoverlock.ops.triton_common` says why
KERNELS = {'conv': _dw_conv_kernel, 'weight_grad': _dw_weight_grad_kernel}


def tile_config(channels: int, pixels: int) -> Tuple[int, int]:
    """(BLOCK_P, BLOCK_C) for a map of ``pixels`` positions: powers of two (``tl.arange`` needs them), their
    product within the tile budget of the GPU (or of the interpreter's large tiles, ``GPU_TILING`` off)."""
    if GPU_TILING:
        block_c = min(next_power_of_2(channels), GPU_MAX_BLOCK_C)
        block_p = max(16, min(GPU_TILE_ELEMENTS // block_c, next_power_of_2(pixels), GPU_MAX_BLOCK_P))
    else:
        block_c = min(next_power_of_2(channels), 64)
        block_p = max(16, min(INTERPRETER_TILE_ELEMENTS // block_c, next_power_of_2(pixels)))
    return block_p, block_c


def _check(x: torch.Tensor, weight: Optional[torch.Tensor], others=(), kernel_size: Optional[int] = None) -> None:
    """One-line errors for shapes, dtypes and devices the kernels do not take."""
    k = weight.shape[-1] if weight is not None else kernel_size
    if x.dim() != 4 or k % 2 != 1 or (weight is not None and tuple(weight.shape) != (x.shape[1], 1, k, k)):
        got = tuple(weight.shape) if weight is not None else f'kernel_size={k}'
        raise ValueError(f'triton_depthwise_conv2d: expected x (N, C, H, W) and weight (C, 1, k, k) with odd k, '
                         f'got {tuple(x.shape)} and {got}')
    check_kernel_tensors('triton_depthwise_conv2d', 'x', x, (weight, *others), INTERPRET)


def _output(buffer: Optional[torch.Tensor], like: torch.Tensor, name: str) -> torch.Tensor:
    """A new tensor like ``like`` in its memory format, or ``buffer`` (any strides) after checking it fits."""
    return output_buffer('triton_depthwise_conv2d', buffer, like, name, memory_format(like))


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dilation: int,
          out: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    k = weight.shape[-1]
    block_p, block_c = tile_config(c, h * w)
    grid = (cdiv(h * w, block_p), n, cdiv(c, block_c))
    _dw_conv_kernel[grid](
        x, weight, weight if bias is None else bias, out, c, h, w, *x.stride(),
        weight.stride(0), weight.stride(2), weight.stride(3), *out.stride(),
        K=k, DIL=dilation, HAS_BIAS=bias is not None, BLOCK_P=block_p, BLOCK_C=block_c,
        ACC=accumulator(x.dtype))
    return out


def depthwise_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                      dilation: int = 1, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x (N, C, H, W), weight (C, 1, k, k), bias (C,) or None, one dtype -> y (N, C, H, W) in x's memory
    format (or written into ``out``, a buffer of x's shape and dtype, any strides)."""
    _check(x, weight, (bias, out))
    return _conv(x, weight, bias, int(dilation), _output(out, x, 'out'))


def depthwise_input_grad(grad_out: torch.Tensor, weight: torch.Tensor, dilation: int = 1,
                         like: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """grad_x (N, C, H, W) of :func:`depthwise_forward` from grad_out (N, C, H, W): the forward kernel with
    the flipped weight. Laid out like ``like`` (the input; default grad_out), or written into ``out``."""
    _check(grad_out, weight, (out, ))
    out = _output(out, grad_out if like is None else like, 'grad_x')
    return _conv(grad_out, weight.flip(-2, -1), None, int(dilation), out)


def weight_grad_chunks(total: int, block_p: int, channel_blocks: int) -> Tuple[int, int]:
    """(S, tiles): the reduction over ``total`` (batch x pixel) positions runs in S chunks of ``tiles`` tiles
    of ``block_p`` positions, about GPU_WEIGHT_GRAD_PROGRAMS programs in all (one chunk per program under
    the interpreter's large tiles unless GPU_TILING)."""
    tiles_total = cdiv(total, block_p)
    if not GPU_TILING:
        return tiles_total, 1
    target = max(1, GPU_WEIGHT_GRAD_PROGRAMS // channel_blocks)
    tiles = cdiv(tiles_total, target)
    return cdiv(tiles_total, tiles), tiles


def depthwise_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel_size: int, dilation: int = 1,
                          out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """grad_w (C, 1, k, k) of :func:`depthwise_forward`, dtype of x: the per-chunk partial sums (S, k*k, C)
    in the accumulator dtype, then their sum over S (deterministic, no atomics)."""
    _check(x, None, (grad_out, ), kernel_size=int(kernel_size))
    if grad_out.shape != x.shape:
        raise ValueError(f'triton_depthwise_conv2d: grad_out {tuple(grad_out.shape)} must have the input\'s '
                         f'shape {tuple(x.shape)}')
    n, c, h, w = x.shape
    k, dilation = int(kernel_size), int(dilation)
    block_p, block_c = tile_config(c, h * w)
    channel_blocks = cdiv(c, block_c)
    chunks, tiles = weight_grad_chunks(n * h * w, block_p, channel_blocks)
    partial = torch.empty(chunks, k * k, c, dtype=accumulator_dtype(x.dtype), device=x.device)
    _dw_weight_grad_kernel[(chunks, channel_blocks)](
        x, grad_out, partial, c, h, w, n * h * w, tiles, *x.stride(), *grad_out.stride(),
        partial.stride(0), partial.stride(1),
        K=k, DIL=dilation, BLOCK_P=block_p, BLOCK_C=block_c, ACC=accumulator(x.dtype))
    grad_w = partial.sum(0).t().reshape(c, 1, k, k).to(x.dtype)
    if out is None:
        return grad_w
    if out.shape != grad_w.shape or out.dtype != grad_w.dtype:
        raise ValueError(f'triton_depthwise_conv2d: grad_w buffer {tuple(out.shape)} {out.dtype} does not match '
                         f'{tuple(grad_w.shape)} {grad_w.dtype}')
    return out.copy_(grad_w)


class _TritonDepthwiseConv2d(torch.autograd.Function):
    """The Triton kernels with autograd, outside the registered op (tests, benchmarks, CPU interpreter)."""

    @staticmethod
    def forward(ctx, x, weight, bias, dilation):
        ctx.save_for_backward(x, weight)
        ctx.dilation = dilation
        ctx.has_bias = bias is not None
        return depthwise_forward(x, weight, bias, dilation)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_out = grad_out.to(x.dtype)
        grad_x = depthwise_input_grad(grad_out, weight, ctx.dilation, like=x) if need_x else None
        grad_w = depthwise_weight_grad(x, grad_out, weight.shape[-1], ctx.dilation) if need_w else None
        grad_b = grad_out.sum((0, 2, 3)) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


def triton_depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                            dilation: int = 1) -> torch.Tensor:
    """Differentiable Triton depthwise conv: x (N, C, H, W), weight (C, 1, k, k), bias (C,) or None, one
    dtype -> (N, C, H, W) in x's memory format. CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``."""
    _check(x, weight, (bias, ))
    return _TritonDepthwiseConv2d.apply(x, weight, bias, int(dilation))
