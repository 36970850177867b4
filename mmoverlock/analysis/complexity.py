"""Params and FLOPs of OverLoCK models with mmengine's flop analysis, counted as the official release counts.

The official numbers come from fvcore's jit-trace counter (mmengine's :class:`~mmengine.analysis.FlopAnalyzer`
is its port: one multiply-add = one FLOP; elementwise ops, GELU, softmax are not counted) with NATTEN's
handles for ``na2d_av``. The model is traced as it is -- nothing of it is replaced while counting -- and three
parts of ContMix are counted that way as follows:

* **aggregation** -- the registered op ``mmoverlock::na2d_av`` is one node of the trace, which
  :func:`mmoverlock.ops.flops.na2d_av_flop_jit` charges k*k multiply-adds per output element, NATTEN's
  ``av_2d_flop`` rule.
* **kernel generation** -- the official code forms the affinity ``einsum('bgcn,bgcl->bgnl', query, key)``
  (B, G, H*W, R*R) and then applies ``weight_proj`` (1x1 conv, R*R -> T = K*K + S*S) to it; our
  implementation folds ``weight_proj`` into the keys first (the same result, fewer multiply-adds).
  ``convention='implemented'`` (the default) counts what this code runs: the two folded matmuls,
  B*G*T*R*R*d and B*G*T*d*H*W, with a broadcast-aware matmul rule (mmengine's ignores the broadcast batch
  dims of ``(T, R*R) @ (B, G, R*R, d)``). ``convention='official'`` counts the official operation order,
  i.e. what fvcore reports on the release's code: those matmuls are taken out of the trace's count and the
  einsum (B*G*H*W*R*R*d) and the ``weight_proj`` conv (B*G*H*W*R*R*T) are added analytically (fvcore's
  einsum rule reads numpy's ``einsum_path`` printout, rounded to 4 significant digits; the count here is
  exact). The paper's ImageNet column (2.6 / 5.5 / 9.7 / 16.7 G) lies within about 2% of the first and
  2.5-4.5% under the second. Softmax and the position bias are uncounted either way, as in fvcore.
* **LayerScale** -- the official one is a depthwise 1x1 conv (one multiply-add per output element,
  counted); ours is ``torch.addcmul`` eagerly and that conv while traced (:class:`~mmoverlock.models.layers.
  LayerScale`), so the trace counts it as the release's code does.

These rules live in the model and in :mod:`mmoverlock.ops.flops` (registered with mmengine's default handles by
``import mmoverlock``), so mmengine's own counter -- and mmdet's ``tools/analysis_tools/get_flops.py`` -- give
the 'implemented' count of this module for the same model and input. The 'official' extras come from one eager
forward with forward hooks (the input size of each ContMix's ``weight_query``, which gives B, H and W after a
small map is fitted to the kernel); they are added to the total, to the module and every ancestor in
``by_module`` and to ``by_operator`` ('conv' for ``weight_proj``, 'einsum' for the affinity). The hooks are
removed afterwards: the model is left exactly as it was, training flags included.

Params are :func:`mmengine.analysis.parameter_count` over the modules that run at inference (the
ImageNet model's auxiliary Overview-Net head is training-only and left out, as in the official README).
"""
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis.jit_handles import get_shape

from mmoverlock.models.contmix import ContMix, ContMixBlock
from mmoverlock.ops.flops import FLOP_HANDLES

__all__ = ['CONVENTIONS', 'ComplexityReport', 'broadcast_matmul_flop_jit',
           'analytic_extras', 'analyze_complexity', 'deploy_', 'OP_HANDLES']

CONVENTIONS = ('implemented', 'official')
NA2D_AV_OP = 'mmoverlock::na2d_av'
#: prefix of the model's module names when it is traced through :class:`KeywordForward`
WRAPPED = 'model'


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


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


#: The rules :func:`analyze_complexity` installs on mmengine's FlopAnalyzer: mmoverlock's op handles, which
#: ``import mmoverlock`` adds to mmengine's defaults too (so mmengine's own counter gives the same count). The
#: model's ContMix matmuls are broadcast-free while traced, so mmengine's matmul rule counts them.
OP_HANDLES = dict(FLOP_HANDLES)


def kernel_generation_counts(mixer: nn.Module, batch: int, height: int, width: int) -> Dict[str, Counter]:
    """What the 'official' convention changes in the count of one ContMix kernel generation on a
    (batch, dim, height, width) query source, by the owner's relative module name ('' = the mixer itself):
    the folded matmuls out, the affinity einsum in (both the mixer's own ops) and ``weight_proj``'s conv in."""
    groups, regions = mixer.num_groups, mixer.num_regions ** 2
    taps = mixer.kernel_size ** 2 + mixer.smk_size ** 2
    per_group = mixer.dim // 2 // groups                  # d: query / key channels of a group
    pixels = height * width
    folded = batch * groups * taps * (regions * per_group + per_group * pixels)   # (T, R*R) @ key^T, @ query
    return {'': Counter(einsum=batch * groups * pixels * regions * per_group, matmul=-folded),
            'weight_proj': Counter(conv=batch * groups * pixels * regions * taps)}


def _join(name: str, child: str) -> str:
    return '.'.join(part for part in (name, child) if part)


def analytic_extras(model: nn.Module, inputs: Tuple[Any, ...], convention: str = 'implemented',
                    forward_kwargs: Optional[Dict[str, Any]] = None) -> Dict[str, Counter]:
    """FLOPs the trace of ``model(*inputs, **forward_kwargs)`` does not see, by module name of ``model`` and
    operator, from one eager forward with forward hooks (removed afterwards): for ``convention='official'``,
    each ContMix kernel generation in the official operation order (:func:`kernel_generation_counts`); none
    for 'implemented'."""
    if convention not in CONVENTIONS:
        raise ValueError(f"analytic_extras: convention='{convention}' is not one of {CONVENTIONS}")
    extras: Dict[str, Counter] = defaultdict(Counter)

    def count_kernel_generation(name: str, mixer: nn.Module):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            batch, _, height, width = args[0].shape        # the query source, (B, dim, H, W)
            for child, counts in kernel_generation_counts(mixer, batch, height, width).items():
                extras[_join(name, child)].update(counts)
        return hook

    handles = []
    try:
        for name, module in model.named_modules():
            if isinstance(module, (ContMix, ContMixBlock)) and convention == 'official':
                handles.append(module.weight_query.register_forward_hook(count_kernel_generation(name, module)))
        if handles:
            with torch.no_grad():
                model(*inputs, **(forward_kwargs or {}))
    finally:
        for handle in handles:
            handle.remove()
    return dict(extras)


class KeywordForward(nn.Module):
    """``model(*inputs, **kwargs)`` as a module of positional tensor inputs only (the tracer passes no
    keywords); the model is its submodule ``model``, and is not changed."""

    def __init__(self, model: nn.Module, kwargs: Dict[str, Any]):
        super().__init__()
        self.model = model
        self.kwargs = kwargs

    def forward(self, *inputs: Any) -> Any:
        return self.model(*inputs, **self.kwargs)


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


def _ancestors(name: str) -> List[str]:
    """'a.b.c' -> ['', 'a', 'a.b', 'a.b.c'] (mmengine's module ownership)."""
    parts = name.split('.') if name else []
    return [''] + ['.'.join(parts[:k]) for k in range(1, len(parts) + 1)]


def _trace_counts(model: nn.Module, inputs: Tuple[Any, ...], forward_kwargs: Optional[Dict[str, Any]]
                  ) -> Tuple[Dict[str, int], Counter, Dict[str, int]]:
    """mmengine's count of ``model(*inputs, **forward_kwargs)``: (FLOPs by module name of ``model``, FLOPs by
    operator, unsupported ops)."""
    traced = KeywordForward(model, forward_kwargs) if forward_kwargs else model
    analyzer = FlopAnalyzer(traced, inputs)
    analyzer.set_op_handle(**OP_HANDLES)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    analyzer.tracer_warnings('none')
    by_module = {name: int(count) for name, count in analyzer.by_module().items()}
    by_operator = Counter(analyzer.by_operator())
    unsupported = dict(analyzer.unsupported_ops())
    if traced is not model:   # back to the model's own names: 'model' -> '', 'model.x' -> 'x'
        by_module = {name[len(WRAPPED) + 1:] if name != WRAPPED else '': count
                     for name, count in by_module.items() if name == WRAPPED or name.startswith(WRAPPED + '.')}
    return by_module, by_operator, unsupported


def analyze_complexity(model: nn.Module, inputs: Tuple[Any, ...], parts: Sequence[str] = ('backbone', ),
                       exclude_params: Sequence[str] = (), convention: str = 'implemented',
                       forward_kwargs: Optional[Dict[str, Any]] = None) -> ComplexityReport:
    """FLOPs and params of ``model(*inputs, **forward_kwargs)`` in eval mode with the OverLoCK counting rules.

    Args:
        model: the model (run in eval mode, its training flags restored afterwards; deploy it first with
            :func:`deploy_` if wanted). Nothing of it is replaced or left behind.
        inputs: the positional tensor inputs of ``model.forward``.
        parts: submodule names to report separately (missing ones are skipped).
        exclude_params: submodule names whose params do not count (training-only heads), in the total
            and in the parts that contain them.
        convention: 'implemented' (what this code runs) or 'official' (the release's operation order).
        forward_kwargs: keyword arguments of ``model.forward``, constants of the trace (e.g. mmdet's
            ``data_samples`` and ``mode='tensor'``).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"analyze_complexity: convention='{convention}' is not one of {CONVENTIONS}")
    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            by_module, by_operator, unsupported = _trace_counts(model, inputs, forward_kwargs)
        extras = analytic_extras(model, inputs, convention, forward_kwargs)
    finally:
        for module, mode in training.items():
            module.training = mode
    for name, counts in extras.items():
        added = sum(counts.values())
        for owner in _ancestors(name):
            by_module[owner] = by_module.get(owner, 0) + added
        by_operator.update(counts)
    by_operator = {op: int(count) for op, count in by_operator.items() if count != 0}

    counts = parameter_count(model)
    excluded = sum(counts.get(name, 0) for name in exclude_params)
    names = dict(model.named_modules())
    report = ComplexityReport(flops=by_module[''], params=counts[''] - excluded, flops_by_operator=by_operator,
                              unsupported_ops=unsupported)
    for name in parts:
        if name in names:
            inside = sum(counts.get(ex, 0) for ex in exclude_params if ex.startswith(name + '.'))
            report.parts[name] = (by_module.get(name, 0), counts.get(name, 0) - inside)
    return report
