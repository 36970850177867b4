"""mmpretrain's ImageClassifier that also reads the release's ImageNet checkpoints as they are."""
from typing import Dict

import torch
from mmpretrain.models.classifiers import ImageClassifier

from ...checkpoint.official import is_official_cls_layout, official_cls_to_mmpretrain
from ...registry import MODELS


@MODELS.register_module()
class OverLoCKClassifier(ImageClassifier):
    """``ImageClassifier`` (same arguments) whose ``load_state_dict`` -- and so mmengine's ``load_from``,
    ``tools/test.py`` and ``mmpretrain.get_model(..., pretrained=...)`` -- accepts both layouts:

    * mmpretrain's (``backbone.*``, ``head.main_head.*``, ``head.aux_head.*``), e.g. from a training run or
      ``tools/convert_official.py``;
    * the release's timm-style model (backbone keys at the top level, ``head.*``, ``aux_head.*``), converted
      on the way by :func:`official_cls_to_mmpretrain`; train-form and deploy-form (``*_reparam.pth``, with
      ``backbone.deploy=True``) alike.

    Without an auxiliary head (``head.aux_loss_weight=0``) its weights are skipped; a 3-channel stem loads into
    a backbone of other ``in_channels`` adapted (:func:`mmoverlock.checkpoint.adapt_input_conv`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._register_load_state_dict_pre_hook(self._read_official_layout)

    @staticmethod
    def to_model_layout(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A state dict in this classifier's key layout (the release's layout converted, others as they are)."""
        return official_cls_to_mmpretrain(state) if is_official_cls_layout(state) else state

    def _read_official_layout(self, state_dict, prefix, *args) -> None:
        """load_state_dict pre-hook: rename the release's keys in place before any submodule reads them, and
        skip the auxiliary head's weights when the head has none (``aux_loss_weight=0``)."""
        if prefix:
            return
        renamed = self.to_model_layout(dict(state_dict))
        if set(renamed) != set(state_dict):
            state_dict.clear()
            state_dict.update(renamed)
        if getattr(self.head, 'aux_head', False) is None:
            for key in [k for k in state_dict if k.startswith('head.aux_head.')]:
                del state_dict[key]
