"""Fused Triton kernels for ``na2d_av`` (channels-first layout, NATTEN 0.17 clamped windows).

attn (B, G, k*k, H, W), value (B, G, C, H, W) -> out (B, G, C, H, W); the window of pixel (i, j) starts at
``(clamp(i - k // 2, 0, H - k), clamp(j - k // 2, 0, W - k))`` and tap ``t = a * k + b`` is key
``(start_i + a, start_j + b)`` (see :mod:`mmoverlock.ops.functional`).

Three kernels, as NATTEN 0.17's CUDA kernels are organised. One program handles one (batch, group), a tile of
pixels and a block of ``BLOCK_C`` channels, held as (pixels, BLOCK_C): Triton then lays neighbouring pixels on
neighbouring threads, so a warp reads a run of one channel's row:

* **forward** -- a tile of ``BLOCK_P`` pixels (flattened i * W + j); a loop over the k*k taps, each loading the
  tile's attention weights (BLOCK_P,) and the clamped neighbours of all BLOCK_C channels (BLOCK_P, BLOCK_C),
  accumulating ``w * v``;
* **grad_attn** -- the same tiles; a loop over the taps:
  ``grad_attn[t, p] = sum_c grad_out[c, p] * value[c, key(p, t)]``;
* **grad_value** -- the *inverse neighbourhood* gather over a 2-D tile of ``BLOCK_H x BLOCK_W`` keys: key q
  receives from every pixel p whose window holds it, at tap ``key - start(p)``. Along one axis those pixels
  form the range ``[lo(q), hi(q)]``: k wide inside the map, up to k + k // 2 next to a border (windows are
  clamped there). The loop runs over the widest range of the tile, so an interior tile runs k x k
  iterations and only tiles that touch a border pay the wider span. A gather: deterministic, no atomics.

Tiles, ``num_warps`` and ``num_stages`` are chosen by ``triton.autotune`` among a few configurations per kernel
(:data:`FORWARD_CONFIGS`, :data:`GRAD_ATTN_CONFIGS`, :data:`GRAD_VALUE_CONFIGS`), keyed on k, C, the map-size
class (the next power of two of ``H * W``) and -- Triton >= 3 adds it to every key -- the tensors' dtypes; the
channel block is ``min(next_power_of_2(C), MAX_BLOCK_C)``. Under Triton's interpreter every kernel runs one
fixed configuration (:data:`INTERPRETER_TILES`). Launches run on the tensors' CUDA device, whichever device is
current.

Accumulation is in fp32 for fp16 / bf16 / fp32 inputs and in fp64 for fp64 (gradcheck). Inputs may be any
strided views (ContMix passes the channel halves of one map); outputs are contiguous.

Runs on Triton >= 2.1 (torch 2.1's Triton 2.1 compiles every configuration for sm_80 and sm_90 in every dtype:
tests/test_triton21.py); the tuning is the one policy of :func:`mmoverlock.ops.triton_common.tuned`. This
module defines the ``@triton.jit`` functions on import, so
``TRITON_INTERPRET=1`` (Triton >= 3.0's CPU interpreter, used by the tests) must be set before it is first
imported; :mod:`mmoverlock.ops.na2d_op` imports it lazily and checks the kernels on their first use per dtype and
device (:mod:`mmoverlock.ops.selfcheck`).
"""
from typing import Dict, List, Optional, Tuple

import torch
import triton
import triton.language as tl

from .triton_common import (INTERPRET, SUPPORTED_DTYPES, accumulator, cdiv, check_kernel_tensors,
                            device_guard, next_power_of_2, output_buffer, tuned)

__all__ = ['na2d_av_forward', 'na2d_av_backward', 'check_tiles', 'INTERPRET', 'MAX_BLOCK_C', 'FORWARD_CONFIGS',
           'GRAD_ATTN_CONFIGS', 'GRAD_VALUE_CONFIGS', 'INTERPRETER_TILES', 'SUPPORTED_DTYPES']

#: largest channel block of one program (more channels: more programs, or a loop in grad_attn)
MAX_BLOCK_C = 32


#: The configurations ``triton.autotune`` measures on a GPU, per kernel (4 + 3 + 3 per tuning key). Every one
#: compiles for sm_90 without register spills at k = 13 with channel blocks of 16 and MAX_BLOCK_C, for fp32,
#: bf16 and fp64 (tests/test_na2d_triton.py::test_kernels_compile_for_hopper_without_spills).
FORWARD_CONFIGS = [
    triton.Config({'BLOCK_P': 64}, num_warps=2, num_stages=2),
    triton.Config({'BLOCK_P': 128}, num_warps=4, num_stages=2),
    triton.Config({'BLOCK_P': 128}, num_warps=4, num_stages=3),
    triton.Config({'BLOCK_P': 256}, num_warps=8, num_stages=2),
]
GRAD_ATTN_CONFIGS = [
    triton.Config({'BLOCK_P': 64}, num_warps=2, num_stages=2),
    triton.Config({'BLOCK_P': 128}, num_warps=4, num_stages=2),
    triton.Config({'BLOCK_P': 128}, num_warps=4, num_stages=3),
]
GRAD_VALUE_CONFIGS = [      # while loops: nothing to pipeline, num_stages stays 1
    triton.Config({'BLOCK_H': 8, 'BLOCK_W': 16}, num_warps=4, num_stages=1),
    triton.Config({'BLOCK_H': 4, 'BLOCK_W': 32}, num_warps=4, num_stages=1),
    triton.Config({'BLOCK_H': 16, 'BLOCK_W': 16}, num_warps=8, num_stages=1),
]
#: what decides the best configuration (besides the dtypes, which Triton >= 3 adds to every key); the kernels'
#: argument PIXEL_CLASS, the next power of two of H * W, is there for this key only (the kernels ignore it)
TUNING_KEY = ['K', 'C', 'PIXEL_CLASS']

#: The one configuration of each kernel under the interpreter, which runs every program as numpy calls:
#: few, large programs (clamped to the map: a block never exceeds the next power of two of its extent).
INTERPRETER_TILES = {'forward': dict(BLOCK_P=1024), 'grad_attn': dict(BLOCK_P=1024),
                     'grad_value': dict(BLOCK_H=32, BLOCK_W=32)}


@triton.jit
def clamped_start(pos, length, K: tl.constexpr):
    """Start of the clamped k-window of every position along one axis."""
    return tl.minimum(tl.maximum(pos - K // 2, 0), length - K)


@triton.jit
def _na2d_av_forward_kernel(
        attn_ptr, value_ptr, out_ptr, G, C, H, W, PIXEL_CLASS,
        sa_b, sa_g, sa_t, sa_h, sa_w,
        sv_b, sv_g, sv_c, sv_h, sv_w,
        so_b, so_g, so_c, so_h, so_w,
        K: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr):
    pid_bg = tl.program_id(0).to(tl.int64)
    batch, group = pid_bg // G, pid_bg % G
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = p < H * W
    mask = mask_p[:, None] & (c < C)[None, :]
    i = p // W
    j = p % W
    start_i = clamped_start(i, H, K)
    start_j = clamped_start(j, W, K)
    attn_tile = attn_ptr + batch * sa_b + group * sa_g + i * sa_h + j * sa_w                 # (P,)
    value_base = value_ptr + batch * sv_b + group * sv_g                                     # scalar
    channel_offsets = (c * sv_c)[None, :]                                                    # (1, C) int32
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    for a in range(K):
        row = (start_i + a) * sv_h
        for b in range(K):
            weight = tl.load(attn_tile + (a * K + b) * sa_t, mask=mask_p, other=0.).to(ACC)
            neighbour = tl.load(value_base + (channel_offsets + (row + (start_j + b) * sv_w)[:, None]), mask=mask,
                                other=0.)
            acc += weight[:, None] * neighbour.to(ACC)
    out_tile = out_ptr + batch * so_b + group * so_g + ((c * so_c)[None, :] + (i * so_h + j * so_w)[:, None])
    tl.store(out_tile, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _na2d_av_grad_attn_kernel(
        grad_out_ptr, value_ptr, grad_attn_ptr, G, C, H, W, PIXEL_CLASS,
        sg_b, sg_g, sg_c, sg_h, sg_w,
        sv_b, sv_g, sv_c, sv_h, sv_w,
        sa_b, sa_g, sa_t, sa_h, sa_w,
        K: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr, NUM_C_BLOCKS: tl.constexpr,
        BLOCK_P: tl.constexpr):
    pid_bg = tl.program_id(0).to(tl.int64)
    batch, group = pid_bg // G, pid_bg % G
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.arange(0, BLOCK_C)
    mask_p = p < H * W
    i = p // W
    j = p % W
    start_i = clamped_start(i, H, K)
    start_j = clamped_start(j, W, K)
    grad_out_base = grad_out_ptr + batch * sg_b + group * sg_g                                     # scalar
    pixel_offsets = (i * sg_h + j * sg_w)[:, None]                                                # (P, 1)
    value_base = value_ptr + batch * sv_b + group * sv_g                                          # scalar
    grad_attn_tile = grad_attn_ptr + batch * sa_b + group * sa_g + i * sa_h + j * sa_w            # (P,)
    if NUM_C_BLOCKS == 1:   # the usual case (C <= BLOCK_C): grad_out of the tile stays in registers
        mask = mask_p[:, None] & (c < C)[None, :]
        grad_out = tl.load(grad_out_base + ((c * sg_c)[None, :] + pixel_offsets), mask=mask, other=0.).to(ACC)
    for a in range(K):
        row = (start_i + a) * sv_h
        for b in range(K):
            key = (row + (start_j + b) * sv_w)[:, None]
            if NUM_C_BLOCKS == 1:
                neighbour = tl.load(value_base + ((c * sv_c)[None, :] + key), mask=mask, other=0.)
                total = tl.sum(grad_out * neighbour.to(ACC), axis=1)
            else:
                total = tl.zeros((BLOCK_P, ), dtype=ACC)
                for c0 in range(0, NUM_C_BLOCKS * BLOCK_C, BLOCK_C):
                    cc = c0 + c
                    mask_c = mask_p[:, None] & (cc < C)[None, :]
                    go = tl.load(grad_out_base + ((cc * sg_c)[None, :] + pixel_offsets), mask=mask_c,
                                 other=0.).to(ACC)
                    neighbour = tl.load(value_base + ((cc * sv_c)[None, :] + key), mask=mask_c, other=0.)
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
        grad_out_ptr, attn_ptr, grad_value_ptr, G, C, H, W, PIXEL_CLASS,
        sg_b, sg_g, sg_c, sg_h, sg_w,
        sa_b, sa_g, sa_t, sa_h, sa_w,
        sv_b, sv_g, sv_c, sv_h, sv_w,
        K: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr, BLOCK_H: tl.constexpr,
        BLOCK_W: tl.constexpr):
    pid_bg = tl.program_id(0).to(tl.int64)
    batch, group = pid_bg // G, pid_bg % G
    tiles_w = tl.cdiv(W, BLOCK_W)
    tile = tl.program_id(1)
    local = tl.arange(0, BLOCK_H * BLOCK_W)
    qi = (tile // tiles_w) * BLOCK_H + local // BLOCK_W
    qj = (tile % tiles_w) * BLOCK_W + local % BLOCK_W
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_q = (qi < H) & (qj < W)
    mask_c = (c < C)[None, :]
    lo_i, hi_i = _inverse_range(qi, H, K)
    lo_j, hi_j = _inverse_range(qj, W, K)
    # loop bounds: the widest range in the tile (k inside the map, up to k + k // 2 next to a border)
    span_i = tl.max(tl.where(mask_q, hi_i - lo_i + 1, 0), axis=0)
    span_j = tl.max(tl.where(mask_q, hi_j - lo_j + 1, 0), axis=0)
    attn_base = attn_ptr + batch * sa_b + group * sa_g                          # scalar
    grad_out_base = grad_out_ptr + batch * sg_b + group * sg_g                  # scalar
    channel_offsets = (c * sg_c)[None, :]                                       # (1, C) int32
    acc = tl.zeros((BLOCK_H * BLOCK_W, BLOCK_C), dtype=ACC)
    # (while loops: a range() bound computed in the kernel does not run under the interpreter with numpy >= 2;
    # the counters start as span * 0, a scalar of the bound's type: Triton 2.1 refuses a 0-d tl.full)
    di = span_i * 0
    while di < span_i:
        i = lo_i + di
        ok_i = mask_q & (i <= hi_i)
        tap_row = qi - clamped_start(i, H, K)        # in [0, K) wherever ok_i
        dj = span_j * 0
        while dj < span_j:
            j = lo_j + dj
            ok = ok_i & (j <= hi_j)
            tap = tap_row * K + qj - clamped_start(j, W, K)
            weight = tl.load(attn_base + (tap * sa_t + i * sa_h + j * sa_w), mask=ok, other=0.).to(ACC)
            grad_out = tl.load(grad_out_base + (channel_offsets + (i * sg_h + j * sg_w)[:, None]),
                               mask=ok[:, None] & mask_c, other=0.)
            acc += weight[:, None] * grad_out.to(ACC)
            dj += 1
        di += 1
    grad_value_tile = (grad_value_ptr + batch * sv_b + group * sv_g
                       + ((c * sv_c)[None, :] + (qi * sv_h + qj * sv_w)[:, None]))
    tl.store(grad_value_tile, acc.to(grad_value_ptr.dtype.element_ty), mask=mask_q[:, None] & mask_c)


#: the plain kernels and their tuned forms (None under the interpreter), by name
KERNELS = {'forward': _na2d_av_forward_kernel, 'grad_attn': _na2d_av_grad_attn_kernel,
           'grad_value': _na2d_av_grad_value_kernel}
TUNED_KERNELS = {'forward': tuned(_na2d_av_forward_kernel, FORWARD_CONFIGS, TUNING_KEY),
                 'grad_attn': tuned(_na2d_av_grad_attn_kernel, GRAD_ATTN_CONFIGS, TUNING_KEY),
                 'grad_value': tuned(_na2d_av_grad_value_kernel, GRAD_VALUE_CONFIGS, TUNING_KEY)}


def check_tiles() -> List[Optional[Dict[str, Dict[str, int]]]]:
    """The tile configurations the first-use check (:mod:`mmoverlock.ops.selfcheck`) runs, each the ``tiles``
    of :func:`na2d_av_forward` / :func:`na2d_av_backward` (``{'forward': ..., 'grad_attn': ...,
    'grad_value': ...}``): on a GPU every autotuning configuration of every kernel, with its ``num_warps`` and
    ``num_stages`` (the i-th configurations of the three kernels together: 4 rounds); under the interpreter its one
    fixed configuration (``None``)."""
    if INTERPRET:
        return [None]
    configs = {'forward': FORWARD_CONFIGS, 'grad_attn': GRAD_ATTN_CONFIGS, 'grad_value': GRAD_VALUE_CONFIGS}
    rounds = max(len(c) for c in configs.values())
    return [{name: dict(c[i % len(c)].kwargs, num_warps=c[i % len(c)].num_warps,
                        num_stages=c[i % len(c)].num_stages) for name, c in configs.items()} for i in range(rounds)]


def _launch(name: str, grid, args: tuple, tiles: Optional[Dict[str, int]]) -> None:
    """Launch kernel ``name``: with the given ``tiles`` (meta-parameters, e.g. ``dict(BLOCK_P=32)``, and
    optionally ``num_warps`` / ``num_stages``: the plain kernel), else the interpreter's fixed tiles, else the
    autotuned kernel."""
    if tiles is not None:
        KERNELS[name][grid](*args, **tiles)
    elif INTERPRET:
        KERNELS[name][grid](*args, **_interpreter_tiles(name, args))
    else:
        TUNED_KERNELS[name][grid](*args)


def _interpreter_tiles(name: str, args: tuple) -> Dict[str, int]:
    """:data:`INTERPRETER_TILES`, clamped to the map (args[5:7] are H and W)."""
    height, width = args[5], args[6]
    tiles = INTERPRETER_TILES[name]
    if name == 'grad_value':
        return dict(BLOCK_H=min(tiles['BLOCK_H'], next_power_of_2(height)),
                    BLOCK_W=min(tiles['BLOCK_W'], next_power_of_2(width)))
    return dict(BLOCK_P=max(16, min(tiles['BLOCK_P'], next_power_of_2(height * width))))


def _block_c(channels: int) -> int:
    return min(next_power_of_2(channels), MAX_BLOCK_C)


def _check(attn: torch.Tensor, value: torch.Tensor) -> None:
    """One-line errors for what the kernels cannot take (shapes are checked by :mod:`mmoverlock.ops.checks`)."""
    check_kernel_tensors('triton na2d_av', 'attn', attn, (value, ), INTERPRET)


def _output(buffer: Optional[torch.Tensor], like: torch.Tensor, name: str) -> torch.Tensor:
    """A new contiguous tensor like ``like``, or ``buffer`` (any strides) after checking it fits."""
    return output_buffer('triton na2d_av', buffer, like, name)


def na2d_av_forward(attn: torch.Tensor, value: torch.Tensor, kernel_size: int,
                    out: Optional[torch.Tensor] = None, tiles: Optional[Dict[str, int]] = None) -> torch.Tensor:
    """attn (B, G, k*k, H, W), value (B, G, C, H, W) of one dtype -> (B, G, C, H, W), contiguous unless
    written into ``out`` (a buffer of value's shape and dtype, any strides). ``tiles`` (e.g.
    ``dict(BLOCK_P=32)``) replaces the tuned or fixed tile configuration."""
    _check(attn, value)
    b, g, c, h, w = value.shape
    out = _output(out, value, 'out')
    block_c = _block_c(c)
    args = (attn, value, out, g, c, h, w, next_power_of_2(h * w), *attn.stride(), *value.stride(),
            *out.stride(), kernel_size, block_c, accumulator(value.dtype))
    channel_blocks = cdiv(c, block_c)
    with device_guard(value):
        _launch('forward', lambda meta: (b * g, cdiv(h * w, meta['BLOCK_P']), channel_blocks), args, tiles)
    return out


def na2d_av_backward(grad_out: torch.Tensor, attn: torch.Tensor, value: torch.Tensor, kernel_size: int,
                     attn_grad: bool = True, value_grad: bool = True,
                     grad_attn: Optional[torch.Tensor] = None, grad_value: Optional[torch.Tensor] = None,
                     tiles: Optional[Dict[str, Dict[str, int]]] = None
                     ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of :func:`na2d_av_forward`: grad_out (B, G, C, H, W) -> (grad_attn like attn, grad_value like
    value), contiguous unless written into the given buffers; None for a gradient not asked for. ``tiles``
    (``{'grad_attn': dict(BLOCK_P=...), 'grad_value': dict(BLOCK_H=..., BLOCK_W=...)}``) replaces the tuned or
    fixed tile configurations."""
    _check(attn, value)
    if grad_out.dtype != value.dtype:
        raise ValueError(f'triton na2d_av: grad_out is {grad_out.dtype}, expected {value.dtype} like value')
    b, g, c, h, w = value.shape
    block_c = _block_c(c)
    channel_blocks = cdiv(c, block_c)
    common = (g, c, h, w, next_power_of_2(h * w))
    constexprs = (kernel_size, block_c, accumulator(value.dtype))
    tiles = tiles or {}
    grad_attn = _output(grad_attn, attn, 'grad_attn') if attn_grad else None
    grad_value = _output(grad_value, value, 'grad_value') if value_grad else None
    with device_guard(value):
        if attn_grad:
            _launch('grad_attn', lambda meta: (b * g, cdiv(h * w, meta['BLOCK_P']), 1),
                    (grad_out, value, grad_attn, *common, *grad_out.stride(), *value.stride(), *grad_attn.stride(),
                     *constexprs, channel_blocks), tiles.get('grad_attn'))
        if value_grad:
            _launch('grad_value', lambda meta: (b * g, cdiv(h, meta['BLOCK_H'])
                                                * cdiv(w, meta['BLOCK_W']), channel_blocks),
                    (grad_out, attn, grad_value, *common, *grad_out.stride(), *attn.stride(), *grad_value.stride(),
                     *constexprs), tiles.get('grad_value'))
    return grad_attn, grad_value
