"""The ImageNet head of OverLoCK with its deep-supervision (Overview-Net) head, for mmpretrain: the one head
implementation (:class:`mmoverlock.models.heads.OverLoCKHead`, which timm's models use too) with mmpretrain's
``ClsHead`` interface (losses, predictions).

Imported by the classification configs (``custom_imports``), not by ``import mmoverlock``: it needs mmpretrain.
"""
from typing import List, Tuple

import torch
from mmpretrain.models.heads import ClsHead

from ...registry import MODELS
from ..heads import OverLoCKHead


@MODELS.register_module()
class OverLoCKClsHead(OverLoCKHead, ClsHead):
    """Main head on the last map and an auxiliary head on the Overview-Net map.

    Expects the backbone's ``out_indices=(3, 4)`` (ImageNet layout): ``feats = (last, overview)``.

    * ``main_head`` (official ``head``): conv1x1(in -> projection, no bias) BN SiLU avg-pool
      conv1x1(projection -> classes).
    * ``aux_head`` (official ``aux_head``): BN avg-pool conv1x1(overview -> classes); only its loss is used,
      weighted ``aux_loss_weight`` (0.4 in the official recipe). Prediction uses the main logits. With
      ``aux_loss_weight=0`` the head is not built (no parameters that nothing uses; the release's weights for it
      are skipped on loading, :class:`~mmoverlock.models.mmpretrain.OverLoCKClassifier`).

    Args:
        num_classes: classes.
        in_channels: channels of the last map (e3 + e3 // 4).
        overview_channels: channels of the Overview-Net map (e3).
        projection: hidden width of the main head (1024 in the release).
        aux_loss_weight: weight of the auxiliary head's loss (0: no auxiliary head).
        init_cfg: mmengine init config.
        **kwargs: mmpretrain ``ClsHead`` arguments (``loss``, ``topk``, ...).
    """

    def __init__(self, num_classes: int, in_channels: int, overview_channels: int, projection: int = 1024,
                 aux_loss_weight: float = 0.4, init_cfg=dict(type='TruncNormal', layer=['Conv2d'], std=.02),
                 **kwargs):
        if num_classes <= 0:
            raise ValueError(f'OverLoCKClsHead: num_classes={num_classes} must be positive')
        if aux_loss_weight < 0:
            raise ValueError(f'OverLoCKClsHead: aux_loss_weight={aux_loss_weight} must be >= 0 (0: no auxiliary head)')
        super().__init__(in_channels, overview_channels, num_classes, projection, aux=aux_loss_weight > 0,
                         init_cfg=init_cfg, **kwargs)
        self.num_classes, self.aux_loss_weight = num_classes, aux_loss_weight

    def channel_expectations(self, out_channels: List[int], where: str) -> List[Tuple[str, int, int]]:
        """(config path, declared, expected) of the two maps this head reads, for mmoverlock's
        ``ChannelCheckHook``: the last output and the Overview-Net map."""
        if len(out_channels) < 2:
            return []
        expected = [(f'{where}.in_channels', self.main_head[0].in_channels, out_channels[-2])]
        if self.aux_head is not None:
            expected.append((f'{where}.overview_channels', self.aux_head[0].num_features, out_channels[-1]))
        return expected

    def _split(self, feats: Tuple[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        if len(feats) < 2:
            raise ValueError(f'OverLoCKClsHead needs (last map, overview map): set the backbone '
                             f'out_indices=(3, 4); got {len(feats)} map(s)')
        return feats[-2], feats[-1]

    def pre_logits(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        """The features before the final layer (mmpretrain's ``extract_feat(stage='pre_logits')``): the main
        head's pooled projection, (last (B, C, h, w), overview) -> (B, projection)."""
        return super().forward(self._split(feats)[0], pre_logits=True)

    def forward(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        """(last (B, C, h, w), overview (B, e3, h, w)) -> main logits (B, num_classes)."""
        return super().forward(self._split(feats)[0])

    def forward_aux(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        """(last, overview (B, e3, h, w)) -> auxiliary logits (B, num_classes)."""
        return super().forward_aux(self._split(feats)[1])

    def loss(self, feats: Tuple[torch.Tensor], data_samples: List, **kwargs) -> dict:
        losses = self._get_loss(self(feats), data_samples, **kwargs)
        if self.aux_head is not None:
            aux = self._get_loss(self.forward_aux(feats), data_samples, **kwargs)
            losses['loss_aux'] = self.aux_loss_weight * aux['loss']
        return losses
