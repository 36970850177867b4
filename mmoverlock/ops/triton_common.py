"""What the Triton launchers of :mod:`mmoverlock.ops` share: the checks of the tensors a kernel takes and the
buffers it writes. Imports no triton (the launcher modules do)."""
from typing import Iterable, Optional

import torch

#: the dtypes the kernels take (fp16 / bf16 / fp32 accumulate in fp32, fp64 in fp64)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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
