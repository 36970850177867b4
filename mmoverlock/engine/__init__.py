"""mmengine hooks that make runs survive kills, fail early on config mistakes and end distributed runs in
order, one for training from scratch with small batches (the demo), training loops and samplers that resume
exactly, and an optimizer constructor that keeps paramwise options in few param groups. The configs declare
them (``default_hooks.checkpoint``, ``custom_hooks``, ``train_cfg``, ``train_dataloader.sampler``,
``optim_wrapper.constructor``); mmengine's registry imports this package when a config first names one."""
from .atomic_checkpoint import AtomicCheckpointHook, atomic_write, remove_partial_files, replace_atomically
from .bn_stats import FreezeBNStatsHook
from .channel_check import ChannelCheckHook, channel_expectations, check_channels, unwrap_model
from .dist_end import DistributedEndHook, end_distributed_run
from .grouped_params import GroupedParamsOptimWrapperConstructor, merge_param_groups
from .load_check import CheckpointCheckHook, check_checkpoint_fits
from .resumable import (ResumableEpochBasedTrainLoop, ResumableInfiniteSampler, ResumableIterBasedTrainLoop,
                        ResumableSampler)

__all__ = ['AtomicCheckpointHook', 'ChannelCheckHook', 'CheckpointCheckHook', 'DistributedEndHook',
           'FreezeBNStatsHook', 'GroupedParamsOptimWrapperConstructor', 'ResumableEpochBasedTrainLoop',
           'ResumableInfiniteSampler', 'ResumableIterBasedTrainLoop', 'ResumableSampler', 'atomic_write',
           'channel_expectations', 'check_channels', 'check_checkpoint_fits', 'end_distributed_run',
           'merge_param_groups', 'remove_partial_files', 'replace_atomically', 'unwrap_model']
