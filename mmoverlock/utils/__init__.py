from .checkpoint import (extract_state_dict, load_overlock_checkpoint, read_checkpoint,
                         reparam_state_dict)

__all__ = ['extract_state_dict', 'load_overlock_checkpoint', 'read_checkpoint', 'reparam_state_dict']
