"""mmengine hooks that make runs survive kills and fail early on config mistakes."""
from mmengine.config import Config, ConfigDict

from .atomic_checkpoint import (ATOMIC_BACKEND, AtomicCheckpointHook, AtomicLocalBackend, atomic_write,
                                remove_partial_files)
from .channel_check import ChannelCheckHook, channel_expectations, check_channels, unwrap_model
from .load_check import CheckpointCheckHook, check_checkpoint_fits

CHANNEL_CHECK = 'mmoverlock.ChannelCheckHook'
CHECKPOINT_CHECK = 'mmoverlock.CheckpointCheckHook'
ATOMIC_CHECKPOINT = 'mmoverlock.AtomicCheckpointHook'


def _hook_name(hook) -> str:
    kind = hook.get('type', '') if isinstance(hook, dict) else type(hook).__name__
    return kind if isinstance(kind, str) else kind.__name__


def add_reliability_hooks(cfg: Config) -> Config:
    """Use :class:`AtomicCheckpointHook` for the default ``CheckpointHook`` and add :class:`ChannelCheckHook`
    and :class:`CheckpointCheckHook` to ``custom_hooks`` (each only where the config has not chosen
    otherwise). Returns ``cfg``."""
    hooks = cfg.get('default_hooks') or ConfigDict()
    checkpoint = hooks.get('checkpoint')
    if 'checkpoint' not in hooks:   # (an explicit None switches checkpointing off: left alone)
        hooks['checkpoint'] = ConfigDict(type=ATOMIC_CHECKPOINT, interval=1)   # mmengine's default
    elif isinstance(checkpoint, dict) and _hook_name(checkpoint).split('.')[-1] == 'CheckpointHook':
        checkpoint['type'] = ATOMIC_CHECKPOINT
    cfg.default_hooks = hooks
    custom = list(cfg.get('custom_hooks') or [])
    for name in (CHANNEL_CHECK, CHECKPOINT_CHECK):
        if not any(_hook_name(h).split('.')[-1] == name.split('.')[-1] for h in custom):
            custom.append(ConfigDict(type=name))
    cfg.custom_hooks = custom
    return cfg


__all__ = ['AtomicCheckpointHook', 'AtomicLocalBackend', 'ChannelCheckHook', 'CheckpointCheckHook',
           'add_reliability_hooks', 'atomic_write', 'channel_expectations', 'check_channels',
           'check_checkpoint_fits', 'remove_partial_files', 'unwrap_model', 'ATOMIC_BACKEND']
