"""The one place that tells eager runs from tracing and ONNX export."""
import torch


def is_exporting() -> bool:
    """ONNX export in progress: modules take their branch-free, dynamic-size formulation in standard ops."""
    return torch.onnx.is_in_onnx_export()


def is_tracing() -> bool:
    """TorchScript tracing (e.g. mmengine's FLOP counter) or ONNX export: sizes may be traced values, so
    nothing shape-dependent is cached, and layers keep the op the exporter and the counter know."""
    return torch.jit.is_tracing() or is_exporting()
