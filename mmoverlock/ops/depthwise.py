"""Depthwise stride-1 'same' conv2d for the backbone's depthwise convs: one registered op, exact faster paths
on CPU, and on CUDA the fastest of PyTorch's conv, Triton kernels and an FFT weight gradient, by measurement.

``depthwise_conv2d(x, weight, bias, dilation, choice)`` is mathematically equal to
``F.conv2d(x, weight, bias, stride=1, padding=dilation * (k - 1) // 2, dilation=dilation, groups=C)``
for ``x`` of shape (B, C, H, W) and ``weight`` of shape (C, 1, k, k), odd ``k``.

**CPU** (fp32 / fp64, eager). PyTorch's depthwise kernels are slow in two places (timings:
docs/benchmarks.md, "Depthwise convs on CPU"), and this module replaces only those, still computing
every convolution with PyTorch's own kernels:

* the weight gradient of large kernels: an FFT cross-correlation of the input with the output gradient
  (``fft_weight_grad``);
* every pass of dilated kernels: a dilated stride-1 'same' conv only mixes pixels whose coordinates agree
  modulo d, so it equals PyTorch's *undilated* depthwise conv applied to the d*d polyphase sub-grids of the
  map (``_split_phases``, batch B*d*d, maps ceil(H/d) x ceil(W/d)).

``choose_paths`` holds the rule (by kernel size, dilation and padding). Half / bfloat16, CPU autocast,
scripting and ``torch.compile`` on CPU, and the shapes where PyTorch measured as fast, go straight to
``F.conv2d``. Double backward through the custom Function is not supported (``once_differentiable``).

**CUDA.** The op ``torch.ops.mmoverlock.depthwise_conv2d`` (registered with ``torch.library``: a fake
implementation, so ``torch.compile`` sees one node; autograd through the op
``mmoverlock::depthwise_conv2d_backward``; on torch < 2.4 an ``autograd.Function`` around the same kernels, and
torch 2.1 registers no fake implementation: :mod:`mmoverlock.utils.compat`). Each pass -- forward, input
gradient, weight gradient -- picks among candidates by ``choice``:

* ``'auto'`` (default): the first call with a new key (pass, device, dtype, memory format, N, C, H and W
  rounded up to multiples of ``SIZE_BUCKET``, k, dilation) runs every candidate once untimed (Triton
  compiles there) and ``TIMING_RUNS`` times timed, and keeps the fastest for the process (``chosen()``;
  ``clear_choices()`` forgets). Candidates: PyTorch's conv (cuDNN), the Triton kernels
  (:mod:`mmoverlock.ops.depthwise_triton`) and, for the weight gradient, ``fft_weight_grad`` (cuFFT, in
  fp32 for half inputs). PyTorch's conv is kept unless another candidate measured faster by more than
  ``MIN_GAIN``, so a choice is never slower than PyTorch by more than the timing noise. While a CUDA graph
  is being captured nothing is timed: an unseen key runs PyTorch's conv. The Triton kernels are a candidate
  once they passed their first-use check in the dtype on the device (:mod:`mmoverlock.ops.selfcheck`; a
  failure warns once and leaves them out on that device);
* ``'torch'``: PyTorch's conv, always; ``'triton'``: the Triton kernels, always (PyTorch's conv on a device
  where their first-use check failed).

Where every pass runs PyTorch's conv anyway (``'torch'``, a deterministic run, or 'auto' once all three passes
chose it), ``depthwise_conv2d`` calls ``F.conv2d`` itself (``plain_conv``): no op overhead.

Under CUDA autocast the op computes in the autocast dtype, as ``F.conv2d`` does. Its backward is not itself
differentiable (no double backward, e.g. gradient penalties, through the op on CUDA).

Deterministic runs use a fixed choice: with ``torch.use_deterministic_algorithms(True)`` or
``torch.backends.cudnn.deterministic = True`` (what mmengine's ``randomness=dict(deterministic=True)`` sets),
``'auto'`` means ``'torch'`` and nothing is timed (the Triton kernels are deterministic too; a fixed
``'triton'`` stays). The backbone's ``depthwise_choice`` argument sets ``choice`` on every depthwise conv
(:func:`mmoverlock.models.layers.set_depthwise_choice`).

**Tracing** (TorchScript, hence mmengine's FLOP counter) **and ONNX export** record ``F.conv2d``: an ONNX
``Conv`` and the counter's conv. ``torch.utils.flop_counter`` counts the op as that conv
(:func:`register_flop_formulas`, done by the op's first call).
"""
import time
import warnings
from functools import lru_cache
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..utils import compat
from . import selfcheck
from .tracing import is_tracing

__all__ = ['depthwise_conv2d', 'triton_depthwise_conv2d', 'fft_weight_grad', 'choose_paths', 'CHOICES', 'pick',
           'plain_conv', 'select', 'choice_key', 'chosen', 'clear_choices', 'deterministic_requested']

# Rule thresholds (see ``choose_paths``).
FFT_MIN_KERNEL = 9          # FFT weight gradient from this kernel size up (any dilation)
POLY_FWD_MIN_PAD = 5        # dilated forward via phases when padding d*(k-1)//2 >= this

TORCH, POLY, FFT = 'torch', 'poly', 'fft'


def choose_paths(x: torch.Tensor, kernel_size: int, dilation: int) -> Tuple[str, str, str]:
    """Return the ``(forward, input_grad, weight_grad)`` paths for a depthwise conv of x (B, C, H, W).

    Each is ``'torch'`` (PyTorch's conv as called), ``'poly'`` (PyTorch's undilated conv on the d*d
    phase sub-grids) or, for the weight gradient, ``'fft'``. Rule (from single-thread CPU timings, fp32,
    channels-last; the figures are in docs/benchmarks.md, "Depthwise convs on CPU"):

    * not CPU, not float32/float64, CPU autocast on, or tracing/scripting/compiling: all ``'torch'``;
    * weight gradient: ``'fft'`` when ``k >= FFT_MIN_KERNEL`` (the FFT's cost hardly depends on k; PyTorch's
      grows with k*k: faster up to k=7, even at k=9, much slower at k=15/17; for dilated k=9 the FFT also
      beats 'poly' and is more accurate on large maps); else ``'poly'`` when ``d > 1``; else ``'torch'``;
    * input gradient: ``'poly'`` when ``d > 1`` (PyTorch's dilated input gradient is the slow one);
    * forward: ``'poly'`` when ``d > 1`` and padding ``d * (k - 1) // 2 >= POLY_FWD_MIN_PAD`` (PyTorch's
      dilated forward is fast up to padding 4 and slower above).
    """
    if x.device.type != 'cpu' or x.dtype not in (torch.float32, torch.float64):
        return TORCH, TORCH, TORCH
    if is_tracing() or torch.jit.is_scripting() or _cpu_autocast() or compat.is_compiling():
        return TORCH, TORCH, TORCH
    dilated = dilation > 1
    fwd = POLY if dilated and dilation * (kernel_size - 1) // 2 >= POLY_FWD_MIN_PAD else TORCH
    ig = POLY if dilated else TORCH
    wg = FFT if kernel_size >= FFT_MIN_KERNEL else (POLY if dilated else TORCH)
    return fwd, ig, wg


def _cpu_autocast() -> bool:
    return compat.is_autocast_enabled('cpu')


def _fast_len(n: int) -> int:
    """Smallest 2-3-5-smooth integer >= n (a fast FFT length for pocketfft)."""
    m = max(int(n), 1)
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def fft_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel_size: int,
                    dilation: int = 1) -> torch.Tensor:
    """Weight gradient of a stride-1 'same' depthwise conv by FFT cross-correlation.

    ``dW[c, 0, a, b] = sum_{n,i,j} grad_out[n, c, i, j] * x[n, c, i + a*d - p, j + b*d - p]`` (zero
    outside the map), ``p = d * (k - 1) // 2``. Computed per (n, c) plane as the circular correlation
    ``irfft2(conj(rfft2(grad_out)) * rfft2(x))`` (summed over n in the frequency domain) read at the
    lags ``-p, -p + d, ..., p`` of each axis. FFT length per axis is the smallest smooth number
    ``>= H + p`` (resp. ``W + p``): then a lag ``|s| <= p`` never aliases with a lag of non-zero
    overlap (``|s'| < H``), so the result is exact up to rounding.

    Args:
        x: (B, C, H, W) conv input, any memory format.
        grad_out: (B, C, H, W) gradient of the conv output.
        kernel_size: odd k.
        dilation: d >= 1.
    Returns:
        (C, 1, k, k) contiguous tensor, dtype of ``x``.
    """
    n, c, h, w = x.shape
    pad = dilation * (kernel_size - 1) // 2
    lh, lw = _fast_len(h + pad), _fast_len(w + pad)
    xf = torch.fft.rfft2(x.contiguous(), s=(lh, lw))              # (B, C, lh, lw // 2 + 1)
    gf = torch.fft.rfft2(grad_out.contiguous(), s=(lh, lw))
    spec = xf.mul_(gf.conj())
    spec = spec.sum(0) if n > 1 else spec[0]                        # (C, lh, lw // 2 + 1)
    corr = torch.fft.irfft2(spec, s=(lh, lw))                       # (C, lh, lw)
    lags = torch.arange(-pad, pad + 1, dilation, device=x.device)
    corr = corr.index_select(1, lags % lh).index_select(2, lags % lw)
    return corr.unsqueeze(1).contiguous()


def _split_phases(t: torch.Tensor, d: int) -> torch.Tensor:
    """(B, C, H, W) -> (B*d*d, C, ceil(H/d), ceil(W/d)) channels-last; phase (r, s) = t[..., r::d, s::d].

    Batch index of phase (r, s) of sample b is ``(b * d + r) * d + s``. The map is zero-padded at the
    bottom/right to a multiple of d first. One copy, done in NHWC order (channels innermost).
    """
    b, c, h, w = t.shape
    hd, wd = -(-h // d), -(-w // d)
    t = t.permute(0, 2, 3, 1)                                          # (B, H, W, C) view
    if hd * d != h or wd * d != w:
        t = F.pad(t, (0, 0, 0, wd * d - w, 0, hd * d - h))
    t = t.reshape(b, hd, d, wd, d, c).permute(0, 2, 4, 1, 3, 5).reshape(b * d * d, hd, wd, c)
    return t.permute(0, 3, 1, 2)


def _merge_phases(t: torch.Tensor, d: int, b: int, h: int, w: int,
                  memory_format: torch.memory_format) -> torch.Tensor:
    """Inverse of ``_split_phases`` (crops the padding): (B*d*d, C, hd, wd) -> (B, C, H, W)."""
    _, c, hd, wd = t.shape
    t = t.permute(0, 2, 3, 1).reshape(b, d, d, hd, wd, c).permute(0, 3, 1, 4, 2, 5)
    t = t.reshape(b, hd * d, wd * d, c)[:, :h, :w].permute(0, 3, 1, 2)
    return t.contiguous(memory_format=memory_format)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _conv_bwd(grad_out, x, weight, pad, dilation, mask):
    """aten.convolution_backward of a depthwise stride-1 conv: (grad_x, grad_w, grad_b)."""
    c = x.shape[1]
    return torch.ops.aten.convolution_backward(
        grad_out, x, weight, [c] if mask[2] else None, [1, 1], [pad, pad], [dilation, dilation],
        False, [0, 0], c, mask)


def _paths_forward(x, weight, bias, dilation, fwd_path):
    """The CPU forward by path: PyTorch's conv, or (``'poly'``, d > 1) on the polyphase sub-grids."""
    c, k = x.shape[1], weight.shape[-1]
    if fwd_path == POLY and dilation > 1:
        b, _, h, w = x.shape
        y = F.conv2d(_split_phases(x, dilation), weight, bias, 1, (k - 1) // 2, 1, c)
        return _merge_phases(y, dilation, b, h, w, _memory_format(x))
    return F.conv2d(x, weight, bias, 1, dilation * (k - 1) // 2, dilation, c)


def _paths_backward(grad_out, x, weight, d, ig_path, wg_path, need_x, need_w, need_b):
    """(grad_x, grad_w, grad_b) by path, None for one not needed (``need_b``: the conv has a bias)."""
    k = weight.shape[-1]
    pad = d * (k - 1) // 2
    poly_x = need_x and ig_path == POLY and d > 1
    poly_w = need_w and wg_path == POLY and d > 1
    fft_w = need_w and wg_path == FFT
    torch_x = need_x and not poly_x
    torch_w = need_w and not (poly_w or fft_w)
    grad_x = grad_w = grad_b = None
    if torch_x or torch_w:
        grad_x, grad_w, grad_b = _conv_bwd(grad_out, x, weight, pad, d, [torch_x, torch_w, need_b])
    elif need_b:
        grad_b = grad_out.sum((0, 2, 3))
    if poly_x or poly_w:
        b, _, h, w = x.shape
        gs = _split_phases(grad_out, d)
        if poly_x:
            # the input gradient reads only the input's shape / layout, and gs has that shape
            gxs = _conv_bwd(gs, gs, weight, (k - 1) // 2, 1, [True, False, False])[0]
            grad_x = _merge_phases(gxs, d, b, h, w, _memory_format(x))
        if poly_w:
            grad_w = _conv_bwd(gs, _split_phases(x, d), weight, (k - 1) // 2, 1, [False, True, False])[1]
    if fft_w:
        grad_w = fft_weight_grad(x, grad_out, k, d).to(weight.dtype)
    return grad_x, grad_w, grad_b


class _DepthwiseConv2d(torch.autograd.Function):
    """Stride-1 'same' depthwise conv with selectable forward / input-grad / weight-grad paths (CPU eager)."""

    @staticmethod
    def forward(ctx, x, weight, bias, dilation, fwd_path, ig_path, wg_path):
        y = _paths_forward(x, weight, bias, dilation, fwd_path)
        ctx.save_for_backward(x, weight)
        ctx.conf = (dilation, ig_path, wg_path, bias is not None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        d, ig_path, wg_path, has_bias = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grads = _paths_backward(grad_out, x, weight, d, ig_path, wg_path, need_x, need_w, need_b and has_bias)
        return (*grads, None, None, None, None)


# ------------------------------------------------------------------------------------------ the choice on CUDA
AUTO, TRITON = 'auto', 'triton'
#: ``choice`` values (module docstring)
CHOICES = (AUTO, TORCH, TRITON)
FORWARD, INPUT_GRAD, WEIGHT_GRAD = 'forward', 'input_grad', 'weight_grad'
#: a candidate replaces PyTorch's conv only when it measured faster by more than this fraction
MIN_GAIN = 0.05
#: timed runs per candidate (the minimum counts), after one untimed run
TIMING_RUNS = 3
#: H and W are rounded up to multiples of this in the choice's key (detection batches vary in size)
SIZE_BUCKET = 16

_CHOSEN: Dict[tuple, str] = {}
#: injected timings (tests): ``TIMER(name, fn, device) -> ms`` replaces ``measure_ms`` when set
TIMER: Optional[Callable[[str, Callable[[], object], torch.device], float]] = None


def chosen() -> Dict[tuple, str]:
    """The choices made so far in this process: {key: candidate}; key = :func:`choice_key`."""
    return dict(_CHOSEN)


def clear_choices() -> None:
    """Forget every choice (the next call of each key measures again)."""
    _CHOSEN.clear()


def deterministic_requested() -> bool:
    """``torch.use_deterministic_algorithms(True)`` or ``torch.backends.cudnn.deterministic``: 'auto' runs
    PyTorch's conv and measures nothing."""
    return torch.are_deterministic_algorithms_enabled() or bool(torch.backends.cudnn.deterministic)


def choice_key(pass_name: str, x: torch.Tensor, kernel_size: int, dilation: int, has_bias: bool = False) -> tuple:
    """(pass, device, dtype, memory format, N, C, H, W rounded up to SIZE_BUCKET, k, dilation, bias)."""
    n, c, h, w = x.shape
    bucket = SIZE_BUCKET
    layout = 'channels_last' if _memory_format(x) == torch.channels_last else 'contiguous'
    return (pass_name, str(x.device), str(x.dtype).replace('torch.', ''), layout, n, c, -(-h // bucket) * bucket,
            -(-w // bucket) * bucket, kernel_size, dilation, has_bias)


def pick(times_ms: Dict[str, float], min_gain: float = MIN_GAIN) -> str:
    """``'torch'`` unless another candidate took less than ``(1 - min_gain)`` x PyTorch's time: then the
    fastest. ``times_ms`` must hold ``'torch'``."""
    if TORCH not in times_ms:
        raise ValueError(f'pick: the timings {sorted(times_ms)} lack the baseline {TORCH!r}')
    best = min(times_ms, key=times_ms.get)
    return best if times_ms[best] < (1. - min_gain) * times_ms[TORCH] else TORCH


def measure_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Minimum milliseconds of ``TIMING_RUNS`` calls of ``fn`` (CUDA events on the current stream; the
    process clock elsewhere, e.g. the Triton interpreter's CPU tensors)."""
    best = float('inf')
    for _ in range(TIMING_RUNS):
        if device.type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            best = min(best, (time.perf_counter() - begin) * 1e3)
    return best


def select(key: tuple, candidates: Dict[str, Callable[[], object]], choice: str, device: torch.device) -> str:
    """The candidate that computes ``key``'s pass. A fixed ``choice`` is taken as it is (an error where its
    candidate is missing; ``'triton'`` on a device where the Triton kernels failed their first-use check runs
    PyTorch's conv); ``'auto'`` is ``'torch'`` for deterministic runs and while a CUDA graph is
    captured (unless chosen before), else the cached choice, else the one measured fastest now (``pick``).
    A candidate other than PyTorch's that fails while measured (e.g. out of memory) is left out, with a
    warning; PyTorch's failing raises."""
    if choice != AUTO:
        if choice == TRITON and choice not in candidates and selfcheck.distrusted('depthwise_conv2d', device):
            return TORCH                           # its first-use check failed here (it warned): the fallback
        if choice not in candidates:
            raise RuntimeError(f"depthwise_conv2d: choice='{choice}' is not available here (candidates: "
                               f"{sorted(candidates)}); pip install triton, or use choice='auto' or 'torch'")
        return choice
    if deterministic_requested():
        return TORCH
    hit = _CHOSEN.get(key)
    if hit is not None:
        return hit
    if device.type == 'cuda' and torch.cuda.is_current_stream_capturing():
        return TORCH
    times = {}
    for name, fn in candidates.items():
        try:
            fn()                                   # untimed: Triton compiles, cuFFT plans, cuDNN warms up
            times[name] = TIMER(name, fn, device) if TIMER is not None else measure_ms(fn, device)
        except Exception as err:                   # a failing alternative must not stop training
            if name == TORCH:
                raise
            reason = (str(err).strip().splitlines() or [''])[0][:200]
            warnings.warn(f'mmoverlock depthwise_conv2d: candidate {name!r} failed for {key} '
                          f'({type(err).__name__}: {reason}); it is not used there')
    best = pick(times)
    _CHOSEN[key] = best
    return best


@lru_cache(maxsize=1)
def _triton_kernels():
    """mmoverlock.ops.depthwise_triton, or None where Triton is not installed or older than the kernels need
    (CUDA then keeps PyTorch's conv and the FFT weight gradient as candidates; one warning says so)."""
    reason = compat.triton_unusable('depthwise_conv2d')
    if reason is not None:
        warnings.warn(f"{reason}; depthwise_conv2d chooses between PyTorch's conv and the FFT weight gradient on "
                      f"CUDA")
        return None
    from . import depthwise_triton
    return depthwise_triton


#: the first-use check's problem (N, C, H, W, k, dilation), with a bias: two channel blocks (the second
#: partial), pixel tiles that end inside the map, a dilated kernel reaching past every border
CHECK_PROBLEM = (2, 40, 9, 10, 5, 2)
_FALLBACK = "PyTorch's conv (and the FFT weight gradient)"


def check_fused_kernels(device: torch.device, dtype: torch.dtype) -> Tuple[list, list]:
    """The first-use check's computation (:mod:`mmoverlock.ops.selfcheck`): the forward, input-gradient and
    weight-gradient Triton kernels on :data:`CHECK_PROBLEM` in ``dtype`` on ``device``, and PyTorch's conv and
    its backward (``aten.convolution_backward``; no autograd: the check runs inside the op's kernel, below
    autograd) on the CPU in float64 from the same rounded inputs: (kernel outputs, reference outputs)."""
    kernels = _triton_kernels()
    if kernels is None:
        raise RuntimeError(compat.triton_unusable('depthwise_conv2d'))
    n, c, h, w, k, d = CHECK_PROBLEM
    generator = torch.Generator().manual_seed(0)
    x, grad_out = (torch.randn(n, c, h, w, generator=generator, dtype=torch.float64).to(dtype) for _ in range(2))
    weight = (torch.randn(c, 1, k, k, generator=generator, dtype=torch.float64) / k).to(dtype)
    bias = torch.randn(c, generator=generator, dtype=torch.float64).to(dtype)
    x64, weight64, pad = x.double(), weight.double(), d * (k - 1) // 2
    reference = [F.conv2d(x64, weight64, bias.double(), 1, pad, d, c),
                 *_conv_bwd(grad_out.double(), x64, weight64, pad, d, [True, True, False])[:2]]
    x, grad_out, weight, bias = (t.to(device) for t in (x, grad_out, weight, bias))
    got = [kernels.depthwise_forward(x, weight, bias, d), kernels.depthwise_input_grad(grad_out, weight, d, like=x),
           kernels.depthwise_weight_grad(x, grad_out, k, d)]
    return got, reference


def _triton_for(x: torch.Tensor):
    """The Triton module where its kernels may compute on x: they can run there (CUDA, or CPU under the
    interpreter) and passed their first-use check in x's dtype on x's device (:mod:`mmoverlock.ops.selfcheck`);
    else None."""
    kernels = _triton_kernels()
    if kernels is None or not (x.device.type == 'cuda' or kernels.INTERPRET):
        return None
    return kernels if selfcheck.trusted('depthwise_conv2d', x, check_fused_kernels, _FALLBACK) else None


def _fft_weight_grad_any(x: torch.Tensor, grad_out: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """fft_weight_grad for every dtype: half inputs transformed in fp32 (cuFFT's half transforms take
    power-of-two sizes only), the result in x's dtype."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return fft_weight_grad(x.float(), grad_out.float(), kernel_size, dilation).to(x.dtype)
    return fft_weight_grad(x, grad_out.to(x.dtype), kernel_size, dilation)


def forward_candidates(x, weight, bias, dilation) -> Dict[str, Callable[[], torch.Tensor]]:
    """{name: zero-argument callable computing the forward} for the device's candidates."""
    c, k = x.shape[1], weight.shape[-1]
    out = {TORCH: lambda: F.conv2d(x, weight, bias, 1, dilation * (k - 1) // 2, dilation, c)}
    kernels = _triton_for(x)
    if kernels is not None:
        out[TRITON] = lambda: kernels.depthwise_forward(x, weight, bias, dilation)
    return out


def input_grad_candidates(grad_out, x, weight, dilation) -> Dict[str, Callable[[], torch.Tensor]]:
    pad = dilation * (weight.shape[-1] - 1) // 2
    out = {TORCH: lambda: _conv_bwd(grad_out, x, weight, pad, dilation, [True, False, False])[0]}
    kernels = _triton_for(x)
    if kernels is not None:
        out[TRITON] = lambda: kernels.depthwise_input_grad(grad_out, weight, dilation, like=x)
    return out


def weight_grad_candidates(grad_out, x, weight, dilation) -> Dict[str, Callable[[], torch.Tensor]]:
    k = weight.shape[-1]
    pad = dilation * (k - 1) // 2
    out = {TORCH: lambda: _conv_bwd(grad_out, x, weight, pad, dilation, [False, True, False])[1]}
    kernels = _triton_for(x)
    if kernels is not None:
        out[TRITON] = lambda: kernels.depthwise_weight_grad(x, grad_out, k, dilation)
    out[FFT] = lambda: _fft_weight_grad_any(x, grad_out, k, dilation)
    return out


def plain_conv(x: torch.Tensor, kernel_size: int, dilation: int, has_bias: bool, choice: str) -> bool:
    """Whether every pass of this conv runs PyTorch's conv anyway -- ``choice='torch'``, 'auto' in a
    deterministic run, or 'auto' with all three passes already chosen 'torch' (not while compiling) -- so
    ``depthwise_conv2d`` calls ``F.conv2d`` itself: no op overhead, and PyTorch's double backward."""
    if choice == TORCH or (choice == AUTO and deterministic_requested()):
        return True
    if choice != AUTO or compat.is_compiling():
        return False
    return all(_CHOSEN.get(choice_key(name, x, kernel_size, dilation, has_bias and name == FORWARD)) == TORCH
               for name in (FORWARD, INPUT_GRAD, WEIGHT_GRAD))


def _check_choice(choice: str) -> None:
    if choice not in CHOICES:
        raise ValueError(f"depthwise_conv2d: choice={choice!r} is not one of {CHOICES}")


# ------------------------------------------------------------------------------------------ the op
# Registered with torch.library's dispatcher-level API, as mmoverlock::na2d_av is, through
# mmoverlock.utils.compat (torch < 2.4: autograd by an autograd.Function; torch 2.1: no fake implementation).
_LIBRARY = torch.library.Library('mmoverlock', 'FRAGMENT')
_LIBRARY.define('depthwise_conv2d(Tensor x, Tensor weight, Tensor? bias, int dilation, str choice) -> Tensor')
_LIBRARY.define('depthwise_conv2d_backward(Tensor grad_out, Tensor x, Tensor weight, int dilation, str choice, '
                'bool x_grad, bool weight_grad, bool bias_grad) -> (Tensor, Tensor, Tensor)')


def _depthwise_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dilation: int,
                  choice: str) -> torch.Tensor:
    """x (B, C, H, W), weight (C, 1, k, k), bias (C,) or None, one dtype -> (B, C, H, W) in x's memory
    format. Default kernel (CPU and any device without its own): the CPU paths of ``choose_paths``."""
    fwd, _, _ = choose_paths(x, weight.shape[-1], dilation)
    return _paths_forward(x, weight, bias, dilation, fwd).contiguous(memory_format=_memory_format(x))


def _depthwise_cuda(x, weight, bias, dilation, choice):
    """The chosen forward (``select``): PyTorch's conv or the Triton kernel."""
    candidates = forward_candidates(x, weight, bias, dilation)
    path = select(choice_key(FORWARD, x, weight.shape[-1], dilation, bias is not None), candidates, choice,
                  x.device)
    return candidates[path]().contiguous(memory_format=_memory_format(x))


def _depthwise_fake(x, weight, bias, dilation, choice):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_memory_format(x))


def _gradients(grad_x, grad_w, grad_b, x, weight):
    """The backward op's outputs: grad_x in x's memory format, grad_w contiguous, grad_b (C,); an empty
    tensor for one that was not asked for (an op cannot return None)."""
    return (x.new_empty(0) if grad_x is None else grad_x.contiguous(memory_format=_memory_format(x)),
            weight.new_empty(0) if grad_w is None else grad_w.contiguous(),
            weight.new_empty(0) if grad_b is None else grad_b.contiguous())


def _depthwise_backward_op(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, dilation: int,
                           choice: str, x_grad: bool, weight_grad: bool, bias_grad: bool
                           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_w, grad_b) of ``mmoverlock::depthwise_conv2d``; an empty tensor for one not asked for.
    Default kernel: the CPU paths."""
    _, ig, wg = choose_paths(x, weight.shape[-1], dilation)
    return _gradients(*_paths_backward(grad_out, x, weight, dilation, ig, wg, x_grad, weight_grad, bias_grad),
                      x, weight)


def _depthwise_backward_cuda(grad_out, x, weight, dilation, choice, x_grad, weight_grad, bias_grad):
    """The chosen input gradient (PyTorch / Triton) and weight gradient (PyTorch / Triton / FFT)."""
    k = weight.shape[-1]
    ig = wg = None
    if x_grad:
        ig_candidates = input_grad_candidates(grad_out, x, weight, dilation)
        ig = select(choice_key(INPUT_GRAD, x, k, dilation), ig_candidates, choice, x.device)
    if weight_grad:
        wg_candidates = weight_grad_candidates(grad_out, x, weight, dilation)
        wg = select(choice_key(WEIGHT_GRAD, x, k, dilation), wg_candidates, choice, x.device)
    grad_x = grad_w = None
    if ig == TORCH and wg == TORCH:           # both from one call, as PyTorch's own backward
        grad_x, grad_w, _ = _conv_bwd(grad_out, x, weight, dilation * (k - 1) // 2, dilation, [True, True, False])
    else:
        grad_x = ig_candidates[ig]() if x_grad else None
        grad_w = wg_candidates[wg]() if weight_grad else None
    grad_b = grad_out.sum((0, 2, 3)) if bias_grad else None
    return _gradients(grad_x, grad_w, grad_b, x, weight)


def _depthwise_backward_fake(grad_out, x, weight, dilation, choice, x_grad, weight_grad, bias_grad):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_memory_format(x)) if x_grad
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
_LIBRARY.impl('depthwise_conv2d', _depthwise_op, 'CompositeExplicitAutograd')
_LIBRARY.impl('depthwise_conv2d', _depthwise_cuda, 'CUDA')
_LIBRARY.impl('depthwise_conv2d_backward', _depthwise_backward_op, 'CompositeExplicitAutograd')
_LIBRARY.impl('depthwise_conv2d_backward', _depthwise_backward_cuda, 'CUDA')
compat.register_fake('mmoverlock::depthwise_conv2d', _depthwise_fake, lib=_LIBRARY)
compat.register_fake('mmoverlock::depthwise_conv2d_backward', _depthwise_backward_fake, lib=_LIBRARY)
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


# ------------------------------------------------------------------------------------------ entry points
def _check_args(x: torch.Tensor, weight: torch.Tensor, dilation) -> int:
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


def _autocast_cuda(*tensors):
    """F.conv2d's autocast policy on CUDA: floating tensors other than fp64 in the autocast dtype."""
    dtype = compat.autocast_dtype('cuda')
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
                 for t in tensors)


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
    dilation = _check_args(x, weight, dilation)
    _check_choice(choice)
    c, k = x.shape[1], weight.shape[-1]
    if is_tracing():
        c, k = compat.static_int(weight.shape[0]), compat.static_int(k)    # constants of the model
        return F.conv2d(x, weight, bias, 1, dilation * (k - 1) // 2, dilation, c)
    if x.device.type == 'cuda':
        if compat.is_autocast_enabled('cuda'):
            x, weight, bias = _autocast_cuda(x, weight, bias)
        if (weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype)    # PyTorch's dtype rules
                or plain_conv(x, k, dilation, bias is not None, choice)):
            return F.conv2d(x, weight, bias, 1, dilation * (k - 1) // 2, dilation, c)
        register_flop_formulas()
        return torch.ops.mmoverlock.depthwise_conv2d(x, weight, bias, dilation, choice)
    fwd, ig, wg = choose_paths(x, k, dilation)
    grad = torch.is_grad_enabled()
    custom = fwd != TORCH or (grad and x.requires_grad and ig != TORCH) or (
        grad and weight.requires_grad and wg != TORCH)
    if not custom or weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        return F.conv2d(x, weight, bias, 1, dilation * (k - 1) // 2, dilation, c)
    return _DepthwiseConv2d.apply(x, weight, bias, dilation, fwd, ig, wg)


def triton_depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                            dilation: int = 1) -> torch.Tensor:
    """The Triton kernels, called directly (tests, benchmarks), differentiable: x (B, C, H, W), weight
    (C, 1, k, k), bias (C,) or None, one dtype -> (B, C, H, W) in x's memory format. CUDA tensors, or CPU
    tensors under Triton's interpreter (``TRITON_INTERPRET=1`` set before mmoverlock is imported)."""
    dilation = _check_args(x, weight, dilation)
    kernels = _triton_kernels()
    if kernels is None:
        raise RuntimeError('triton_depthwise_conv2d: triton is not installed (pip install triton)')
    return kernels.triton_depthwise_conv2d(x, weight, bias, dilation)
