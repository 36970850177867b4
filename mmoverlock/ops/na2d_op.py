"""The registration of ``na2d_av`` with ``torch.library``: two ops, their kernel per device, fake implementations
and autograd.

* ``torch.ops.mmoverlock.na2d_av`` (channels-first: attn (B, G, k*k, H, W), value (B, G, C, H, W) ->
  (B, G, C, H, W)): the CPU kernels (:mod:`mmoverlock.ops.na2d_cpu`) on CPU (:func:`cpu_forward`); on CUDA
  (:func:`cuda_forward`) the fused Triton kernels (:mod:`mmoverlock.ops.na2d_triton`, Triton >= 2.1) once
  their first-use check passed in the dtype on the device (:mod:`mmoverlock.ops.selfcheck`), else the CPU kernels
  there after a one-line warning saying why. Its backward is the op ``mmoverlock::na2d_av_backward``.
* ``torch.ops.mmoverlock.na2d_av_triton``: the Triton kernels on whatever device its tensors are on (CUDA, or CPU
  under Triton's interpreter); it shares the fake implementation and the autograd of ``mmoverlock::na2d_av``.

A fake implementation for ``torch.compile`` (one graph node; only attn and value are saved for backward). On
torch < 2.4 the autograd is an ``autograd.Function`` around the same kernels, and torch 2.1 registers no fake
implementation (:mod:`mmoverlock.utils.compat`, docs/compat.md). Registered with torch.library's
dispatcher-level API (define / impl / register_fake / register_autograd): unlike the ``torch.library.custom_op``
decorator it adds no per-call wrapper (aliasing checks, a dynamo guard) around the kernels (host time per call:
tools/analysis/benchmark_op_overhead.py, docs/benchmarks.md). Every kernel checks its inputs
(:mod:`mmoverlock.ops.checks`); outputs and gradients are contiguous. The public functions are in
:mod:`mmoverlock.ops.functional`.
"""
import warnings
from functools import lru_cache
from typing import Optional, Tuple

import torch

import mmoverlock.ops.checks as checks
import mmoverlock.ops.na2d_cpu as na2d_cpu
import mmoverlock.ops.selfcheck as selfcheck

from ..utils import compat
from .reference import na2d_av_reference_with_gradients

__all__ = ['NA2D_AV', 'NA2D_AV_TRITON', 'CHECK_PROBLEM', 'FALLBACK', 'triton_kernels', 'require_triton',
           'check_fused_kernels', 'fused_kernels', 'cpu_forward', 'cpu_backward', 'cuda_forward', 'cuda_backward',
           'triton_forward', 'triton_backward', 'fake_forward', 'fake_backward']


@lru_cache(maxsize=1)
def triton_kernels():
    """mmoverlock.ops.na2d_triton, or None where Triton is not installed or older than the kernels need
    (:func:`mmoverlock.utils.compat.triton_unusable`)."""
    if compat.triton_unusable('na2d_av') is not None:
        return None
    import mmoverlock.ops.na2d_triton as na2d_triton
    return na2d_triton


@lru_cache(maxsize=1)
def warn_no_triton() -> None:
    """Say once, in one line, why CUDA runs the CPU kernels."""
    warnings.warn(f"{compat.triton_unusable('na2d_av')}; na2d_av runs its CPU kernels on CUDA (slow)")


def require_triton():
    """mmoverlock.ops.na2d_triton, or a one-line RuntimeError saying why Triton cannot run it."""
    kernels = triton_kernels()
    if kernels is None:
        raise RuntimeError(compat.triton_unusable('na2d_av_triton'))
    return kernels


#: the first-use check's problem (B, G, C, H, W, k): borders and interior pixels, C of OverLoCK's channel block
CHECK_PROBLEM = (1, 2, 16, 9, 11, 5)
FALLBACK = 'its CPU kernels'


def check_fused_kernels(device: torch.device, dtype: torch.dtype) -> Tuple[list, list]:
    """The first-use check's computation (:mod:`mmoverlock.ops.selfcheck`): forward, grad_attn and grad_value of
    the Triton kernels on :data:`CHECK_PROBLEM` in ``dtype`` on ``device``, in each tile configuration of
    :func:`mmoverlock.ops.na2d_triton.check_tiles`, and
    :func:`mmoverlock.ops.reference.na2d_av_reference_with_gradients` on the CPU in float64 from the same rounded
    inputs: (kernel outputs, reference outputs)."""
    kernels = require_triton()
    b, g, c, h, w, k = CHECK_PROBLEM
    generator = torch.Generator().manual_seed(0)
    attn = torch.randn(b, g, k * k, h, w, generator=generator, dtype=torch.float64).softmax(2).to(dtype)
    value = torch.randn(b, g, c, h, w, generator=generator, dtype=torch.float64).to(dtype)
    grad_out = torch.randn(b, g, c, h, w, generator=generator, dtype=torch.float64).to(dtype)
    reference = na2d_av_reference_with_gradients(attn.double(), value.double(), grad_out.double(), k)
    attn, value, grad_out = (t.to(device) for t in (attn, value, grad_out))
    got, expected = [], []
    for tiles in kernels.check_tiles():
        tiles = tiles or {}
        out = kernels.na2d_av_forward(attn, value, k, tiles=tiles.get('forward'))
        got += [out, *kernels.na2d_av_backward(grad_out, attn, value, k, tiles=tiles or None)]
        expected += reference
    return got, expected


def fused_kernels(tensor: torch.Tensor):
    """mmoverlock.ops.na2d_triton where its kernels may compute on ``tensor``'s device in its dtype: Triton
    usable (else one warning) and the first-use check passed there (:mod:`mmoverlock.ops.selfcheck`); else
    None (the CPU kernels run on the device)."""
    kernels = triton_kernels()
    if kernels is None:
        warn_no_triton()
        return None
    return kernels if selfcheck.trusted('na2d_av', tensor, check_fused_kernels, FALLBACK) else None


def gradients(grad_attn: Optional[torch.Tensor], grad_value: Optional[torch.Tensor], attn: torch.Tensor,
              value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The backward op's outputs: contiguous gradients, and an empty tensor for one that was not asked for
    (an op cannot return None)."""
    return (attn.new_empty(0) if grad_attn is None else grad_attn.contiguous(),
            value.new_empty(0) if grad_value is None else grad_value.contiguous())


# ---------------------------------------------------------------------------------------- the registered ops
_LIBRARY = torch.library.Library('mmoverlock', 'FRAGMENT')   # (the namespace is shared with other ops)
_LIBRARY.define('na2d_av(Tensor attn, Tensor value, SymInt kernel_size) -> Tensor')
_LIBRARY.define('na2d_av_backward(Tensor grad_out, Tensor attn, Tensor value, SymInt kernel_size, bool attn_grad, '
                'bool value_grad) -> (Tensor, Tensor)')
_LIBRARY.define('na2d_av_triton(Tensor attn, Tensor value, SymInt kernel_size) -> Tensor')
_LIBRARY.define('na2d_av_triton_backward(Tensor grad_out, Tensor attn, Tensor value, SymInt kernel_size, '
                'bool attn_grad, bool value_grad) -> (Tensor, Tensor)')


# mmoverlock::na2d_av -- the CPU kernels on CPU, the Triton kernels on CUDA
def cpu_forward(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """attn (B, G, k*k, H, W), value (B, G, C, H, W), one dtype -> (B, G, C, H, W), contiguous."""
    checks.na2d_inputs(attn, value, kernel_size)
    return na2d_cpu.forward(attn, value, kernel_size)


def cuda_forward(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The Triton kernels once checked on the device (:func:`fused_kernels`), else the CPU kernels there."""
    checks.na2d_inputs(attn, value, kernel_size)
    kernels = fused_kernels(value)
    if kernels is None:
        return na2d_cpu.forward(attn, value, kernel_size)
    return kernels.na2d_av_forward(attn, value, kernel_size)


def fake_forward(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The ops' fake implementation: an empty output of value's shape (inputs checked)."""
    checks.na2d_inputs(attn, value, kernel_size)
    return value.new_empty(value.shape)


def cpu_backward(grad_out: torch.Tensor, attn: torch.Tensor, value: torch.Tensor, kernel_size: int,
                 attn_grad: bool, value_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(grad_attn, grad_value) of ``mmoverlock::na2d_av``; an empty tensor for one not asked for."""
    checks.na2d_backward_inputs(grad_out, attn, value)
    return gradients(*na2d_cpu.backward(grad_out, attn, value, kernel_size, attn_grad, value_grad), attn, value)


def cuda_backward(grad_out, attn, value, kernel_size, attn_grad, value_grad):
    """(grad_attn, grad_value) by the Triton kernels once checked on the device, else by the CPU kernels."""
    checks.na2d_backward_inputs(grad_out, attn, value)
    kernels = fused_kernels(value)
    backward = na2d_cpu.backward if kernels is None else kernels.na2d_av_backward
    return gradients(*backward(grad_out, attn, value, kernel_size, attn_grad, value_grad), attn, value)


def fake_backward(grad_out, attn, value, kernel_size, attn_grad, value_grad):
    """The backward ops' fake implementation: empty gradients (empty of size 0 for one not asked for)."""
    checks.na2d_backward_inputs(grad_out, attn, value)
    return (attn.new_empty(attn.shape if attn_grad else 0), value.new_empty(value.shape if value_grad else 0))


# mmoverlock::na2d_av_triton -- the Triton kernels on whatever device the tensors are on
def triton_forward(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The Triton kernels on the tensors' device (CUDA, or CPU under Triton's interpreter)."""
    checks.na2d_inputs(attn, value, kernel_size)
    return require_triton().na2d_av_forward(attn, value, kernel_size)


def triton_backward(grad_out: torch.Tensor, attn: torch.Tensor, value: torch.Tensor, kernel_size: int,
                    attn_grad: bool, value_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(grad_attn, grad_value) of ``mmoverlock::na2d_av_triton``; an empty tensor for one not asked for."""
    checks.na2d_backward_inputs(grad_out, attn, value)
    return gradients(*require_triton().na2d_av_backward(grad_out, attn, value, kernel_size, attn_grad,
                                                        value_grad), attn, value)


_LIBRARY.impl('na2d_av', cpu_forward, 'CPU')
_LIBRARY.impl('na2d_av', cuda_forward, 'CUDA')
_LIBRARY.impl('na2d_av_backward', cpu_backward, 'CPU')
_LIBRARY.impl('na2d_av_backward', cuda_backward, 'CUDA')
_LIBRARY.impl('na2d_av_triton', triton_forward, 'CPU')
_LIBRARY.impl('na2d_av_triton', triton_forward, 'CUDA')
_LIBRARY.impl('na2d_av_triton_backward', triton_backward, 'CPU')
_LIBRARY.impl('na2d_av_triton_backward', triton_backward, 'CUDA')
for _name in ('na2d_av', 'na2d_av_triton'):     # none on torch 2.1 (compat.FAKE_REGISTRATION, docs/compat.md)
    compat.register_fake(f'mmoverlock::{_name}', fake_forward, lib=_LIBRARY)
    compat.register_fake(f'mmoverlock::{_name}_backward', fake_backward, lib=_LIBRARY)


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


NA2D_AV = torch.ops.mmoverlock.na2d_av.default
NA2D_AV_TRITON = torch.ops.mmoverlock.na2d_av_triton.default
# (torch < 2.4: an autograd.Function with the same setup_context and backward, compat.register_autograd)
compat.register_autograd('mmoverlock::na2d_av', _autograd_backward(torch.ops.mmoverlock.na2d_av_backward.default),
                         setup_context=_setup_context, lib=_LIBRARY)
compat.register_autograd('mmoverlock::na2d_av_triton',
                         _autograd_backward(torch.ops.mmoverlock.na2d_av_triton_backward.default),
                         setup_context=_setup_context, lib=_LIBRARY)
