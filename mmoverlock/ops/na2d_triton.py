"""Fused Triton kernels for ``na2d_av`` (channels-first layout, NATTEN 0.17 clamped windows).

attn (B, G, k*k, H, W), value (B, G, C, H, W) -> out (B, G, C, H, W); the window of pixel (i, j) starts at
``(clamp(i - k // 2, 0, H - k), clamp(j - k // 2, 0, W - k))`` and tap ``t = a * k + b`` is key
``(start_i + a, start_j + b)`` (see :mod:`mmoverlock.ops.na2d`).

Three kernels, as NATTEN 0.17's CUDA kernels are organised; one program handles one (batch, group), a tile
of ``BLOCK_P`` pixels (flattened i * W + j) and a block of ``BLOCK_C`` channels, held as (BLOCK_P, BLOCK_C):
Triton then lays neighbouring pixels on neighbouring threads, so a warp reads a run of one channel's row:

* **forward** -- loop over the k*k taps; each tap loads the tile's attention weights (BLOCK_P,) and the
  clamped neighbours of all BLOCK_C channels (BLOCK_P, BLOCK_C), accumulating ``w * v``;
* **grad_attn** -- loop over the taps: ``grad_attn[t, p] = sum_c grad_out[c, p] * value[c, key(p, t)]``;
* **grad_value** -- the *inverse neighbourhood* gather: key q receives from every pixel p whose window holds
  it, at tap ``key - start(p)``. Along one axis those pixels form the range ``[lo(q), hi(q)]`` (wider than
  k next to a border, where windows are clamped), so the gradient is a gather -- deterministic, no atomics.

Accumulation is in fp32 for fp16 / bf16 / fp32 inputs and in fp64 for fp64 (gradcheck). Inputs may be any
strided views (ContMix passes the channel halves of one map); outputs are contiguous.

This module defines the ``@triton.jit`` functions on import, so ``TRITON_INTERPRET=1`` (Triton's CPU
interpreter, used by the tests) must be set before it is first imported; :func:`mmoverlock.ops.triton_na2d_av`
imports it lazily.
"""
import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

__all__ = ['na2d_av_forward', 'na2d_av_backward', 'triton_na2d_av', 'INTERPRET']

#: Triton's interpreter (CPU tensors) is active: set before this module was imported.
INTERPRET = os.environ.get('TRITON_INTERPRET', '0') == '1'

#: largest channel block of one program (more channels: more programs, or a loop in grad_attn)
MAX_BLOCK_C = 64
#: pixels x channels held in registers per program on a GPU
GPU_TILE_ELEMENTS = 2048
#: the interpreter runs every program as numpy calls: few, large programs are much faster there
INTERPRETER_TILE_ELEMENTS = 1 << 16


@triton.jit
def _clamped_start(pos, length, K: tl.constexpr):
    """Start of the clamped k-window of every position along one axis."""
    return tl.minimum(tl.maximum(pos - K // 2, 0), length - K)


@triton.jit
def _na2d_av_forward_kernel(
        attn_ptr, value_ptr, out_ptr, G, C, H, W,
        sa_b, sa_g, sa_t, sa_h, sa_w,
        sv_b, sv_g, sv_c, sv_h, sv_w,
        so_b, so_g, so_c, so_h, so_w,
        K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    pid_bg = tl.program_id(0).to(tl.int64)
    batch, group = pid_bg // G, pid_bg % G
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = p < H * W
    mask = mask_p[:, None] & (c < C)[None, :]
    i = p // W
    j = p % W
    start_i = _clamped_start(i, H, K)
    start_j = _clamped_start(j, W, K)
    attn_tile = attn_ptr + batch * sa_b + group * sa_g + i * sa_h + j * sa_w                 # (P,)
    value_tile = value_ptr + batch * sv_b + group * sv_g + (c * sv_c)[None, :]               # (1, C)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    for a in range(K):
        row = (start_i + a) * sv_h
        for b in range(K):
            weight = tl.load(attn_tile + (a * K + b) * sa_t, mask=mask_p, other=0.).to(ACC)
            neighbour = tl.load(value_tile + (row + (start_j + b) * sv_w)[:, None], mask=mask, other=0.)
            acc += weight[:, None] * neighbour.to(ACC)
    out_tile = out_ptr + batch * so_b + group * so_g + (c * so_c)[None, :] + (i * so_h + j * so_w)[:, None]
    tl.store(out_tile, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _na2d_av_grad_attn_kernel(
        grad_out_ptr, value_ptr, grad_attn_ptr, G, C, H, W,
        sg_b, sg_g, sg_c, sg_h, sg_w,
        sv_b, sv_g, sv_c, sv_h, sv_w,
        sa_b, sa_g, sa_t, sa_h, sa_w,
        K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, NUM_C_BLOCKS: tl.constexpr,
        ACC: tl.constexpr):
    pid_bg = tl.program_id(0).to(tl.int64)
    batch, group = pid_bg // G, pid_bg % G
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.arange(0, BLOCK_C)
    mask_p = p < H * W
    i = p // W
    j = p % W
    start_i = _clamped_start(i, H, K)
    start_j = _clamped_start(j, W, K)
    grad_out_tile = grad_out_ptr + batch * sg_b + group * sg_g + (i * sg_h + j * sg_w)[:, None]   # (P, 1)
    value_tile = value_ptr + batch * sv_b + group * sv_g
    grad_attn_tile = grad_attn_ptr + batch * sa_b + group * sa_g + i * sa_h + j * sa_w            # (P,)
    if NUM_C_BLOCKS == 1:   # the usual case (C <= 64): grad_out of the tile stays in registers
        mask = mask_p[:, None] & (c < C)[None, :]
        grad_out = tl.load(grad_out_tile + (c * sg_c)[None, :], mask=mask, other=0.).to(ACC)
    for a in range(K):
        row = (start_i + a) * sv_h
        for b in range(K):
            key = (row + (start_j + b) * sv_w)[:, None]
            if NUM_C_BLOCKS == 1:
                neighbour = tl.load(value_tile + (c * sv_c)[None, :] + key, mask=mask, other=0.)
                total = tl.sum(grad_out * neighbour.to(ACC), axis=1)
            else:
                total = tl.zeros((BLOCK_P, ), dtype=ACC)
                for c0 in range(0, NUM_C_BLOCKS * BLOCK_C, BLOCK_C):
                    cc = c0 + c
                    mask_c = mask_p[:, None] & (cc < C)[None, :]
                    go = tl.load(grad_out_tile + (cc * sg_c)[None, :], mask=mask_c, other=0.).to(ACC)
                    neighbour = tl.load(value_tile + (cc * sv_c)[None, :] + key, mask=mask_c, other=0.)
                    total += tl.sum(go * neighbour.to(ACC), axis=1)
            tl.store(grad_attn_tile + (a * K + b) * sa_t, total.to(grad_attn_ptr.dtype.element_ty), mask=mask_p)


@triton.jit
def _inverse_range(q, length, K: tl.constexpr):
    """Pixels whose clamped window holds key q along one axis: the range [lo, hi] (lo <= hi)."""
    first = q - K + 1                      # the lowest window start that still reaches q
    lo = tl.where(first <= 0, 0, first + K // 2)
    hi = tl.where(q >= length - K, length - 1, q + K // 2)
    return lo, hi


@triton.jit
def _na2d_av_grad_value_kernel(
        grad_out_ptr, attn_ptr, grad_value_ptr, G, C, H, W,
        sg_b, sg_g, sg_c, sg_h, sg_w,
        sa_b, sa_g, sa_t, sa_h, sa_w,
        sv_b, sv_g, sv_c, sv_h, sv_w,
        K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    pid_bg = tl.program_id(0).to(tl.int64)
    batch, group = pid_bg // G, pid_bg % G
    q = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_q = q < H * W
    mask_c = (c < C)[None, :]
    qi = q // W
    qj = q % W
    lo_i, hi_i = _inverse_range(qi, H, K)
    lo_j, hi_j = _inverse_range(qj, W, K)
    # loop bounds: the widest range in the tile (k inside the map, up to k + k // 2 next to a border)
    span_i = tl.max(tl.where(mask_q, hi_i - lo_i + 1, 0), axis=0)
    span_j = tl.max(tl.where(mask_q, hi_j - lo_j + 1, 0), axis=0)
    attn_tile = attn_ptr + batch * sa_b + group * sa_g
    grad_out_tile = grad_out_ptr + batch * sg_b + group * sg_g + (c * sg_c)[None, :]
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    # (while loops: a range() bound computed in the kernel does not run under the interpreter with numpy >= 2)
    di = tl.full((), 0, tl.int32)
    while di < span_i:
        i = lo_i + di
        ok_i = mask_q & (i <= hi_i)
        tap_row = qi - _clamped_start(i, H, K)        # in [0, K) wherever ok_i
        dj = tl.full((), 0, tl.int32)
        while dj < span_j:
            j = lo_j + dj
            ok = ok_i & (j <= hi_j)
            tap = tap_row * K + qj - _clamped_start(j, W, K)
            weight = tl.load(attn_tile + tap * sa_t + i * sa_h + j * sa_w, mask=ok, other=0.).to(ACC)
            grad_out = tl.load(grad_out_tile + (i * sg_h + j * sg_w)[:, None], mask=ok[:, None] & mask_c,
                               other=0.)
            acc += weight[:, None] * grad_out.to(ACC)
            dj += 1
        di += 1
    grad_value_tile = (grad_value_ptr + batch * sv_b + group * sv_g + (c * sv_c)[None, :]
                       + (qi * sv_h + qj * sv_w)[:, None])
    tl.store(grad_value_tile, acc.to(grad_value_ptr.dtype.element_ty), mask=mask_q[:, None] & mask_c)


def _blocks(channels: int, pixels: int) -> Tuple[int, int]:
    """(BLOCK_P, BLOCK_C): powers of two (tl.arange needs them), pixels x channels <= the tile budget."""
    block_c = min(triton.next_power_of_2(channels), MAX_BLOCK_C)
    budget = INTERPRETER_TILE_ELEMENTS if INTERPRET else GPU_TILE_ELEMENTS
    block_p = max(16, min(budget // block_c, triton.next_power_of_2(pixels), 1024 if INTERPRET else 128))
    return block_p, block_c


def _accumulator(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _check(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> None:
    if attn.device != value.device or attn.dtype != value.dtype:
        raise ValueError(f'triton_na2d_av: attn and value must share device and dtype, got '
                         f'{attn.device}/{attn.dtype} and {value.device}/{value.dtype}')
    if attn.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f'triton_na2d_av: dtype {attn.dtype} is not supported; use float16, bfloat16, '
                         f'float32 or float64')
    if attn.device.type == 'cpu' and not INTERPRET:
        raise RuntimeError('triton_na2d_av: CPU tensors need Triton\'s interpreter: set TRITON_INTERPRET=1 '
                           'before importing mmoverlock, or pass CUDA tensors')


def _launch_grid(bg: int, pixels: int, block_p: int, channel_blocks: int = 1) -> Tuple[int, int, int]:
    return bg, triton.cdiv(pixels, block_p), channel_blocks


def _output(buffer: Optional[torch.Tensor], like: torch.Tensor, name: str) -> torch.Tensor:
    """A new contiguous tensor like ``like``, or ``buffer`` (any strides) after checking it fits."""
    if buffer is None:
        return torch.empty(like.shape, dtype=like.dtype, device=like.device)
    if buffer.shape != like.shape or buffer.dtype != like.dtype or buffer.device != like.device:
        raise ValueError(f'triton_na2d_av: {name} buffer {tuple(buffer.shape)} {buffer.dtype} {buffer.device} '
                         f'does not match {tuple(like.shape)} {like.dtype} {like.device}')
    return buffer


def na2d_av_forward(attn: torch.Tensor, value: torch.Tensor, kernel_size: int,
                    out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """attn (B, G, k*k, H, W), value (B, G, C, H, W) of one dtype -> (B, G, C, H, W), contiguous unless
    written into ``out`` (a buffer of value's shape and dtype, any strides)."""
    _check(attn, value, kernel_size)
    b, g, c, h, w = value.shape
    out = _output(out, value, 'out')
    block_p, block_c = _blocks(c, h * w)
    grid = _launch_grid(b * g, h * w, block_p, triton.cdiv(c, block_c))
    _na2d_av_forward_kernel[grid](
        attn, value, out, g, c, h, w, *attn.stride(), *value.stride(), *out.stride(),
        K=kernel_size, BLOCK_P=block_p, BLOCK_C=block_c, ACC=_accumulator(value.dtype))
    return out


def na2d_av_backward(grad_out: torch.Tensor, attn: torch.Tensor, value: torch.Tensor, kernel_size: int,
                     attn_grad: bool = True, value_grad: bool = True,
                     grad_attn: Optional[torch.Tensor] = None, grad_value: Optional[torch.Tensor] = None
                     ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of :func:`na2d_av_forward`: (grad_attn like attn, grad_value like value), contiguous unless
    written into the given buffers; None for a gradient not asked for."""
    _check(attn, value, kernel_size)
    grad_out = grad_out.to(value.dtype)
    b, g, c, h, w = value.shape
    block_p, block_c = _blocks(c, h * w)
    acc = _accumulator(value.dtype)
    grad_attn = _output(grad_attn, attn, 'grad_attn') if attn_grad else None
    grad_value = _output(grad_value, value, 'grad_value') if value_grad else None
    if attn_grad:
        _na2d_av_grad_attn_kernel[_launch_grid(b * g, h * w, block_p)](
            grad_out, value, grad_attn, g, c, h, w, *grad_out.stride(), *value.stride(), *grad_attn.stride(),
            K=kernel_size, BLOCK_P=block_p, BLOCK_C=block_c, NUM_C_BLOCKS=triton.cdiv(c, block_c), ACC=acc)
    if value_grad:
        _na2d_av_grad_value_kernel[_launch_grid(b * g, h * w, block_p, triton.cdiv(c, block_c))](
            grad_out, attn, grad_value, g, c, h, w, *grad_out.stride(), *attn.stride(), *grad_value.stride(),
            K=kernel_size, BLOCK_P=block_p, BLOCK_C=block_c, ACC=acc)
    return grad_attn, grad_value


class _TritonNA2DAV(torch.autograd.Function):
    """The Triton kernels with autograd, outside the registered op (tests, benchmarks, CPU interpreter)."""

    @staticmethod
    def forward(ctx, attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
        ctx.save_for_backward(attn, value)
        ctx.kernel_size = kernel_size
        return na2d_av_forward(attn, value, kernel_size)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        attn, value = ctx.saved_tensors
        grad_attn, grad_value = na2d_av_backward(grad_out, attn, value, ctx.kernel_size,
                                                 ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return grad_attn, grad_value, None


def triton_na2d_av(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Differentiable Triton ``na2d_av``, channels-first: attn (B, G, k*k, H, W), value (B, G, C, H, W)
    -> (B, G, C, H, W). CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``."""
    return _TritonNA2DAV.apply(attn, value, kernel_size)
