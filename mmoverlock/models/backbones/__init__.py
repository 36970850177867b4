from .overlock import OverLoCK, RepConvBlock, arch_settings

__all__ = ['OverLoCK', 'RepConvBlock', 'arch_settings']
