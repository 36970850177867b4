"""The release's ImageNet head, one implementation for timm (:class:`mmoverlock.timm.OverLoCKTimm`) and mmpretrain
(:class:`mmoverlock.models.mmpretrain.OverLoCKClsHead` subclasses it). Needs neither library."""
from typing import Optional

import torch
import torch.nn as nn
from mmengine.model.weight_init import trunc_normal_

#: the pooling of the main head ('' = none: the 1x1 classifier runs on every position)
GLOBAL_POOLS = ('avg', 'max', 'avgmax', '')


def init_convs(module: nn.Module) -> None:
    """The release's init: trunc-normal (std 0.02) conv weights, zero biases (meta tensors: nothing to do)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and not m.weight.is_meta:
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class AvgMaxPool2d(nn.Module):
    """The mean of global average and max pooling (timm's 'avgmax'): (B, C, H, W) -> (B, C, 1, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x.mean((2, 3), keepdim=True) + x.amax((2, 3), keepdim=True))


def global_pool_layer(global_pool: str, where: str = 'OverLoCKHead') -> nn.Module:
    """The head's pooling: 'avg' (the release's), 'max', 'avgmax' or '' (none); one-line error otherwise."""
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"{where}: global_pool='{global_pool}' is not supported; one of {GLOBAL_POOLS} "
                         f"(the head pools its {{projection}}-channel map and classifies it with a 1x1 conv)")
    return {'avg': nn.AdaptiveAvgPool2d(1), 'max': nn.AdaptiveMaxPool2d(1), 'avgmax': AvgMaxPool2d(),
            '': nn.Identity()}[global_pool]


class OverLoCKHead(nn.Module):
    """The release's ImageNet head (official keys ``head.*``, ``aux_head.*``; here ``main_head.*``,
    ``aux_head.*``).

    * ``main_head``: conv1x1(in -> projection, no bias) BN SiLU pool conv1x1(projection -> classes) on the
      last map (B, in_channels, h, w) -> (B, num_classes); without pooling (``global_pool=''``) the 1x1
      classifier runs on every position: (B, num_classes, h, w).
    * ``aux_head`` (only with ``aux``, and classes): BN avg-pool conv1x1(overview -> classes) on the
      Overview-Net map (B, overview_channels, h, w) -> (B, num_classes); deep supervision in training only (the
      release weights its loss 0.4).

    ``drop`` (dropout before the classifier, timm's ``drop_rate``) has no weights; the release uses none.
    ``**kwargs`` go to the next class of a subclass's bases (mmpretrain's ``ClsHead``: ``loss``, ``init_cfg``...).
    """

    def __init__(self, in_channels: int, overview_channels: int, num_classes: int, projection: int = 1024,
                 drop_rate: float = 0., global_pool: str = 'avg', aux: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.overview_channels, self.projection, self.aux = overview_channels, projection, aux
        self.main_head = nn.Sequential(
            nn.Conv2d(in_channels, projection, 1, bias=False), nn.BatchNorm2d(projection), nn.SiLU(),
            global_pool_layer(global_pool, type(self).__name__), nn.Identity())
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.aux_head: Optional[nn.Sequential] = None
        self.drop = nn.Dropout(drop_rate)
        self.reset(num_classes)

    def reset(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New classifiers for ``num_classes`` (trunc-normal init; 0 removes them and the auxiliary head), on the
        device, in the dtype and in the training mode of the head; a new pooling if ``global_pool`` is given."""
        like = self.main_head[0].weight
        factory = dict(device=like.device, dtype=like.dtype)
        if global_pool is not None:
            self.main_head[3] = global_pool_layer(global_pool, type(self).__name__)
            self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.main_head[4] = nn.Conv2d(self.projection, num_classes, 1, **factory) if num_classes else nn.Identity()
        self.aux_head = None
        if self.aux and num_classes:
            self.aux_head = nn.Sequential(nn.BatchNorm2d(self.overview_channels, **factory), nn.AdaptiveAvgPool2d(1),
                                          nn.Conv2d(self.overview_channels, num_classes, 1, **factory))
        init_convs(self.main_head[4])
        if self.aux_head is not None:
            init_convs(self.aux_head[2])
        self.train(self.training)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Last map (B, in_channels, h, w) -> logits (B, num_classes), or with ``pre_logits`` the pooled
        (B, projection); without pooling (B, num_classes, h, w) and (B, projection, h, w)."""
        x = self.main_head[3](self.main_head[2](self.main_head[1](self.main_head[0](x))))
        if pre_logits:
            return self.flatten(x)
        return self.flatten(self.main_head[4](self.drop(x)))

    @torch.jit.unused
    def forward_aux(self, overview: torch.Tensor) -> torch.Tensor:
        """Overview-Net map (B, overview_channels, h, w) -> auxiliary logits (B, num_classes)."""
        if self.aux_head is None:
            raise RuntimeError(f'{type(self).__name__}: no auxiliary head; build it with aux_logits=True (timm) or '
                               f'aux_loss_weight > 0 (mmpretrain)')
        return self.aux_head(overview).flatten(1)


__all__ = ['OverLoCKHead', 'GLOBAL_POOLS', 'global_pool_layer', 'init_convs']
