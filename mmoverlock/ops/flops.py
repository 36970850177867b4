"""What jit-trace FLOP counters charge for mmoverlock's ops: handles for mmengine's ``FlopAnalyzer`` and
``ActivationAnalyzer`` (``mmengine.analysis.get_model_complexity_info``, which the ``get_flops.py`` tools of mmdet,
mmseg and mmpretrain call), registered with mmengine's default op handles by ``import mmoverlock`` -- handles
for mmoverlock's own ops only, nothing else of the counter changes.

* ``mmoverlock::na2d_av`` (and ``na2d_av_triton``): k*k multiply-adds per output element, NATTEN's ``av_2d``
  rule; attn (B, G, k*k, H, W), value (B, G, C, H, W).
* ``mmoverlock::depthwise_conv2d``: the conv it is, k*k multiply-adds per output element; x (B, C, H, W),
  weight (C, 1, k, k). (Traced models record ``F.conv2d`` instead, counted as a conv already; the handle counts
  the op where a trace records it.)

One FLOP is one multiply-add (fvcore's and mmengine's convention).
"""
from typing import Any, Callable, Dict, List

__all__ = ['na2d_av_flop_jit', 'depthwise_conv2d_flop_jit', 'output_activation_jit', 'FLOP_HANDLES',
           'ACTIVATION_HANDLES', 'register_flop_handles']


def _shape(value: Any) -> List[int]:
    """The sizes of a traced tensor value (a ``torch._C.Value``)."""
    return list(value.type().sizes())


def _prod(sizes: List[int]) -> int:
    out = 1
    for s in sizes:
        out *= int(s)
    return out


def na2d_av_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """attn (B, G, k*k, H, W), value (B, G, C, H, W) -> k*k multiply-adds per output element."""
    return _prod(_shape(inputs[1])) * int(_shape(inputs[0])[2])


def depthwise_conv2d_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """x (B, C, H, W), weight (C, 1, k, k) -> k*k multiply-adds per output element (stride 1, 'same')."""
    weight = _shape(inputs[1])
    return _prod(_shape(inputs[0])) * int(weight[-1]) * int(weight[-2])


def output_activation_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """Activations: the elements of the output."""
    return _prod(_shape(outputs[0]))


FLOP_HANDLES: Dict[str, Callable] = {
    'mmoverlock::na2d_av': na2d_av_flop_jit,
    'mmoverlock::na2d_av_triton': na2d_av_flop_jit,
    'mmoverlock::depthwise_conv2d': depthwise_conv2d_flop_jit,
}
ACTIVATION_HANDLES: Dict[str, Callable] = {name: output_activation_jit for name in FLOP_HANDLES}


def register_flop_handles() -> None:
    """Add the handles to mmengine's default ones (idempotent; handles of other ops are left as they are)."""
    from mmengine.analysis import complexity_analysis
    for table, handles in ((complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS, FLOP_HANDLES),
                           (complexity_analysis._DEFAULT_SUPPORTED_ACT_OPS, ACTIVATION_HANDLES)):
        for name, handle in handles.items():
            table.setdefault(name, handle)
