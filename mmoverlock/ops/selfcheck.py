"""The first-use check of the fused Triton kernels: before an op trusts its kernels with a dtype on a device, they
compute a small fixed problem there and are compared with the reference algorithm.

The fused kernels (:mod:`mmoverlock.ops.na2d_triton`, :mod:`mmoverlock.ops.depthwise_triton`) are compiled by
whatever Triton the user has (>= 2.1) for whatever GPU and driver the user has; an old Triton can miscompile, a
driver can differ, a launcher can fail to build. So the first call of an op's fused path per (kernel, dtype,
device) in a process -- ``mmoverlock::na2d_av`` on CUDA, and ``depthwise_conv2d``'s Triton candidate -- first runs
the op's ``check`` function: every fused kernel of the op (forward and backward, in each of its tile
configurations) on a fixed small problem in that dtype on that device, against the reference computed on the CPU
in float64 from the same (rounded) inputs. The error is ``max |kernel - reference| / max |reference|`` over all
outputs; the tolerance is :data:`TOLERANCE` of the dtype.

* Agreement: the kernels are trusted for that dtype on that device for the rest of the process.
* Disagreement beyond the tolerance, a non-finite result, or an exception (a compile or launcher error): the op
  uses its fallback on that device from then on (every dtype: the device's Triton is not trusted), after one
  one-line warning naming the kernel, dtype, device and the error.

The check runs once per (kernel, dtype, device) and process; :func:`results` lists what it found and how long it
took (``tools/analysis/gpu_check.py`` reports it, row f). Setting ``MMOVERLOCK_KERNEL_CHECK=0`` in the
environment (read at each first use) turns it off: the kernels are then trusted unchecked. While a CUDA graph is
being captured an unchecked kernel is not checked (the check synchronises): that call takes the fallback.
"""
import math
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Set, Tuple

import torch

from ..utils.timing import Stopwatch

__all__ = ['ENV_VAR', 'TOLERANCE', 'CheckResult', 'enabled', 'trusted', 'distrusted', 'run_check', 'results',
           'clear', 'relative_error']

#: the environment variable that turns the check off (``0``)
ENV_VAR = 'MMOVERLOCK_KERNEL_CHECK'
#: largest ``max |kernel - reference| / max |reference|`` accepted, per dtype: fp16 / bf16 outputs are rounded
#: once (half an ulp relative) after an fp32 accumulation, so a few eps; fp32 and fp64 a few hundred ulps of
#: accumulation over at most a few hundred terms
TOLERANCE = {torch.float16: 4 * torch.finfo(torch.float16).eps, torch.bfloat16: 4 * torch.finfo(torch.bfloat16).eps,
             torch.float32: 1e-5, torch.float64: 1e-10}


@dataclass
class CheckResult:
    """What the check of one (kernel, dtype, device) found: ``passed``, the relative ``error`` (nan where the
    kernels raised), the ``tolerance``, the wall time in ``ms`` and a one-line ``reason`` where it failed."""
    kernel: str
    dtype: str
    device: str
    passed: bool
    error: float
    tolerance: float
    ms: float
    reason: str = ''


_RESULTS: Dict[Tuple[str, torch.dtype, torch.device], CheckResult] = {}
_DISTRUSTED: Set[Tuple[str, torch.device]] = set()        # (kernel, device): the fallback from now on


def enabled() -> bool:
    """The check is on unless ``MMOVERLOCK_KERNEL_CHECK=0``."""
    return os.environ.get(ENV_VAR, '1') != '0'


def relative_error(got: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> float:
    """``max |got - expected| / max |expected|`` over pairs of tensors (compared on the CPU in float64); inf
    where a shape differs or a value is not finite."""
    if len(got) != len(expected):
        return math.inf
    worst = 0.
    for g, e in zip(got, expected):
        g, e = g.detach().to('cpu', torch.float64), e.detach().to('cpu', torch.float64)
        if g.shape != e.shape or not bool(torch.isfinite(g).all()):
            return math.inf
        worst = max(worst, ((g - e).abs().max() / e.abs().max().clamp_min(1e-30)).item())
    return worst


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace('torch.', '')


def run_check(kernel: str, device: torch.device, dtype: torch.dtype,
              check: Callable[[torch.device, torch.dtype], Tuple[List[torch.Tensor], List[torch.Tensor]]],
              fallback: str) -> CheckResult:
    """Run ``check(device, dtype) -> (kernel outputs, reference outputs)`` now, record and return the result;
    on failure distrust ``kernel`` on ``device`` and warn once in one line (``fallback`` names what runs
    instead)."""
    device = torch.device(device)
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', torch.cuda.current_device())        # as tensors name their device
    tolerance = TOLERANCE[dtype]
    with Stopwatch(device if device.type == 'cuda' else None) as watch:
        try:
            with torch.no_grad():
                got, expected = check(device, dtype)
            error = relative_error(got, expected)
            reason = '' if error <= tolerance else f'max relative error {error:.3g} > tolerance {tolerance:.3g}'
        except Exception as err:        # a compile or launch error must not stop the run: the fallback is taken
            error = math.nan
            reason = f'{type(err).__name__}: {(str(err).strip().splitlines() or [""])[0][:200]}'
    result = CheckResult(kernel, _name(dtype), str(device), not reason, error, tolerance, watch.ms, reason)
    _RESULTS[(kernel, dtype, device)] = result
    if not result.passed:
        _DISTRUSTED.add((kernel, device))
        warnings.warn(f'mmoverlock: the fused Triton kernels of {kernel} failed their first-use check in '
                      f'{result.dtype} on {result.device} ({reason}); {kernel} runs {fallback} on '
                      f'{result.device} from now on')
    return result


def trusted(kernel: str, tensor: torch.Tensor,
            check: Callable[[torch.device, torch.dtype], Tuple[List[torch.Tensor], List[torch.Tensor]]],
            fallback: str) -> bool:
    """Whether ``kernel``'s fused kernels may compute on ``tensor``'s device in its dtype: the first call per
    (kernel, dtype, device) runs the check (:func:`run_check`); later calls read its result. Always True with
    the check turned off, False on a device where a check failed."""
    device = tensor.device
    if (kernel, device) in _DISTRUSTED:
        return False
    result = _RESULTS.get((kernel, tensor.dtype, device))
    if result is not None:
        return result.passed
    if not enabled():
        return True
    if device.type == 'cuda' and torch.cuda.is_current_stream_capturing():
        return False
    return run_check(kernel, device, tensor.dtype, check, fallback).passed


def distrusted(kernel: str, device) -> bool:
    """Whether a check of ``kernel`` failed on ``device`` in this process."""
    return (kernel, torch.device(device)) in _DISTRUSTED


def results() -> List[CheckResult]:
    """The checks run in this process, in order."""
    return list(_RESULTS.values())


def clear() -> None:
    """Forget every check and every distrusted device (the next first use checks again)."""
    _RESULTS.clear()
    _DISTRUSTED.clear()
