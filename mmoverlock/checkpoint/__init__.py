"""OverLoCK checkpoints: reading them safely (:mod:`.io`: weights only, one-line errors, the deploy-form and
shape-mismatch rules), loading them into the backbone (:mod:`.load`), a stem for other image channels
(:mod:`.stem`), and the release's layouts mapped to mmpretrain / mmdet 3 / mmseg 1 models (:mod:`.official`,
imported by the tools and adapters that convert)."""
from .io import (NESTING_KEYS, extract_state_dict, has_train_form_blocks, is_deploy_form, read_checkpoint,
                 shape_mismatches)
from .load import load_overlock_checkpoint, reparam_state_dict
from .stem import adapt_input_conv, adapt_stem

__all__ = ['NESTING_KEYS', 'extract_state_dict', 'has_train_form_blocks', 'is_deploy_form', 'read_checkpoint',
           'shape_mismatches', 'load_overlock_checkpoint', 'reparam_state_dict', 'adapt_input_conv', 'adapt_stem']
