"""The registration of ``depthwise_conv2d`` with ``torch.library``: the op, its kernel per device, fake
implementations and autograd, and the candidates its CUDA kernel chooses among.

``torch.ops.mmoverlock.depthwise_conv2d(x, weight, bias, dilation, choice)``: x (B, C, H, W), weight (C, 1, k, k),
bias (C,) or None -> (B, C, H, W) in x's memory format. The default kernel (CPU and any device without its own)
runs the CPU paths of :func:`mmoverlock.ops.selection.choose_paths` (:mod:`mmoverlock.ops.depthwise_cpu`); the
CUDA kernel (:func:`cuda_forward`, :func:`cuda_backward`) runs, per pass, the candidate
:func:`mmoverlock.ops.selection.select` picks among :func:`forward_candidates`, :func:`input_grad_candidates`
and :func:`weight_grad_candidates` -- PyTorch's conv (cuDNN), the Triton kernels
(:mod:`mmoverlock.ops.depthwise_triton`, once they passed their first-use check in the dtype on the device,
:mod:`mmoverlock.ops.selfcheck`) and, for the weight gradient, the FFT -- timed by the ``timer`` they are given
(default :func:`mmoverlock.utils.timing.min_ms`). The backward is the op ``mmoverlock::depthwise_conv2d_backward``
(not itself differentiable). A fake implementation, so ``torch.compile`` sees one node; on torch < 2.4 an
``autograd.Function`` around the same kernels, and torch 2.1 registers no fake implementation
(:mod:`mmoverlock.utils.compat`). ``torch.utils.flop_counter`` counts the op as the conv it is
(:func:`register_flop_formulas`). The public function is :func:`mmoverlock.ops.functional.depthwise_conv2d`.
"""
import warnings
from functools import lru_cache
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

import mmoverlock.ops.selfcheck as selfcheck

from ..utils import compat
from .depthwise_cpu import conv_backward, fft_weight_grad_any, paths_backward, paths_forward
from .reference import depthwise_conv2d_reference_with_gradients
from .selection import (AUTO, FFT, FORWARD, INPUT_GRAD, PASSES, TORCH, TRITON, WEIGHT_GRAD, Timer, cached,
                        choice_key, choose_paths, deterministic_requested, select)
from .triton_common import memory_format

__all__ = ['CHECK_PROBLEM', 'FALLBACK', 'triton_kernels', 'triton_for', 'check_fused_kernels', 'forward_candidates',
           'input_grad_candidates', 'weight_grad_candidates', 'plain_conv', 'default_forward', 'default_backward',
           'cuda_forward', 'cuda_backward', 'fake_forward', 'fake_backward', 'register_flop_formulas',
           'autocast_cuda']


@lru_cache(maxsize=1)
def triton_kernels():
    """mmoverlock.ops.depthwise_triton, or None where Triton is not installed or older than the kernels need
    (CUDA then keeps PyTorch's conv and the FFT weight gradient as candidates; one warning says so)."""
    reason = compat.triton_unusable('depthwise_conv2d')
    if reason is not None:
        warnings.warn(f"{reason}; depthwise_conv2d chooses between PyTorch's conv and the FFT weight gradient on "
                      f"CUDA")
        return None
    import mmoverlock.ops.depthwise_triton as depthwise_triton
    return depthwise_triton


#: the first-use check's problem (N, C, H, W, k, dilation), with a bias: two channel blocks (the second
#: partial), pixel tiles that end inside the map, a dilated kernel reaching past every border
CHECK_PROBLEM = (2, 40, 9, 10, 5, 2)
FALLBACK = "PyTorch's conv (and the FFT weight gradient)"


def check_fused_kernels(device: torch.device, dtype: torch.dtype) -> Tuple[list, list]:
    """The first-use check's computation (:mod:`mmoverlock.ops.selfcheck`): the forward, input-gradient and
    weight-gradient Triton kernels on :data:`CHECK_PROBLEM` in ``dtype`` on ``device``, and PyTorch's conv and
    its backward (``aten.convolution_backward``; no autograd: the check runs inside the op's kernel, below
    autograd) on the CPU in float64 from the same rounded inputs: (kernel outputs, reference outputs)."""
    kernels = triton_kernels()
    if kernels is None:
        raise RuntimeError(compat.triton_unusable('depthwise_conv2d'))
    n, c, h, w, k, d = CHECK_PROBLEM
    generator = torch.Generator().manual_seed(0)
    x, grad_out = (torch.randn(n, c, h, w, generator=generator, dtype=torch.float64).to(dtype) for _ in range(2))
    weight = (torch.randn(c, 1, k, k, generator=generator, dtype=torch.float64) / k).to(dtype)
    bias = torch.randn(c, generator=generator, dtype=torch.float64).to(dtype)
    reference = depthwise_conv2d_reference_with_gradients(x.double(), weight.double(), bias.double(),
                                                          grad_out.double(), d)
    x, grad_out, weight, bias = (t.to(device) for t in (x, grad_out, weight, bias))
    got = [kernels.depthwise_forward(x, weight, bias, d), kernels.depthwise_input_grad(grad_out, weight, d, like=x),
           kernels.depthwise_weight_grad(x, grad_out, k, d)]
    return got, reference


def triton_for(x: torch.Tensor):
    """The Triton module where its kernels may compute on x: they can run there (CUDA, or CPU under the
    interpreter) and passed their first-use check in x's dtype on x's device (:mod:`mmoverlock.ops.selfcheck`);
    else None."""
    kernels = triton_kernels()
    if kernels is None or not (x.device.type == 'cuda' or kernels.INTERPRET):
        return None
    return kernels if selfcheck.trusted('depthwise_conv2d', x, check_fused_kernels, FALLBACK) else None


def forward_candidates(x, weight, bias, dilation) -> Dict[str, Callable[[], torch.Tensor]]:
    """{name: zero-argument callable computing the forward} for the device's candidates."""
    c, k = x.shape[1], weight.shape[-1]
    out = {TORCH: lambda: F.conv2d(x, weight, bias, 1, dilation * (k - 1) // 2, dilation, c)}
    kernels = triton_for(x)
    if kernels is not None:
        out[TRITON] = lambda: kernels.depthwise_forward(x, weight, bias, dilation)
    return out


def input_grad_candidates(grad_out, x, weight, dilation) -> Dict[str, Callable[[], torch.Tensor]]:
    """{name: zero-argument callable computing the input gradient} for the device's candidates."""
    pad = dilation * (weight.shape[-1] - 1) // 2
    out = {TORCH: lambda: conv_backward(grad_out, x, weight, pad, dilation, [True, False, False])[0]}
    kernels = triton_for(x)
    if kernels is not None:
        out[TRITON] = lambda: kernels.depthwise_input_grad(grad_out, weight, dilation, like=x)
    return out


def weight_grad_candidates(grad_out, x, weight, dilation) -> Dict[str, Callable[[], torch.Tensor]]:
    """{name: zero-argument callable computing the weight gradient} for the device's candidates (the FFT's
    always)."""
    k = weight.shape[-1]
    pad = dilation * (k - 1) // 2
    out = {TORCH: lambda: conv_backward(grad_out, x, weight, pad, dilation, [False, True, False])[1]}
    kernels = triton_for(x)
    if kernels is not None:
        out[TRITON] = lambda: kernels.depthwise_weight_grad(x, grad_out, k, dilation)
    out[FFT] = lambda: fft_weight_grad_any(x, grad_out, k, dilation)
    return out


def plain_conv(x: torch.Tensor, kernel_size: int, dilation: int, has_bias: bool, choice: str) -> bool:
    """Whether every pass of this conv runs PyTorch's conv anyway -- ``choice='torch'``, 'auto' in a
    deterministic run, or 'auto' with all three passes already chosen 'torch' (not while compiling) -- so
    ``depthwise_conv2d`` calls ``F.conv2d`` itself: no op overhead, and PyTorch's double backward."""
    if choice == TORCH or (choice == AUTO and deterministic_requested()):
        return True
    if choice != AUTO or compat.is_compiling():
        return False
    return all(cached(choice_key(name, x, kernel_size, dilation, has_bias and name == FORWARD)) == TORCH
               for name in PASSES)


# ------------------------------------------------------------------------------------------ the op
# Registered with torch.library's dispatcher-level API, as mmoverlock::na2d_av is (mmoverlock.ops.na2d_op).
_LIBRARY = torch.library.Library('mmoverlock', 'FRAGMENT')
_LIBRARY.define('depthwise_conv2d(Tensor x, Tensor weight, Tensor? bias, int dilation, str choice) -> Tensor')
_LIBRARY.define('depthwise_conv2d_backward(Tensor grad_out, Tensor x, Tensor weight, int dilation, str choice, '
                'bool x_grad, bool weight_grad, bool bias_grad) -> (Tensor, Tensor, Tensor)')


def default_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dilation: int,
                    choice: str) -> torch.Tensor:
    """x (B, C, H, W), weight (C, 1, k, k), bias (C,) or None, one dtype -> (B, C, H, W) in x's memory
    format. Default kernel (CPU and any device without its own): the CPU paths of ``choose_paths``."""
    fwd, _, _ = choose_paths(x, weight.shape[-1], dilation)
    return paths_forward(x, weight, bias, dilation, fwd).contiguous(memory_format=memory_format(x))


def cuda_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dilation: int, choice: str,
                 timer: Optional[Timer] = None) -> torch.Tensor:
    """The CUDA kernel: the forward ``select`` chooses (PyTorch's conv or the Triton kernel; candidates timed
    by ``timer``, default :func:`mmoverlock.utils.timing.min_ms`): x (B, C, H, W) -> (B, C, H, W) in x's memory
    format."""
    candidates = forward_candidates(x, weight, bias, dilation)
    path = select(choice_key(FORWARD, x, weight.shape[-1], dilation, bias is not None), candidates, choice,
                  x.device, timer)
    return candidates[path]().contiguous(memory_format=memory_format(x))


def fake_forward(x, weight, bias, dilation, choice):
    """The op's fake implementation: an empty output of x's shape in x's memory format."""
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format(x))


def gradients(grad_x, grad_w, grad_b, x, weight):
    """The backward op's outputs: grad_x in x's memory format, grad_w contiguous, grad_b (C,); an empty
    tensor for one that was not asked for (an op cannot return None)."""
    return (x.new_empty(0) if grad_x is None else grad_x.contiguous(memory_format=memory_format(x)),
            weight.new_empty(0) if grad_w is None else grad_w.contiguous(),
            weight.new_empty(0) if grad_b is None else grad_b.contiguous())


def default_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, dilation: int,
                     choice: str, x_grad: bool, weight_grad: bool, bias_grad: bool
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_w, grad_b) of ``mmoverlock::depthwise_conv2d``; an empty tensor for one not asked for.
    Default kernel: the CPU paths."""
    _, ig, wg = choose_paths(x, weight.shape[-1], dilation)
    return gradients(*paths_backward(grad_out, x, weight, dilation, ig, wg, x_grad, weight_grad, bias_grad),
                     x, weight)


def cuda_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, dilation: int, choice: str,
                  x_grad: bool, weight_grad: bool, bias_grad: bool, timer: Optional[Timer] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CUDA kernel of the backward op: the input gradient (PyTorch / Triton) and weight gradient (PyTorch /
    Triton / FFT) ``select`` chooses, candidates timed by ``timer``; (grad_x, grad_w, grad_b), an empty tensor
    for one not asked for."""
    k = weight.shape[-1]
    ig = wg = None
    if x_grad:
        ig_candidates = input_grad_candidates(grad_out, x, weight, dilation)
        ig = select(choice_key(INPUT_GRAD, x, k, dilation), ig_candidates, choice, x.device, timer)
    if weight_grad:
        wg_candidates = weight_grad_candidates(grad_out, x, weight, dilation)
        wg = select(choice_key(WEIGHT_GRAD, x, k, dilation), wg_candidates, choice, x.device, timer)
    grad_x = grad_w = None
    if ig == TORCH and wg == TORCH:           # both from one call, as PyTorch's own backward
        pad = dilation * (k - 1) // 2
        grad_x, grad_w, _ = conv_backward(grad_out, x, weight, pad, dilation, [True, True, False])
    else:
        grad_x = ig_candidates[ig]() if x_grad else None
        grad_w = wg_candidates[wg]() if weight_grad else None
    grad_b = grad_out.sum((0, 2, 3)) if bias_grad else None
    return gradients(grad_x, grad_w, grad_b, x, weight)


def fake_backward(grad_out, x, weight, dilation, choice, x_grad, weight_grad, bias_grad):
    """The backward op's fake implementation (shapes of :func:`default_backward`'s outputs)."""
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format(x)) if x_grad
            else x.new_empty(0),
            weight.new_empty(weight.shape) if weight_grad else weight.new_empty(0),
            weight.new_empty(weight.shape[0]) if bias_grad else weight.new_empty(0))


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, dilation, choice = inputs
    ctx.save_for_backward(x, weight)
    ctx.dilation, ctx.choice, ctx.has_bias = dilation, choice, bias is not None


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    need_b = need_b and ctx.has_bias
    grad_x, grad_w, grad_b = torch.ops.mmoverlock.depthwise_conv2d_backward(
        grad_out, x, weight, ctx.dilation, ctx.choice, need_x, need_w, need_b)
    return (grad_x if need_x else None), (grad_w if need_w else None), (grad_b if need_b else None), None, None


# the default kernels (the CPU paths) serve CPU and any device without its own kernel, as a custom_op's do
_LIBRARY.impl('depthwise_conv2d', default_forward, 'CompositeExplicitAutograd')
_LIBRARY.impl('depthwise_conv2d', cuda_forward, 'CUDA')
_LIBRARY.impl('depthwise_conv2d_backward', default_backward, 'CompositeExplicitAutograd')
_LIBRARY.impl('depthwise_conv2d_backward', cuda_backward, 'CUDA')
compat.register_fake('mmoverlock::depthwise_conv2d', fake_forward, lib=_LIBRARY)
compat.register_fake('mmoverlock::depthwise_conv2d_backward', fake_backward, lib=_LIBRARY)
compat.register_autograd('mmoverlock::depthwise_conv2d', _backward, setup_context=_setup_context, lib=_LIBRARY)


def _conv_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """torch.utils.flop_counter's count of the conv: 2 * N*H*W * C * k*k (its FLOP = 2 per multiply-add)."""
    n, c, h, w = x_shape
    return 2 * n * h * w * c * w_shape[-1] * w_shape[-2]


def _conv_backward_flop(grad_shape, x_shape, w_shape, dilation, choice, x_grad, weight_grad, bias_grad,
                        *args, out_shape=None, **kwargs) -> int:
    return _conv_flop(x_shape, w_shape) * (int(bool(x_grad)) + int(bool(weight_grad)))


@lru_cache(maxsize=1)
def register_flop_formulas() -> None:
    """Count the op (and its backward) in ``torch.utils.flop_counter`` as the conv it is. Called by the first
    call that runs the op; call it yourself before creating a ``FlopCounterMode`` that should see the op's
    first call. Not done on import: ``torch.utils.flop_counter`` imports triton (seconds), which
    ``import mmoverlock`` does not."""
    compat.register_flop_formula(torch.ops.mmoverlock.depthwise_conv2d, _conv_flop)
    compat.register_flop_formula(torch.ops.mmoverlock.depthwise_conv2d_backward, _conv_backward_flop)


def autocast_cuda(*tensors):
    """F.conv2d's autocast policy on CUDA: floating tensors other than fp64 in the autocast dtype."""
    dtype = compat.autocast_dtype('cuda')
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
                 for t in tensors)
