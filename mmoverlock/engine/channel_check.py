"""Check, before any forward, that what consumes the backbone's maps expects their channels.

Swapping the backbone of a detector or segmentor by hand and forgetting ``neck.in_channels`` is the
commonest config mistake; PyTorch then fails deep inside a conv with a shape message that does not say
which list to fix. :func:`check_channels` compares ``backbone.out_channels`` (OverLoCK and every backbone
exposing it) with the first consumer -- the neck (mmdet, mmseg), else the decode and auxiliary heads
(mmseg) or the classification head (mmpretrain) -- and raises one line with the right value.
"""
from typing import Any, List, Optional, Tuple

import torch.nn as nn
from mmengine.hooks import Hook

from ..registry import HOOKS


def unwrap_model(model: nn.Module) -> nn.Module:
    """DDP / TTA / other wrappers -> the model with ``backbone``."""
    while not hasattr(model, 'backbone') and isinstance(getattr(model, 'module', None), nn.Module):
        model = model.module
    return model


def _first(module: Optional[nn.Module]) -> Optional[nn.Module]:
    if isinstance(module, (nn.Sequential, nn.ModuleList)):
        return module[0] if len(module) else None
    return module


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _backbone_channels(model: nn.Module) -> Optional[List[int]]:
    out = getattr(getattr(model, 'backbone', None), 'out_channels', None)
    if isinstance(out, (list, tuple)) and out and all(isinstance(c, int) for c in out):
        return list(out)
    return None


def _select(out: List[int], index: Any, where: str) -> Any:
    indices = index if isinstance(index, (list, tuple)) else [index]
    bad = [i for i in indices if not -len(out) <= i < len(out)]
    if bad:
        raise ValueError(f'{where}.in_index={_as_list(index)} is out of range: the backbone returns '
                         f'{len(out)} maps (out_channels={out}); use indices in 0..{len(out) - 1}')
    return [out[i] for i in index] if isinstance(index, (list, tuple)) else out[index]


def _head_expectations(head: nn.Module, out: List[int], where: str) -> List[Tuple[str, Any, Any]]:
    """(attribute path, declared, expected) for a head fed by the backbone directly (or through GAP). A head
    that consumes several maps describes itself with ``channel_expectations(out_channels, where)``."""
    if hasattr(head, 'channel_expectations'):
        return head.channel_expectations(out, where)
    if not hasattr(head, 'in_channels'):
        return []
    declared = _as_list(head.in_channels)
    if hasattr(head, 'in_index'):           # mmseg BaseDecodeHead
        expected = _select(out, head.in_index, where)
        if getattr(head, 'input_transform', None) == 'resize_concat':
            expected = sum(expected)        # mmseg stores the summed width
        return [(f'{where}.in_channels', declared, expected)]
    return [(f'{where}.in_channels', declared, out if isinstance(declared, list) else out[-1])]


def channel_expectations(model: nn.Module) -> List[Tuple[str, Any, Any]]:
    """Every (config path, declared channels, channels the backbone gives) of ``model``; [] if unknown."""
    model = unwrap_model(model)
    out = _backbone_channels(model)
    if out is None:
        return []
    neck = _first(getattr(model, 'neck', None))
    if neck is not None and hasattr(neck, 'in_channels'):
        declared = _as_list(neck.in_channels)
        return [('model.neck.in_channels', declared, out if isinstance(declared, list) else out[-1])]
    if neck is not None and type(neck).__name__ != 'GlobalAveragePooling':
        return []                           # an unknown neck may change the channels: nothing to compare
    found = []
    for name in ('decode_head', 'auxiliary_head', 'head'):
        heads = getattr(model, name, None)
        heads = list(heads) if isinstance(heads, nn.ModuleList) else [heads]
        for i, head in enumerate(h for h in heads if h is not None):
            where = f'model.{name}' + (f'[{i}]' if len(heads) > 1 else '')
            found += _head_expectations(head, out, where)
    return found


def check_channels(model: nn.Module) -> None:
    """Raise a one-line ValueError if the neck / heads do not take the backbone's out_channels.

    Works on mmdet detectors, mmseg segmentors and mmpretrain classifiers (wrapped or not) whose backbone
    exposes ``out_channels``; models it cannot read are left alone.
    """
    model = unwrap_model(model)
    for where, declared, expected in channel_expectations(model):
        if _as_list(declared) != _as_list(expected):
            backbone = model.backbone
            indices = getattr(backbone, 'out_indices', None)
            desc = type(backbone).__name__ + (f'(out_indices={tuple(indices)})' if indices is not None else '')
            raise ValueError(f'{where}={declared} does not match the backbone: {desc} gives out_channels='
                             f'{_backbone_channels(model)}; set {where}={expected}')


@HOOKS.register_module()
class ChannelCheckHook(Hook):
    """Run :func:`check_channels` on the runner's model before training or testing starts."""

    priority = 'VERY_HIGH'

    def before_run(self, runner) -> None:
        check_channels(runner.model)


__all__ = ['check_channels', 'channel_expectations', 'unwrap_model', 'ChannelCheckHook']
