"""The mmpretrain adapter, imported by the classification configs (``custom_imports``), not by
``import mmoverlock``: the ImageNet head with its Overview-Net auxiliary head, the classifier that also reads
the release's checkpoints, and OverLoCK's ImageNet models in mmpretrain's model hub."""
from .classifier import OverLoCKClassifier
from .cls_head import OverLoCKClsHead
from .model_hub import register_model_hub

register_model_hub()

__all__ = ['OverLoCKClassifier', 'OverLoCKClsHead', 'register_model_hub']
