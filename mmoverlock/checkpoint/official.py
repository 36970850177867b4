"""Key maps from official OverLoCK checkpoints to mmoverlock's OpenMMLab 2.x models.

========  ==========================================  ================================================
task      official (release)                          here
========  ==========================================  ================================================
cls       timm-style model: backbone at the top,      mmpretrain ImageClassifier: ``backbone.*``,
          ``head.*``, ``aux_head.*``                  ``head.main_head.*``, ``head.aux_head.*``
det       mmdet 2.28 Mask R-CNN (``backbone``,        mmdet 3 Mask R-CNN: the same names (FPN, RPNHead,
          ``neck``, ``rpn_head``, ``roi_head``)       Shared2FC bbox head, FCN mask head kept theirs)
seg       mmseg 0.30 UperNet (``backbone``,           mmseg 1 UperNet: the same names
          ``decode_head``, ``auxiliary_head``)
========  ==========================================  ================================================

Where names did not change the map is the identity; :func:`check_state_dict` then proves the result fits
the target model (every key present, none left over, every shape equal) instead of trusting it.
"""
from typing import Dict, Optional

import torch

from ..variants import VARIANTS

CLS_HEAD_KEYS = {'head.': 'head.main_head.', 'aux_head.': 'head.aux_head.'}
#: top-level modules of the official dense-prediction models (unchanged in mmdet 3 / mmseg 1)
DET_MODULES = ('backbone.', 'neck.', 'rpn_head.', 'roi_head.')
SEG_MODULES = ('backbone.', 'decode_head.', 'auxiliary_head.')
TASKS = ('cls', 'det', 'seg')


def is_official_cls_layout(state: Dict[str, torch.Tensor]) -> bool:
    """Whether a state dict is the release's ImageNet model (backbone keys at the top level, ``head.*``,
    ``aux_head.*``) rather than mmpretrain's ImageClassifier layout (``backbone.*``, ``head.main_head.*``)."""
    return any(k.startswith('patch_embed1.') for k in state) and not any(k.startswith('backbone.') for k in state)


def official_cls_to_mmpretrain(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official ImageNet model (backbone at the top level, ``head.*``, ``aux_head.*``) ->
    mmpretrain ImageClassifier (``backbone.*``, ``head.main_head.*``, ``head.aux_head.*``)."""
    out = {}
    for key, value in state.items():
        for old, new in CLS_HEAD_KEYS.items():
            if key.startswith(old):
                out[new + key[len(old):]] = value
                break
        else:
            out['backbone.' + key] = value
    return out


def _same_names(state: Dict[str, torch.Tensor], modules: tuple, source: str) -> Dict[str, torch.Tensor]:
    strange = sorted({k.split('.')[0] + '.' for k in state if not k.startswith(modules)})
    if strange:
        raise ValueError(f'{source} checkpoint has modules {strange}; expected only {list(modules)} '
                         f'(wrong --task, or not an official checkpoint?)')
    return dict(state)


def official_det_to_mmdet3(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """mmdet 2.28 Mask R-CNN / Cascade Mask R-CNN -> mmdet 3: the module names did not change."""
    return _same_names(state, DET_MODULES, 'mmdet-2 detector')


def official_seg_to_mmseg1(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """mmseg 0.30 UperNet -> mmseg 1: the module names did not change."""
    return _same_names(state, SEG_MODULES, 'mmseg-0 segmentor')


CONVERTERS = {'cls': official_cls_to_mmpretrain, 'det': official_det_to_mmdet3, 'seg': official_seg_to_mmseg1}


def convert_state_dict(state: Dict[str, torch.Tensor], task: str) -> Dict[str, torch.Tensor]:
    """Apply the ``task`` map ('cls' | 'det' | 'seg') to an official state dict."""
    if task not in CONVERTERS:
        raise ValueError(f"task '{task}' is not one of {list(TASKS)}")
    return CONVERTERS[task](state)


def infer_arch(state: Dict[str, torch.Tensor], prefix: str = '') -> Optional[str]:
    """The official variant ('xt' | 't' | 's' | 'b') whose embed dims and depths the backbone keys show,
    or None (another arch)."""
    def depth(name: str) -> int:
        head = f'{prefix}{name}.'
        return len({k[len(head):].split('.')[0] for k in state if k.startswith(head)})

    try:
        dims = [state[f'{prefix}patch_embed1.9.weight'].shape[0]] + [
            state[f'{prefix}patch_embed{i}.0.weight'].shape[0] for i in (2, 3, 4)]
    except KeyError:
        return None
    depths = [depth(f'blocks{i}') for i in (1, 2, 3, 4)]
    sub_depths = [depth('sub_blocks3'), depth('sub_blocks4')]
    for name, variant in VARIANTS.items():
        if (list(variant.embed_dim), list(variant.depth), list(variant.sub_depth)) == (dims, depths, sub_depths):
            return name
    return None


def check_state_dict(state: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor], what: str = 'model') -> None:
    """Raise one ValueError unless ``state`` has exactly ``target``'s keys with the same shapes."""
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    mismatched = [f'{k}: {tuple(state[k].shape)} vs {tuple(target[k].shape)}'
                  for k in target if k in state and state[k].shape != target[k].shape]
    if not (missing or unexpected or mismatched):
        return

    def some(items):
        return ', '.join(items[:3]) + (' ...' if len(items) > 3 else '')

    parts = [f'{len(missing)} missing ({some(missing)})' if missing else '',
             f'{len(unexpected)} unexpected ({some(unexpected)})' if unexpected else '',
             f'{len(mismatched)} of another shape (checkpoint vs model: {some(mismatched)})' if mismatched else '']
    raise ValueError(f'the converted checkpoint does not fit {what}: ' + '; '.join(p for p in parts if p))
