"""Params and FLOPs of OverLoCK models with mmengine's flop analysis, counted as the official release counts.

The official numbers come from fvcore's jit-trace counter (mmengine's :class:`~mmengine.analysis.FlopAnalyzer`
is its port: one multiply-add = one FLOP; elementwise ops, GELU, softmax are not counted) with NATTEN's
handles for ``na2d_av``. Three parts of ContMix need help to be counted that way:

* **aggregation** -- the registered op ``mmoverlock::na2d_av`` is one node of the trace, which
  :func:`na2d_av_flop_jit` charges k*k multiply-adds per output element, NATTEN's ``av_2d_flop`` rule.
* **kernel generation** -- the official code forms the affinity ``einsum('bgcn,bgcl->bgnl', query, key)``
  (B, G, H*W, 49) and then applies ``weight_proj`` (1x1 conv, 49 -> K*K + S*S) to it; our
  implementation folds ``weight_proj`` into the keys first (the same result, fewer multiply-adds).
  ``convention='implemented'`` (the default) counts what this code runs: the two folded matmuls, with a
  broadcast-aware matmul rule (mmengine's ignores the broadcast batch dims of ``(T, 49) @ (B, G, 49, d)``).
  ``convention='official'`` runs the official operation order while counting, i.e. what fvcore reports on
  the release's code. The paper's ImageNet column (2.6 / 5.5 / 9.7 / 16.7 G) lies within about 2% of the
  first and 2.5-4.5% under the second. Softmax and the position bias are uncounted either way, as in fvcore.
* **LayerScale** -- the official one is a depthwise 1x1 conv (one multiply-add per element, counted);
  ours is ``torch.addcmul`` (an uncounted elementwise op, like GRN's), so the counting mode runs it as
  that conv.

Params are :func:`mmengine.analysis.parameter_count` over the modules that run at inference (the
ImageNet model's auxiliary Overview-Net head is training-only and left out, as in the official README).
"""
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis.jit_handles import get_shape

from ..models import contmix as contmix_module
from ..models.contmix import ContMix, relative_position_bias
from ..models.layers import LayerScale

__all__ = ['CONVENTIONS', 'ComplexityReport', 'na2d_av_flop_jit',
           'broadcast_matmul_flop_jit', 'flop_counting_mode', 'analyze_complexity', 'deploy_', 'OP_HANDLES']

CONVENTIONS = ('implemented', 'official')
NA2D_AV_OP = 'mmoverlock::na2d_av'


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def na2d_av_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """attn (B, G, k*k, H, W), value (B, G, C, H, W): k*k multiply-adds per output element."""
    attn_shape, value_shape = get_shape(inputs[0]), get_shape(inputs[1])
    taps = attn_shape[2]
    return _prod(value_shape) * taps


def broadcast_matmul_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """matmul with broadcast batch dims: prod(batch) * M * K * N (mmengine's rule ignores broadcasting)."""
    a, b = (list(get_shape(v)) for v in inputs[:2])
    if len(a) == 1:
        a = [1] + a
    if len(b) == 1:
        b = b + [1]
    if a[-1] != b[-2]:
        raise ValueError(f'matmul shapes {a} and {b} do not chain')
    batch = torch.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    return _prod(batch) * a[-2] * a[-1] * b[-1]


#: The extra rules :func:`analyze_complexity` installs on mmengine's FlopAnalyzer.
OP_HANDLES = {NA2D_AV_OP: na2d_av_flop_jit, 'aten::matmul': broadcast_matmul_flop_jit}


def _official_dynamic_kernels(self: ContMix, query_src: torch.Tensor, context: torch.Tensor
                              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """:meth:`ContMix.dynamic_kernels` in the official operation order (affinity, then weight_proj)."""
    b, _, h, w = query_src.shape
    g = self.num_heads
    query = (self.weight_query(query_src) * self.scale).reshape(b, g, -1, h * w)     # (B, G, d, HW)
    key = self.weight_key(context).reshape(b, g, -1, self.num_regions ** 2)         # (B, G, d, R*R)
    affinity = torch.einsum('bgcn,bgcl->bgnl', query, key)                          # (B, G, HW, R*R)
    kernels = self.weight_proj(affinity.permute(0, 3, 1, 2))                        # (B, T, G, HW)
    kernels = kernels.permute(0, 2, 1, 3).reshape(b, g, -1, h, w)                   # (B, G, T, H, W)
    small, large = kernels.split([self.smk_size ** 2, self.kernel_size ** 2], dim=2)
    small = (small + relative_position_bias(self.rpb1, h, w)).softmax(dim=2)
    large = (large + relative_position_bias(self.rpb2, h, w)).softmax(dim=2)
    return small, large


def _never_tracing() -> bool:
    return False


def _layer_scale_as_conv(self: LayerScale, x: torch.Tensor) -> torch.Tensor:
    """:class:`LayerScale` as the official depthwise 1x1 conv (counted: one multiply-add per element)."""
    return F.conv2d(x, self.weight, self.bias, groups=x.shape[1])


@contextmanager
def flop_counting_mode(model: nn.Module, convention: str = 'implemented') -> Iterator[nn.Module]:
    """Within the block, for ``convention='official'`` every ContMix of ``model`` generates its kernels in
    the official operation order; every LayerScale
    runs as a depthwise 1x1 conv. Outputs are unchanged (up to float rounding); the instances are
    restored on exit."""
    if convention not in CONVENTIONS:
        raise ValueError(f"flop_counting_mode: convention='{convention}' is not one of {CONVENTIONS}")
    patched = []
    # The tracer must follow the eager path that really runs (ContMix has an export path for tracing with
    # dynamic sizes that always resizes and pools back: extra FLOPs that eager inference does not spend).
    eager_tracing = getattr(contmix_module, '_is_tracing', None)
    try:
        if eager_tracing is not None:
            contmix_module._is_tracing = _never_tracing
        for m in model.modules():
            if isinstance(m, ContMix) and convention == 'official':
                m.dynamic_kernels = types.MethodType(_official_dynamic_kernels, m)
            elif isinstance(m, LayerScale):
                m.forward = types.MethodType(_layer_scale_as_conv, m)
            else:
                continue
            patched.append(m)
        yield model
    finally:
        if eager_tracing is not None:
            contmix_module._is_tracing = eager_tracing
        for m in patched:
            for name in ('aggregate', 'dynamic_kernels', 'forward'):
                m.__dict__.pop(name, None)


def deploy_(model: nn.Module) -> nn.Module:
    """Re-parameterise, in place, every outermost module that has ``switch_to_deploy``."""
    inside = set()
    for m in model.modules():
        if id(m) in inside or not hasattr(m, 'switch_to_deploy'):
            continue
        inside.update(id(s) for s in m.modules())
        m.switch_to_deploy()
    return model


@dataclass
class ComplexityReport:
    """FLOPs (multiply-adds) and params of a model and of its named parts."""
    flops: int
    params: int
    parts: Dict[str, Tuple[int, int]] = field(default_factory=dict)   # name -> (flops, params)
    flops_by_operator: Dict[str, int] = field(default_factory=dict)
    unsupported_ops: Dict[str, int] = field(default_factory=dict)


def analyze_complexity(model: nn.Module, inputs: Tuple[Any, ...], parts: Sequence[str] = ('backbone', ),
                       exclude_params: Sequence[str] = (), convention: str = 'implemented') -> ComplexityReport:
    """FLOPs and params of ``model(*inputs)`` in eval mode with the OverLoCK counting rules.

    Args:
        model: the model (put in eval mode here; deploy it first with :func:`deploy_` if wanted).
        inputs: the positional inputs of ``model.forward``.
        parts: submodule names to report separately (missing ones are skipped).
        exclude_params: submodule names whose params do not count (training-only heads), in the total
            and in the parts that contain them.
        convention: 'implemented' (what this code runs) or 'official' (the release's operation order).
    """
    model.eval()
    with flop_counting_mode(model, convention), torch.no_grad():
        analyzer = FlopAnalyzer(model, inputs)
        analyzer.set_op_handle(**OP_HANDLES)
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        analyzer.tracer_warnings('none')
        total = int(analyzer.total())
        by_module = analyzer.by_module()
        by_op = dict(analyzer.by_operator())
        unsupported = dict(analyzer.unsupported_ops())
    counts = parameter_count(model)
    excluded = sum(counts.get(name, 0) for name in exclude_params)
    names = dict(model.named_modules())
    report = ComplexityReport(flops=total, params=counts[''] - excluded, flops_by_operator=by_op,
                              unsupported_ops=unsupported)
    for name in parts:
        if name in names:
            inside = sum(counts.get(ex, 0) for ex in exclude_params if ex.startswith(name + '.'))
            report.parts[name] = (int(by_module.get(name, 0)), counts.get(name, 0) - inside)
    return report
