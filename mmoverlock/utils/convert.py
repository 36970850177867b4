"""Key maps from official OverLoCK checkpoints to mmoverlock's OpenMMLab 2.x models."""
from typing import Dict

import torch

CLS_HEAD_KEYS = {'head.': 'head.main_head.', 'aux_head.': 'head.aux_head.'}


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
