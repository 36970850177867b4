"""Which path computes each op call: the ops' one selection module.

* ``na2d_av`` on CPU, by map size (a fixed rule from CPU timings): :func:`na2d_cpu_path` -- the per-window
  matmuls, the dense operator or the tap loop (:mod:`mmoverlock.ops.na2d_cpu`);
* ``depthwise_conv2d`` on CPU, by kernel size, dilation and padding (a fixed rule): :func:`choose_paths`
  (:mod:`mmoverlock.ops.depthwise_cpu`);
* ``depthwise_conv2d`` on CUDA, measured: :func:`select` runs each candidate of a pass (PyTorch's conv, the Triton
  kernels, the FFT weight gradient) once untimed and times it with the ``timer`` it is given (by default
  :func:`mmoverlock.utils.timing.min_ms`, CUDA events), keeps the fastest by :func:`pick` and caches it per
  :func:`choice_key` for the process (:func:`chosen`, :func:`clear_choices`). No mutable global timer: a caller
  that wants other timings (tests) passes its own ``timer``.
"""
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch

from ..utils import compat
from ..utils.timing import min_ms
from .selfcheck import distrusted
from .tracing import is_tracing
from .triton_common import memory_format

__all__ = ['DENSE_MAX_RATIO', 'FORWARD_DENSE_MAX_RATIO', 'WINDOW_CLASSES_MAX', 'uses_dense', 'uses_windows',
           'na2d_cpu_path', 'NA2D_CPU_PATHS', 'FFT_MIN_KERNEL', 'POLY_FWD_MIN_PAD', 'RINGED_FORWARD_KERNELS',
           'ringed_kernel_size', 'TORCH', 'POLY', 'FFT', 'AUTO',
           'TRITON', 'CHOICES', 'FORWARD', 'INPUT_GRAD', 'WEIGHT_GRAD', 'PASSES', 'MIN_GAIN', 'TIMING_RUNS',
           'SIZE_BUCKET', 'Timer', 'choose_paths', 'chosen', 'cached', 'clear_choices', 'deterministic_requested',
           'choice_key', 'pick', 'select']

# ------------------------------------------------------------------------------------------ na2d_av on CPU
#: maps with H*W <= DENSE_MAX_RATIO * k*k use the dense operator (its matrix is <= this many times ``attn``);
#: the crossover with the tap loop: tools/analysis/benchmark_cpu_paths.py, figures in docs/benchmarks.md
DENSE_MAX_RATIO = 4
#: the forward alone (inference; a training step's forward) takes the dense operator up to this many times k*k:
#: measured forward-only it is 2.3x (fp32) and 5x (bf16) faster than the tap loop at 7.8 k*k (14x14, k=5: the
#: small kernels of OverLoCK's stage 3 at 224x224) and even with it at 8.2 k*k (20x20, k=7, fp32); the backward
#: keeps DENSE_MAX_RATIO (forward + backward measured). Both paths compute the same sums.
FORWARD_DENSE_MAX_RATIO = 8
#: maps whose pixels share at most this many distinct clamped windows use one matmul per window (e.g. 14x14
#: with k=13: 4 windows; 7x7 with k=7: 1); against the dense operator: the same tool and doc
WINDOW_CLASSES_MAX = 4
#: the CPU paths of na2d_av, in the order the rule tries them
NA2D_CPU_PATHS = ('windows', 'dense', 'taps')


def uses_dense(height: int, width: int, kernel_size: int, forward_only: bool = False) -> bool:
    """Whether the map is small enough for the dense operator (H*W <= DENSE_MAX_RATIO * k*k; for the forward
    alone, ``forward_only``, FORWARD_DENSE_MAX_RATIO * k*k)."""
    ratio = FORWARD_DENSE_MAX_RATIO if forward_only else DENSE_MAX_RATIO
    return height * width <= ratio * kernel_size * kernel_size


def uses_windows(height: int, width: int, kernel_size: int) -> bool:
    """Whether the map's pixels share few distinct clamped windows (maps near k): the per-window matmuls."""
    return (height - kernel_size + 1) * (width - kernel_size + 1) <= WINDOW_CLASSES_MAX


def na2d_cpu_path(height: int, width: int, kernel_size: int, forward_only: bool = False) -> str:
    """The CPU path of an H x W map with k x k windows: 'windows', 'dense' or 'taps' (``forward_only``: the
    forward's, whose dense threshold is higher)."""
    if uses_windows(height, width, kernel_size):
        return 'windows'
    if uses_dense(height, width, kernel_size, forward_only):
        return 'dense'
    return 'taps'


# ------------------------------------------------------------------------------------------ depthwise on CPU
FFT_MIN_KERNEL = 9          # FFT weight gradient from this kernel size up (any dilation)
POLY_FWD_MIN_PAD = 5        # dilated forward via phases when padding d*(k-1)//2 >= this
TORCH, POLY, FFT = 'torch', 'poly', 'fft'
#: the undilated channels-last forward of a k x k kernel listed here runs PyTorch's conv with the kernel ringed by
#: zeros to the size it maps to (the same sums): PyTorch's (oneDNN's) NHWC depthwise forward takes 2.3x (fp32) and
#: 1.4-2.5x (bf16) longer at k=13 than at k=15 (docs/benchmarks.md, "Depthwise convs on CPU"); its backward passes
#: do not gain, so only a forward that needs no gradient, or whose gradients the CPU paths compute, is ringed
RINGED_FORWARD_KERNELS = {13: 15}


def ringed_kernel_size(x: torch.Tensor, kernel_size: int, dilation: int) -> int:
    """The kernel size PyTorch's conv runs the CPU forward of a depthwise conv of x (B, C, H, W) at:
    ``RINGED_FORWARD_KERNELS[k]`` for an undilated conv of a channels-last CPU map, else k itself."""
    if (dilation == 1 and kernel_size in RINGED_FORWARD_KERNELS and x.device.type == 'cpu' and x.dim() == 4
            and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)):
        return RINGED_FORWARD_KERNELS[kernel_size]
    return kernel_size


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
    if is_tracing() or torch.jit.is_scripting() or compat.is_autocast_enabled('cpu') or compat.is_compiling():
        return TORCH, TORCH, TORCH
    dilated = dilation > 1
    fwd = POLY if dilated and dilation * (kernel_size - 1) // 2 >= POLY_FWD_MIN_PAD else TORCH
    ig = POLY if dilated else TORCH
    wg = FFT if kernel_size >= FFT_MIN_KERNEL else (POLY if dilated else TORCH)
    return fwd, ig, wg


# ------------------------------------------------------------------------------------------ depthwise on CUDA
AUTO, TRITON = 'auto', 'triton'
#: ``choice`` values (:func:`mmoverlock.ops.functional.depthwise_conv2d`)
CHOICES = (AUTO, TORCH, TRITON)
FORWARD, INPUT_GRAD, WEIGHT_GRAD = 'forward', 'input_grad', 'weight_grad'
#: the passes of one conv, each chosen on its own
PASSES = (FORWARD, INPUT_GRAD, WEIGHT_GRAD)
#: a candidate replaces PyTorch's conv only when it measured faster by more than this fraction
MIN_GAIN = 0.05
#: timed runs per candidate (the minimum counts), after one untimed run
TIMING_RUNS = 3
#: H and W are rounded up to multiples of this in the choice's key (detection batches vary in size)
SIZE_BUCKET = 16

#: ``timer(candidate name, fn, device) -> ms``: how :func:`select` times one candidate
Timer = Callable[[str, Callable[[], object], torch.device], float]

_CHOSEN: Dict[tuple, str] = {}


def _default_timer(name: str, fn: Callable[[], object], device: torch.device) -> float:
    return min_ms(name, fn, device, repeats=TIMING_RUNS)


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
    layout = 'channels_last' if memory_format(x) == torch.channels_last else 'contiguous'
    return (pass_name, str(x.device), str(x.dtype).replace('torch.', ''), layout, n, c, -(-h // bucket) * bucket,
            -(-w // bucket) * bucket, kernel_size, dilation, has_bias)


def pick(times_ms: Dict[str, float], min_gain: float = MIN_GAIN) -> str:
    """``'torch'`` unless another candidate took less than ``(1 - min_gain)`` x PyTorch's time: then the
    fastest. ``times_ms`` must hold ``'torch'``."""
    if TORCH not in times_ms:
        raise ValueError(f'pick: the timings {sorted(times_ms)} lack the baseline {TORCH!r}')
    best = min(times_ms, key=times_ms.get)
    return best if times_ms[best] < (1. - min_gain) * times_ms[TORCH] else TORCH


def cached(key: tuple) -> Optional[str]:
    """The candidate chosen for ``key`` in this process, or None."""
    return _CHOSEN.get(key)


def select(key: tuple, candidates: Dict[str, Callable[[], object]], choice: str, device: torch.device,
           timer: Optional[Timer] = None) -> str:
    """The candidate that computes ``key``'s pass. A fixed ``choice`` is taken as it is (an error where its
    candidate is missing; ``'triton'`` on a device where the Triton kernels failed their first-use check runs
    PyTorch's conv); ``'auto'`` is ``'torch'`` for deterministic runs and while a CUDA graph is
    captured (unless chosen before), else the cached choice, else the one measured fastest now (``pick``),
    each candidate timed by ``timer`` (default: the fastest of ``TIMING_RUNS`` runs,
    :func:`mmoverlock.utils.timing.min_ms`). A candidate other than PyTorch's that fails while measured (e.g.
    out of memory) is left out, with a warning; PyTorch's failing raises."""
    if choice != AUTO:
        if choice == TRITON and choice not in candidates and distrusted('depthwise_conv2d', device):
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
    timer = _default_timer if timer is None else timer
    times = {}
    for name, fn in candidates.items():
        try:
            fn()                                   # untimed: Triton compiles, cuFFT plans, cuDNN warms up
            times[name] = timer(name, fn, device)
        except Exception as err:                   # a failing alternative must not stop training
            if name == TORCH:
                raise
            reason = (str(err).strip().splitlines() or [''])[0][:200]
            warnings.warn(f'mmoverlock depthwise_conv2d: candidate {name!r} failed for {key} '
                          f'({type(err).__name__}: {reason}); it is not used there')
    best = pick(times)
    _CHOSEN[key] = best
    return best
