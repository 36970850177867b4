"""Everything the Triton launchers of :mod:`mmoverlock.ops` share (:mod:`~mmoverlock.ops.na2d_triton`,
:mod:`~mmoverlock.ops.depthwise_triton`): whether Triton's interpreter runs them, the accumulator dtype, host-side
``cdiv`` / next-power-of-two, the memory format outputs are made in, the checks of the tensors a kernel takes and
the buffers it writes, and the one tuning policy (:func:`tuned`).

Imports no triton at import time (the launcher modules do; :func:`accumulator` and :func:`tuned` import it when
called), so the CPU paths may use :func:`memory_format` and :data:`SUPPORTED_DTYPES` from here.

**Tuning policy.** A kernel whose best tiles depend on the problem is wrapped by :func:`tuned`:
``triton.autotune`` over a few configurations (each compiles for sm_90 without spills and for sm_80 / sm_90 on
Triton 2.1: tests/test_triton21.py), keyed on what changes the best tile, with a short budget per configuration
(:data:`TUNING_WARMUP_MS`, :data:`TUNING_REP_MS`); under the interpreter one fixed large tile. ``na2d_av``'s
three kernels follow it. The depthwise kernels do not: their tiles come from a fixed rule
(:func:`mmoverlock.ops.depthwise_triton.tile_config`), because (1) the depthwise op already measures its Triton
kernels against cuDNN (and the FFT weight gradient) once per shape (:mod:`mmoverlock.ops.selection`): autotuning
inside that candidate would time every tile configuration inside each of those measurements, on the first
training step of every new shape bucket; (2) the weight-gradient kernel's partial-sum buffer (S, k*k, C) and
grid are sized from its tile (S = chunks of BLOCK_P positions) before the launch, which ``triton.autotune``,
re-running one launch with fixed arguments per configuration, cannot resize; (3) what tuning could gain there is
unmeasured: no GPU figures for other depthwise tiles exist yet (``gpu_check.py`` row e times the fixed tiles
against cuDNN; docs/gpu.md).
"""
import contextlib
from typing import Iterable, List, Optional

import torch

from ..utils import compat

#: Triton's interpreter (CPU tensors) is active: ``TRITON_INTERPRET=1`` set before the launcher modules were
#: imported, with Triton >= 3.0 (:func:`mmoverlock.utils.compat.triton_interpreter_active`)
INTERPRET = compat.triton_interpreter_active()

#: the dtypes the kernels take (fp16 / bf16 / fp32 accumulate in fp32, fp64 in fp64)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

#: the autotuning budget per configuration (:func:`tuned`): warm-up and timed runs, in milliseconds
TUNING_WARMUP_MS = 5
TUNING_REP_MS = 25


def cdiv(numerator: int, denominator: int) -> int:
    """Ceiling division on the host (``triton.cdiv`` is a constexpr-function wrapper in Triton 3.x, several
    times slower per call; the launch paths call this a few times per op call)."""
    return -(-numerator // denominator)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n, for n >= 1, on the host (see :func:`cdiv`)."""
    return 1 << (n - 1).bit_length()


def accumulator(dtype: torch.dtype):
    """The kernels' accumulator (a ``tl`` dtype): fp64 for fp64 inputs, else fp32."""
    import triton.language as tl
    return tl.float64 if dtype == torch.float64 else tl.float32


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """:func:`accumulator` as a torch dtype (host-side partial-sum buffers)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last for an NHWC-strided (and not also NCHW-contiguous) 4-d tensor, else contiguous: the layout
    the depthwise op's outputs and gradients are made in."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def device_guard(tensor: torch.Tensor):
    """The tensor's CUDA device made current around launches (Triton launches on the current device)."""
    if tensor.device.type == 'cuda':
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def tuned(kernel, configs: list, key: List[str]):
    """``kernel`` under ``triton.autotune`` over ``configs`` keyed on ``key`` (on a GPU), measuring each
    configuration for :data:`TUNING_WARMUP_MS` + :data:`TUNING_REP_MS` (:func:`mmoverlock.utils.compat.triton_autotune`
    spells that for the installed Triton); None under the interpreter, which runs the plain kernel with fixed
    tiles."""
    if INTERPRET:
        return None
    return compat.triton_autotune(configs, key, warmup_ms=TUNING_WARMUP_MS, rep_ms=TUNING_REP_MS)(kernel)


def check_kernel_tensors(op: str, first_name: str, first: torch.Tensor, others: Iterable[Optional[torch.Tensor]],
                         interpret: bool) -> None:
    """One-line errors for tensors a kernel cannot take: another device or dtype than ``first``, a dtype
    outside :data:`SUPPORTED_DTYPES`, CPU tensors unless ``interpret`` (Triton's interpreter is on). None
    entries of ``others`` are skipped."""
    for t in others:
        if t is not None and (t.device != first.device or t.dtype != first.dtype):
            raise ValueError(f'{op}: all tensors must share device and dtype with {first_name} ({first.device}, '
                             f'{first.dtype}), got {t.device}, {t.dtype}')
    if first.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f'{op}: dtype {first.dtype} is not supported; use float16, bfloat16, float32 or float64')
    if first.device.type == 'cpu' and not interpret:
        raise RuntimeError(f"{op}: CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before importing "
                           f'mmoverlock, or pass CUDA tensors')


def output_buffer(op: str, buffer: Optional[torch.Tensor], like: torch.Tensor, name: str,
                  memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """A new tensor of ``like``'s shape, dtype and device in ``memory_format``, or ``buffer`` (any strides)
    after checking that it fits."""
    if buffer is None:
        return torch.empty(like.shape, dtype=like.dtype, device=like.device, memory_format=memory_format)
    if buffer.shape != like.shape or buffer.dtype != like.dtype or buffer.device != like.device:
        raise ValueError(f'{op}: {name} buffer {tuple(buffer.shape)} {buffer.dtype} {buffer.device} does not '
                         f'match {tuple(like.shape)} {like.dtype} {like.device}')
    return buffer
