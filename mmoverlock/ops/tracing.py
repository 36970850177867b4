"""The one place that tells eager runs from tracing and ONNX export."""
import contextlib
import contextvars
from typing import Iterator

import torch

#: set within :func:`fixed_size_export` (per thread and context, restored on exit)
_FIXED_SIZE_EXPORT = contextvars.ContextVar('mmoverlock_fixed_size_export', default=False)


def is_exporting() -> bool:
    """ONNX export in progress: modules take their branch-free, dynamic-size formulation in standard ops."""
    return torch.onnx.is_in_onnx_export()


def is_tracing() -> bool:
    """TorchScript tracing (e.g. mmengine's FLOP counter) or ONNX export: sizes may be traced values, so
    nothing shape-dependent is cached, and layers keep the op the exporter and the counter know."""
    return torch.jit.is_tracing() or is_exporting()


@contextlib.contextmanager
def fixed_size_export() -> Iterator[None]:
    """Within: an ONNX export whose graph is for the traced input's height and width only (the batch may stay
    dynamic), so layers may write size-specific forms (:func:`is_fixed_size_export`)."""
    token = _FIXED_SIZE_EXPORT.set(True)
    try:
        yield
    finally:
        _FIXED_SIZE_EXPORT.reset(token)


def is_fixed_size_export() -> bool:
    """An ONNX export inside :func:`fixed_size_export`: map sizes are constants of the graph."""
    return _FIXED_SIZE_EXPORT.get() and is_exporting()
