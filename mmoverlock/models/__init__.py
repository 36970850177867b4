"""The models: the backbone and its blocks. Downstream adapters live beside them and are imported only by
the configs that need them, each named for the library it adapts: ``mmpretrain`` and ``mmdet``."""
from .backbones import OverLoCK, RepConvBlock, arch_settings
from .contmix import ContMix, ContMixBlock

__all__ = ['OverLoCK', 'RepConvBlock', 'arch_settings', 'ContMix', 'ContMixBlock']
