"""The ops' public functions: what the rest of the package, the tools and users call (``mmoverlock.ops``
re-exports them).

**Neighbourhood aggregation** ``na2d_av`` (NATTEN 0.17 semantics) without NATTEN. Every pixel (i, j) of an
H x W map aggregates a k x k window of values, clamped inside the map: the window starts at
``clamp(i - k // 2, 0, H - k)`` per axis (border pixels see a shifted window, never padding); tap
``t = a * k + b`` is the key ``(start_i + a, start_j + b)``. Two layouts:

* :func:`na2d_av` -- NATTEN's: attn (B, G, H, W, k*k), value (B, G, H, W, C) -> (B, G, H, W, C);
* :func:`na2d_av_channels_first` -- what the backbone uses: attn (B, G, k*k, H, W), value (B, G, C, H, W) ->
  (B, G, C, H, W); no permutes around the op ``torch.ops.mmoverlock.na2d_av`` (:mod:`mmoverlock.ops.na2d_op`:
  the CPU kernels of :mod:`mmoverlock.ops.na2d_cpu` chosen by map size, the fused Triton kernels on CUDA);
* :func:`triton_na2d_av` -- the fused Triton kernels whatever the device (``torch.ops.mmoverlock.na2d_av_triton``);
* :func:`na2d_av_reference`, :func:`na2d_av_unfold` -- the baselines (:mod:`mmoverlock.ops.reference`).

One dtype rule on every path: the ops take attn and value of one floating dtype (float16, bfloat16, float32,
float64) on one device and raise a one-line ``ValueError`` naming both dtypes otherwise; the public functions
first promote mixed dtypes to ``torch.promote_types`` of the two, as autocast's ``promote`` policy does.
Outputs and gradients are contiguous on every path. TorchScript tracing (e.g. mmengine's FLOP counter) records
the op as one node, ``mmoverlock::na2d_av``; ONNX export writes it out as the tap loop in standard ops
(Slice/Pad/Mul/Add), dynamic sizes kept.

**Depthwise conv** :func:`depthwise_conv2d` ``(x, weight, bias, dilation, choice)``: equal to
``F.conv2d(x, weight, bias, stride=1, padding=dilation * (k - 1) // 2, dilation=dilation, groups=C)`` for x
(B, C, H, W) and weight (C, 1, k, k), odd k. On CPU (fp32 / fp64, eager) the paths of
:func:`mmoverlock.ops.selection.choose_paths` replace PyTorch's slow depthwise cases (the FFT weight gradient of
large kernels, the polyphase split of dilated ones: :mod:`mmoverlock.ops.depthwise_cpu`); half / bfloat16, CPU
autocast, scripting and ``torch.compile`` on CPU, and the shapes where PyTorch measured as fast go straight to
``F.conv2d``. On CUDA the op ``torch.ops.mmoverlock.depthwise_conv2d`` (:mod:`mmoverlock.ops.depthwise_op`) runs,
per pass (forward, input gradient, weight gradient), the candidate ``choice`` selects:

* ``'auto'`` (default): the first call with a new key (pass, device, dtype, memory format, N, C, H and W
  rounded up to multiples of ``SIZE_BUCKET``, k, dilation) runs every candidate once untimed (Triton
  compiles there) and ``TIMING_RUNS`` times timed, and keeps the fastest for the process (:func:`chosen`;
  :func:`clear_choices` forgets; :mod:`mmoverlock.ops.selection`). Candidates: PyTorch's conv (cuDNN), the
  Triton kernels (:mod:`mmoverlock.ops.depthwise_triton`) and, for the weight gradient, the FFT (cuFFT, in fp32
  for half inputs). PyTorch's conv is kept unless another candidate measured faster by more than ``MIN_GAIN``.
  While a CUDA graph is being captured nothing is timed: an unseen key runs PyTorch's conv. The Triton kernels
  are a candidate once they passed their first-use check in the dtype on the device
  (:mod:`mmoverlock.ops.selfcheck`; a failure warns once and leaves them out on that device);
* ``'torch'``: PyTorch's conv, always; ``'triton'``: the Triton kernels, always (PyTorch's conv on a device
  where their first-use check failed).

Where every pass runs PyTorch's conv anyway (``'torch'``, a deterministic run, or 'auto' once all three passes
chose it), :func:`depthwise_conv2d` calls ``F.conv2d`` itself: no op overhead. Under CUDA autocast the op
computes in the autocast dtype, as ``F.conv2d`` does; its backward is not itself differentiable. Deterministic
runs (``torch.use_deterministic_algorithms(True)`` or ``torch.backends.cudnn.deterministic = True``, what
mmengine's ``randomness=dict(deterministic=True)`` sets) treat ``'auto'`` as ``'torch'`` and time nothing (a fixed
``'triton'`` stays: those kernels are deterministic too). The backbone's ``depthwise_choice`` argument sets
``choice`` on every depthwise conv (:func:`mmoverlock.models.layers.set_depthwise_choice`). Tracing (TorchScript,
hence mmengine's FLOP counter) and ONNX export record ``F.conv2d``; ``torch.utils.flop_counter`` counts the op as
that conv.
"""
from typing import Optional

import torch
import torch.nn.functional as F

import mmoverlock.ops.checks as checks
import mmoverlock.ops.depthwise_op as depthwise_op
import mmoverlock.ops.na2d_cpu as na2d_cpu
import mmoverlock.ops.na2d_op as na2d_op

from ..utils import compat
from .checks import check_window
from .depthwise_cpu import DepthwiseConv2dPaths, fft_weight_grad, fft_weight_grad_any, torch_forward
from .na2d_cpu import window_classes, window_keys, window_starts
from .reference import na2d_av_reference, na2d_av_unfold
from .selection import (AUTO, CHOICES, DENSE_MAX_RATIO, FORWARD, FORWARD_DENSE_MAX_RATIO, INPUT_GRAD, PASSES,
                        TORCH, WEIGHT_GRAD, WINDOW_CLASSES_MAX, choice_key, choose_paths, chosen,
                        clear_choices, deterministic_requested, na2d_cpu_path, pick, select, uses_dense,
                        uses_windows)
from .tracing import fixed_size_export, is_exporting, is_fixed_size_export, is_tracing
from .triton_common import SUPPORTED_DTYPES

__all__ = [
    # na2d_av
    'na2d_av', 'na2d_av_channels_first', 'triton_na2d_av', 'na2d_av_reference', 'na2d_av_unfold',
    'na2d_av_cpu_kernels', 'na2d_av_device_kernels', 'NA2D_CPU_PATHS', 'window_starts', 'window_keys',
    'window_classes', 'check_window', 'uses_dense', 'uses_windows', 'na2d_cpu_path', 'DENSE_MAX_RATIO',
    'FORWARD_DENSE_MAX_RATIO', 'WINDOW_CLASSES_MAX', 'SUPPORTED_DTYPES',
    # depthwise_conv2d
    'depthwise_conv2d', 'triton_depthwise_conv2d', 'depthwise_device_kernels', 'fft_weight_grad',
    'fft_weight_grad_any', 'depthwise_conv_backward', 'choose_paths', 'CHOICES', 'PASSES', 'FORWARD', 'INPUT_GRAD',
    'WEIGHT_GRAD', 'pick', 'select', 'choice_key', 'chosen', 'clear_choices', 'deterministic_requested',
    # both
    'fused_kernel_checks', 'is_exporting', 'is_tracing', 'fixed_size_export', 'is_fixed_size_export',
]

#: na2d_av's CPU paths by name: (forward(attn, value, k), backward(grad_out, attn, value, k, attn_grad,
#: value_grad)), channels-first, unchecked (:mod:`mmoverlock.ops.na2d_cpu`; the rule: :func:`na2d_cpu_path`)
NA2D_CPU_PATHS = na2d_cpu.PATHS


def na2d_av_cpu_kernels():
    """(forward, backward) of the op's CPU kernels, the path taken by map size (what CPU tensors run, and CUDA
    without usable Triton kernels): ``forward(attn, value, k)``, ``backward(grad_out, attn, value, k, attn_grad,
    value_grad) -> (grad_attn or None, grad_value or None)``; any device, channels-first, unchecked."""
    return na2d_cpu.forward, na2d_cpu.backward


def na2d_av_device_kernels():
    """(forward, backward) of ``mmoverlock::na2d_av``'s CUDA kernel bodies, callable on any device (the Triton
    kernels where they passed their first-use check on the tensors' device, else the CPU kernels): inputs
    checked, the backward returns empty tensors for gradients not asked for. For tests and the host-time
    benchmark."""
    return na2d_op.cuda_forward, na2d_op.cuda_backward


def depthwise_device_kernels():
    """(forward, backward) of ``mmoverlock::depthwise_conv2d``'s CUDA kernel bodies, callable on any device:
    ``forward(x, weight, bias, dilation, choice, timer=None)``, ``backward(grad_out, x, weight, dilation, choice,
    x_grad, weight_grad, bias_grad, timer=None) -> (grad_x, grad_w, grad_b)`` (empty for one not asked for),
    each pass the candidate :func:`select` picks, timed by ``timer`` (:data:`mmoverlock.ops.selection.Timer`)."""
    return depthwise_op.cuda_forward, depthwise_op.cuda_backward


def depthwise_conv_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, dilation: int,
                            need=(True, True, False)):
    """PyTorch's backward of the depthwise stride-1 'same' conv (``aten.convolution_backward``): (grad_x, grad_w,
    grad_b), None for those ``need`` (x, weight, bias) leaves out."""
    from .depthwise_cpu import conv_backward
    pad = dilation * (weight.shape[-1] - 1) // 2
    return conv_backward(grad_out, x, weight, pad, dilation, list(need))


def fused_kernel_checks():
    """The fused kernels' first-use checks (:mod:`mmoverlock.ops.selfcheck`), one dict per op: ``kernel`` (its
    name in the checks), ``modules`` (a function: the Triton kernel module, or None where Triton is unusable),
    ``check`` (``check(device, dtype) -> (kernel outputs, reference outputs)``), ``problem`` (its sizes) and
    ``fallback`` (what runs where the check fails)."""
    return [dict(kernel='na2d_av', modules=na2d_op.triton_kernels, check=na2d_op.check_fused_kernels,
                 problem=na2d_op.CHECK_PROBLEM, fallback=na2d_op.FALLBACK),
            dict(kernel='depthwise_conv2d', modules=depthwise_op.triton_kernels,
                 check=depthwise_op.check_fused_kernels, problem=depthwise_op.CHECK_PROBLEM,
                 fallback=depthwise_op.FALLBACK)]


# ------------------------------------------------------------------------------------------ na2d_av
def na2d_av_channels_first(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """attn (B, G, k*k, H, W), value (B, G, C, H, W) -> (B, G, C, H, W), contiguous:
    ``torch.ops.mmoverlock.na2d_av`` after promoting mixed dtypes to the wider one. Under ONNX export the op
    is written out as its standard-op tap loop (Slice/Pad/Mul/Add), or, in an export of one map size
    (:func:`~mmoverlock.ops.tracing.fixed_size_export`), as the eager forward's path where that is the per-window
    matmuls (Slice/MatMul/Concat) or the dense operator (ScatterElements/MatMul). TorchScript calls the op."""
    if torch.jit.is_scripting():
        dtype = torch.promote_types(attn.dtype, value.dtype)
        return torch.ops.mmoverlock.na2d_av(attn.to(dtype), value.to(dtype), kernel_size)
    attn, value = checks.promoted(attn, value)
    if is_exporting():
        checks.na2d_inputs(attn, value, kernel_size)
        if is_fixed_size_export():     # the eager forward's path, in standard ops
            path = na2d_cpu_path(compat.static_int(value.shape[-2]), compat.static_int(value.shape[-1]), kernel_size,
                                 forward_only=True)
            if path in na2d_cpu.FIXED_SIZE_FORMS:
                return na2d_cpu.FIXED_SIZE_FORMS[path](attn, value, kernel_size)
        return na2d_cpu.taps_forward(attn, value, kernel_size)
    return na2d_op.NA2D_AV(attn, value, kernel_size)


def triton_na2d_av(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The fused Triton kernels whatever the device (tests, benchmarks): attn (B, G, k*k, H, W), value
    (B, G, C, H, W) -> (B, G, C, H, W), contiguous, differentiable (``torch.ops.mmoverlock.na2d_av_triton``,
    mixed dtypes promoted as by :func:`na2d_av_channels_first`). CUDA tensors, or CPU tensors under Triton's
    interpreter (``TRITON_INTERPRET=1`` set before triton is first imported)."""
    na2d_op.require_triton()
    attn, value = checks.promoted(attn, value)
    return na2d_op.NA2D_AV_TRITON(attn, value, kernel_size)


def na2d_av(attn: torch.Tensor, value: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """NATTEN 0.17 ``na2d_av``: attn (B, G, H, W, k*k), value (B, G, H, W, C) -> (B, G, H, W, C)."""
    checks.na2d_shapes(attn, value, kernel_size, 'channels_last')
    out = na2d_av_channels_first(attn.permute(0, 1, 4, 2, 3), value.permute(0, 1, 4, 2, 3), kernel_size)
    return out.permute(0, 1, 3, 4, 2)


# ------------------------------------------------------------------------------------------ depthwise_conv2d
def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     dilation: int = 1, choice: str = AUTO) -> torch.Tensor:
    """Depthwise stride-1 conv with 'same' zero padding ``dilation * (k - 1) // 2``.

    Equal to ``F.conv2d(x, weight, bias, 1, dilation * (k - 1) // 2, dilation, groups=C)``. On CPU the
    paths of ``choose_paths`` replace PyTorch's slow depthwise cases; on CUDA the op
    ``torch.ops.mmoverlock.depthwise_conv2d`` runs the candidate ``choice`` selects (module docstring);
    tracing and ONNX export record ``F.conv2d``.

    Args:
        x: (B, C, H, W), any memory format (the output keeps a channels-last input's format).
        weight: (C, 1, k, k), odd k.
        bias: optional (C,).
        dilation: int >= 1.
        choice: 'auto' (measure on first use, CUDA), 'torch' or 'triton' (fixed); CPU ignores it.
    Returns:
        (B, C, H, W), dtype of x.
    """
    if torch.jit.is_scripting():   # TorchScript: PyTorch's conv (the rest is Python)
        return F.conv2d(x, weight, bias, 1, dilation * (weight.shape[-1] - 1) // 2, dilation, x.shape[1])
    dilation = checks.depthwise_args(x, weight, dilation)
    checks.depthwise_choice(choice, CHOICES)
    c, k = x.shape[1], weight.shape[-1]
    if is_tracing():
        c, k = compat.static_int(weight.shape[0]), compat.static_int(k)    # constants of the model
        return F.conv2d(x, weight, bias, 1, dilation * (k - 1) // 2, dilation, c)
    if x.device.type == 'cuda':
        if compat.is_autocast_enabled('cuda'):
            x, weight, bias = depthwise_op.autocast_cuda(x, weight, bias)
        if (weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype)    # PyTorch's dtype rules
                or depthwise_op.plain_conv(x, k, dilation, bias is not None, choice)):
            return F.conv2d(x, weight, bias, 1, dilation * (k - 1) // 2, dilation, c)
        depthwise_op.register_flop_formulas()
        return torch.ops.mmoverlock.depthwise_conv2d(x, weight, bias, dilation, choice)
    fwd, ig, wg = choose_paths(x, k, dilation)
    grad = torch.is_grad_enabled()
    custom = fwd != TORCH or (grad and x.requires_grad and ig != TORCH) or (
        grad and weight.requires_grad and wg != TORCH)
    if not custom or weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        if grad and any(t is not None and t.requires_grad for t in (x, weight, bias)):
            return F.conv2d(x, weight, bias, 1, dilation * (k - 1) // 2, dilation, c)
        return torch_forward(x, weight, bias, dilation)      # no gradient: the forward may run ringed
    return DepthwiseConv2dPaths.apply(x, weight, bias, dilation, fwd, ig, wg)


def triton_depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                            dilation: int = 1) -> torch.Tensor:
    """The Triton kernels, called directly (tests, benchmarks), differentiable: x (B, C, H, W), weight
    (C, 1, k, k), bias (C,) or None, one dtype -> (B, C, H, W) in x's memory format. CUDA tensors, or CPU
    tensors under Triton's interpreter (``TRITON_INTERPRET=1`` set before mmoverlock is imported)."""
    dilation = checks.depthwise_args(x, weight, dilation)
    kernels = depthwise_op.triton_kernels()
    if kernels is None:
        raise RuntimeError('triton_depthwise_conv2d: triton is not installed (pip install triton)')
    return kernels.triton_depthwise_conv2d(x, weight, bias, dilation)
