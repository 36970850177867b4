"""Reading checkpoints safely and loading official OverLoCK weights into the backbone without a key map."""
import os
import pickle
import zipfile
from collections import Counter
from typing import Dict, Iterable, Optional
from urllib.error import URLError

import torch
import torch.nn as nn
from mmengine.logging import MMLogger, print_log

from ...utils.safe_load import SAFE_GLOBALS
from ..layers import DilatedReparamBlock

NESTING_KEYS = ('state_dict', 'model', 'state_dict_ema')


def read_checkpoint(source: str, map_location='cpu') -> dict:
    """Load a checkpoint file or URL with ``weights_only=True`` and the allow-list above.

    Raises a one-line error for a missing, truncated or non-checkpoint file.
    """
    # Process-wide and idempotent (``import mmoverlock`` adds the same list). A
    # ``torch.serialization.safe_globals`` context would *remove* the entries on exit.
    torch.serialization.add_safe_globals(SAFE_GLOBALS)
    is_url = isinstance(source, str) and source.startswith(('http://', 'https://'))
    if not is_url and not os.path.isfile(source):
        raise FileNotFoundError(f"checkpoint '{source}' does not exist; expected a .pth file or an http(s) URL")
    try:
        if is_url:
            return torch.hub.load_state_dict_from_url(source, map_location=map_location, weights_only=True)
        return torch.load(source, map_location=map_location, weights_only=True)
    except URLError as err:
        raise ValueError(f"checkpoint '{source}' could not be downloaded ({err.reason}); "
                         f"download it and pass the local file") from None
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"checkpoint '{source}' holds objects outside the allow-list and was not loaded "
                         f"(weights_only): {first}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint '{source}' is corrupt or not a PyTorch checkpoint ({first})") from None


def extract_state_dict(checkpoint: dict, prefix: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Unwrap ``state_dict`` / ``model`` / ``state_dict_ema`` nesting, drop ``module.``, apply ``prefix``."""
    if not isinstance(checkpoint, dict):
        raise ValueError(f'checkpoint holds a {type(checkpoint).__name__}, expected a dict of tensors')
    for key in NESTING_KEYS:
        if key in checkpoint and isinstance(checkpoint[key], dict):
            checkpoint = checkpoint[key]
            break
    state = {k[len('module.'):] if k.startswith('module.') else k: v
             for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if prefix:
        prefixed = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not prefixed:
            raise ValueError(f"no key of the checkpoint starts with prefix='{prefix}'; "
                             f"its keys start with {sorted({k.split('.')[0] + '.' for k in state})[:8]}")
        state = prefixed
    return state


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

    Train-form checkpoints load into deploy-form models (re-parameterised on the way). Shape mismatches
    (another arch) raise one error that lists them.
    Returns dict(missing=[...], unexpected=[...]).
    """
    state = extract_state_dict(read_checkpoint(source), prefix)
    own = model.state_dict()
    model_deployed = not any(k.endswith('origin_bn.weight') for k in own)
    ckpt_deployed = not any(k.endswith('origin_bn.weight') for k in state)
    if model_deployed and not ckpt_deployed:
        state = reparam_state_dict(state)
    elif ckpt_deployed and not model_deployed and any(k.endswith('lk_origin.bias') for k in state):
        raise ValueError(f"checkpoint '{source}' is re-parameterised (deploy form); build the model with "
                         f"deploy=True to load it")
    mismatched = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
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
