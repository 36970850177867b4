"""OverLoCK checkpoints, knowing no model: reading them safely (:mod:`.io`: weights only, one-line errors,
shape mismatches), loading them into a model (:mod:`.load`; the model's blocks convert their own train-form keys),
first-conv weights for other image channels (:mod:`.stem`), and the release's layouts mapped to mmpretrain /
mmdet 3 / mmseg 1 models (:mod:`.official`, imported by the tools and adapters that convert)."""
from .io import NESTING_KEYS, extract_state_dict, read_checkpoint, shape_mismatches
from .load import load_overlock_checkpoint
from .stem import adapt_input_conv

__all__ = ['NESTING_KEYS', 'extract_state_dict', 'read_checkpoint', 'shape_mismatches', 'load_overlock_checkpoint',
           'adapt_input_conv']
