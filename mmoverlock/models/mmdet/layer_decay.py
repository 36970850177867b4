"""mmdet's layer-wise learning-rate decay (``LearningRateDecayOptimizerConstructor``, ConvNeXt's detection
recipe) for backbones that state their layers the way mmpretrain asks them to: ``get_layer_depth`` and
``get_stage_depth`` (:class:`~mmoverlock.models.backbones.overlock.OverLoCK`, from its stage table)."""
import json
from typing import List

import torch.nn as nn
from mmdet.engine.optimizers import LearningRateDecayOptimizerConstructor as MMDetLearningRateDecay
from mmengine.dist import get_dist_info
from mmengine.logging import MMLogger

from ...registry import OPTIM_WRAPPER_CONSTRUCTORS

DECAY_TYPES = ('layer_wise', 'stage_wise')


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LearningRateDecayOptimizerConstructor(MMDetLearningRateDecay):
    """mmdet's constructor, ``paramwise_cfg=dict(decay_rate=r, decay_type='layer_wise' | 'stage_wise')``, for a
    backbone with ``get_layer_depth(name, prefix) -> (layer id, number of layers)`` and ``get_stage_depth`` (the
    same for stages): the groups mmdet forms for ConvNeXt, ``layer_{id}_{decay|no_decay}`` with ``lr_scale =
    decay_rate ** (number of layers - id - 1)``, the stem lowest and the detector's necks and heads at 1.
    mmdet's ``num_layers`` is the backbone's own here (ignored if given). Weight decay as mmdet's: none on 1-D
    parameters and biases, and none on the backbone's ``no_weight_decay()`` names (scales and tables kept in
    more dimensions). Other backbones (ConvNeXt) get mmdet's own rules."""

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        backbone = getattr(module, 'backbone', None)
        if not hasattr(backbone, 'get_layer_depth'):
            return super().add_params(params, module, **kwargs)
        decay_rate = self.paramwise_cfg.get('decay_rate')
        decay_type = self.paramwise_cfg.get('decay_type', 'layer_wise')
        if decay_type not in DECAY_TYPES:
            raise ValueError(f"paramwise_cfg.decay_type='{decay_type}' is not one of {DECAY_TYPES}")
        if not isinstance(decay_rate, (int, float)) or not 0 < decay_rate <= 1:
            raise ValueError(f'paramwise_cfg.decay_rate={decay_rate!r} must be a number in (0, 1]')
        depth = backbone.get_layer_depth if decay_type == 'layer_wise' else backbone.get_stage_depth
        exempt = {'backbone.' + name for name in getattr(backbone, 'no_weight_decay', list)()}
        groups = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue   # frozen weights
            decays = not (param.ndim == 1 or name.endswith('.bias') or name in exempt)
            layer_id, num_layers = depth(name, 'backbone.')
            group_name = f"layer_{layer_id}_{'decay' if decays else 'no_decay'}"
            if group_name not in groups:
                scale = decay_rate ** (num_layers - layer_id - 1)
                groups[group_name] = dict(weight_decay=self.base_wd if decays else 0., params=[], param_names=[],
                                          lr_scale=scale, group_name=group_name, lr=scale * self.base_lr)
            groups[group_name]['params'].append(param)
            groups[group_name]['param_names'].append(name)
        if get_dist_info()[0] == 0:
            shown = {k: {key: g[key] for key in ('param_names', 'lr_scale', 'lr', 'weight_decay')}
                     for k, g in groups.items()}
            MMLogger.get_current_instance().info(f'Param groups ({decay_type}, decay_rate {decay_rate}) = '
                                                 f'{json.dumps(shown, indent=2)}')
        params.extend(groups.values())
