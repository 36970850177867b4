"""Loading official or own OverLoCK weights into a model without a key map. The loader knows no model: the model's
modules convert what they read in their ``load_state_dict`` pre-hooks (train-form re-parameterisable blocks into
deploy-form ones, a 3-channel stem into one of other image channels), as mmpretrain's blocks do."""
import re
from collections import Counter
from typing import Dict, Iterable, Optional

import torch.nn as nn
from mmengine.logging import MMLogger, print_log

from .io import extract_state_dict, read_checkpoint

#: one shape mismatch in the error of ``nn.Module.load_state_dict`` (collected over the whole model)
_SIZE_MISMATCH = re.compile(r'size mismatch for (\S+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) '
                            r'from checkpoint, the shape in current model is torch\.Size\(\[([\d, ]*)\]\)')


def _shape(text: str) -> tuple:
    return tuple(int(n) for n in text.split(',') if n.strip())


def _summary(keys: Iterable[str]) -> str:
    counts = Counter(k.split('.')[0] for k in keys)
    return ', '.join(f'{name} ({n})' for name, n in sorted(counts.items())) or 'none'


def load_overlock_checkpoint(model: nn.Module, source: str, prefix: Optional[str] = None,
                             logger: Optional[MMLogger] = None) -> Dict[str, list]:
    """Load official or own weights into ``model`` (any layout), logging new and dropped keys.

    What the model's modules convert on loading loads too (train-form checkpoints into deploy-form models, a
    3-channel stem into a model of other ``in_channels``). Shape mismatches (another arch) raise one error that
    lists them; as with ``nn.Module.load_state_dict``, the tensors that fit are copied before it is raised.
    Returns dict(missing=[...], unexpected=[...]).
    """
    state = extract_state_dict(read_checkpoint(source), prefix)
    own = set(model.state_dict())
    if not own & set(state):
        raise ValueError(f"checkpoint '{source}' shares no key with the model (keys like "
                         f"{list(state)[:3]}); wrong file or missing prefix='backbone.'?")
    try:
        result = model.load_state_dict(state, strict=False)
    except ValueError as err:    # a module's pre-hook refused what it read (e.g. deploy-form weights)
        raise ValueError(f"checkpoint '{source}': {err}") from None
    except RuntimeError as err:
        mismatched = [f'{key}: checkpoint {_shape(ours)} vs model {_shape(theirs)}'
                      for key, ours, theirs in _SIZE_MISMATCH.findall(str(err))]
        if not mismatched:
            raise
        raise ValueError(f"checkpoint '{source}' does not fit this model ({len(mismatched)} shape mismatches, "
                         f"another arch?): " + '; '.join(mismatched[:5]) + (' ...' if len(mismatched) > 5 else '')
                         ) from None
    missing, unexpected = sorted(result.missing_keys), sorted(result.unexpected_keys)
    print_log(f"loaded {len(own) - len(missing)} tensors from '{source}'"
              + (f" (prefix '{prefix}')" if prefix else '')
              + f'; new, left at init: {_summary(missing)}; dropped: {_summary(unexpected)}',
              logger=logger or 'current')
    return dict(missing=missing, unexpected=unexpected)


__all__ = ['load_overlock_checkpoint']
