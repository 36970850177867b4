from .checkpoint import extract_state_dict, load_overlock_checkpoint, read_checkpoint, reparam_state_dict
from .overlock import LAYOUTS, OverLoCK, RepConvBlock, arch_settings

__all__ = ['OverLoCK', 'RepConvBlock', 'arch_settings', 'LAYOUTS', 'extract_state_dict', 'load_overlock_checkpoint',
           'read_checkpoint', 'reparam_state_dict']
