"""mmengine's default optimizer constructor with one param group per distinct set of options."""
from typing import Dict, Hashable, List

import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor

from ..registry import OPTIM_WRAPPER_CONSTRUCTORS


def _option_key(group: dict) -> Hashable:
    """What makes two param groups equal apart from their parameters: every other entry, by value."""
    return tuple(sorted((name, repr(value)) for name, value in group.items() if name != 'params'))


def merge_param_groups(groups: List[dict]) -> List[dict]:
    """Merge param groups whose options (every entry but ``params``) are equal, in first-seen order.

    Args:
        groups: param groups as torch optimizers take them, ``dict(params=[...], lr=..., ...)``.
    Returns:
        One group per distinct set of options, its ``params`` the concatenation of the merged groups' in order.
    """
    merged: Dict[Hashable, dict] = {}
    for group in groups:
        key = _option_key(group)
        if key not in merged:
            merged[key] = dict(group, params=[])
        merged[key]['params'].extend(group['params'])
    return list(merged.values())


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class GroupedParamsOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """:class:`mmengine.optim.DefaultOptimWrapperConstructor` whose ``paramwise_cfg`` rules give one param group
    per distinct set of options instead of one per parameter.

    The default constructor puts each parameter in a group of its own as soon as ``paramwise_cfg`` is given
    (e.g. ``custom_keys={'norm': dict(decay_mult=0.)}``: over 500 groups for a detector). An optimizer then
    updates its parameters group by group, so ``foreach`` (one multi-tensor update; torch's default on CUDA)
    updates one tensor at a time. With equal groups merged -- same lr, weight decay and every other option --
    the update computes the same values with a handful of multi-tensor calls (a gradient-norm clip sums the
    parameters' norms in the groups' order, so its total can differ in the last bit). Use it as
    ``optim_wrapper = dict(constructor='mmoverlock.GroupedParamsOptimWrapperConstructor', ...)``; the
    arguments are the default constructor's.

    A checkpoint's optimizer state keeps its group structure: a run resumes only with the constructor it was
    started with.
    """

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '', **kwargs) -> None:
        super().add_params(params, module, prefix=prefix, **kwargs)
        if not prefix:   # the outermost call, after the recursion over submodules
            params[:] = merge_param_groups(params)
