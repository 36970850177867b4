from .overlock import LAYOUTS, OverLoCK, RepConvBlock, arch_settings

__all__ = ['OverLoCK', 'RepConvBlock', 'arch_settings', 'LAYOUTS']
