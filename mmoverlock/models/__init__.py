from .backbones import OverLoCK, RepConvBlock, arch_settings
from .contmix import ContMix, ContMixBlock
from .heads import OverLoCKClsHead

__all__ = ['OverLoCK', 'RepConvBlock', 'arch_settings', 'ContMix', 'ContMixBlock', 'OverLoCKClsHead']
