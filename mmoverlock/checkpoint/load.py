"""Loading official or own OverLoCK weights into the backbone without a key map (train form into deploy form
included)."""
from collections import Counter
from typing import Dict, Iterable, Optional

import torch
import torch.nn as nn
from mmengine.logging import MMLogger, print_log

from ..models.layers import DilatedReparamBlock
from .io import extract_state_dict, has_train_form_blocks, is_deploy_form, read_checkpoint, shape_mismatches
from .stem import adapt_stem


def reparam_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Convert every train-form DilatedReparamBlock in a state dict to its deploy form."""
    state = dict(state)
    prefixes = [k[:-len('origin_bn.weight')] for k in state if k.endswith('origin_bn.weight')]
    for p in prefixes:
        sub = {k[len(p):]: state.pop(k) for k in list(state) if k.startswith(p)}
        weight = sub['lk_origin.weight']
        block = DilatedReparamBlock(weight.shape[0], weight.shape[-1]).to(weight.dtype)
        block.load_state_dict(sub)
        block.eval()
        block.switch_to_deploy()
        state.update({p + k: v for k, v in block.state_dict().items()})
    return state


def _summary(keys: Iterable[str]) -> str:
    counts = Counter(k.split('.')[0] for k in keys)
    return ', '.join(f'{name} ({n})' for name, n in sorted(counts.items())) or 'none'


def load_overlock_checkpoint(model: nn.Module, source: str, prefix: Optional[str] = None,
                             logger: Optional[MMLogger] = None) -> Dict[str, list]:
    """Load official or own weights into ``model`` (any layout), logging new and dropped keys.

    Train-form checkpoints load into deploy-form models (re-parameterised on the way); a 3-channel stem into a
    model of other ``in_channels`` is adapted (:func:`~mmoverlock.checkpoint.stem.adapt_input_conv`). Shape mismatches
    (another arch) raise one error that lists them.
    Returns dict(missing=[...], unexpected=[...]).
    """
    state = extract_state_dict(read_checkpoint(source), prefix)
    own = model.state_dict()
    if has_train_form_blocks(state) and not has_train_form_blocks(own):
        state = reparam_state_dict(state)
    elif is_deploy_form(state) and has_train_form_blocks(own):
        raise ValueError(f"checkpoint '{source}' is re-parameterised (deploy form); build the model with "
                         f"deploy=True to load it")
    state = adapt_stem(state, own)      # RGB weights into a stem of other in_channels, as timm adapts them
    mismatched = shape_mismatches(own, state)
    if mismatched:
        raise ValueError(f"checkpoint '{source}' does not fit this model ({len(mismatched)} shape mismatches, "
                         f"another arch?): " + '; '.join(mismatched[:5]) + (' ...' if len(mismatched) > 5 else ''))
    matched = {k: v for k, v in state.items() if k in own}
    if not matched:
        raise ValueError(f"checkpoint '{source}' shares no key with the model (keys like "
                         f"{list(state)[:3]}); wrong file or missing prefix='backbone.'?")
    missing = sorted(set(own) - set(matched))
    unexpected = sorted(set(state) - set(own))
    model.load_state_dict(matched, strict=False)
    print_log(f"loaded {len(matched)} tensors from '{source}'"
              + (f" (prefix '{prefix}')" if prefix else '')
              + f'; new, left at init: {_summary(missing)}; dropped: {_summary(unexpected)}',
              logger=logger or 'current')
    return dict(missing=missing, unexpected=unexpected)


__all__ = ['load_overlock_checkpoint', 'reparam_state_dict']
