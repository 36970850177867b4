"""Reading checkpoints safely: weights only, one-line errors for files that are not checkpoints, and which tensors
do not fit a model. Knows no model (which state dicts are in deploy form is the blocks' own rule,
:mod:`mmoverlock.models.layers`)."""
import os
import pickle
import re
import struct
import zipfile
from typing import Dict, List, Optional
from urllib.error import URLError
from urllib.parse import urlparse

import torch

from ..utils import compat
from ..utils.safe_load import SAFE_GLOBALS

#: the wrappers a checkpoint may hold its weights under (mmengine, the release, EMA weights)
NESTING_KEYS = ('state_dict', 'model', 'state_dict_ema')


#: what an unreadable file raises inside torch.load: the zip reader, the legacy reader and the weights-only
#: unpickler each fail their own way on bytes that are not a checkpoint (random bytes: IndexError, a text file:
#: KeyError, a truncated file: RuntimeError or EOFError, ...)
_UNREADABLE = (RuntimeError, EOFError, zipfile.BadZipFile, OSError, IndexError, KeyError, ValueError, TypeError,
               AttributeError, OverflowError, struct.error)
#: a weights-only refusal that is about the allow-list (a pickled class or function), not about broken bytes
_ALLOW_LIST_REFUSAL = re.compile(r'GLOBAL|allowlist|add_safe_globals|only HistoryBuffer')


def _corrupt(source: str, why: str) -> ValueError:
    return ValueError(f"checkpoint '{source}' is corrupt or not a PyTorch checkpoint ({why})")


def sniff_checkpoint(path: str) -> None:
    """Raise the one-line 'corrupt or not a PyTorch checkpoint' error unless the file at ``path`` starts as
    ``torch.save`` writes: a zip archive (torch >= 1.6) or a pickle (the legacy format). Reads a few bytes
    only; a file that passes may still be truncated (:func:`read_checkpoint` says so)."""
    with open(path, 'rb') as f:
        head = f.read(2)
    if not head:
        raise _corrupt(path, 'the file is empty')
    if zipfile.is_zipfile(path):
        return
    if head[:1] == b'\x80' and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:   # pickle's PROTO opcode
        return
    if head == b'PK':
        raise _corrupt(path, 'a zip archive cut short')
    raise _corrupt(path, 'neither a zip archive nor a pickle; a text file or an HTML page saved instead of the '
                         'download?' if head.isascii() and head.decode('ascii').isprintable()
                   else 'neither a zip archive nor a pickle')


def _weights_only_detail(err: pickle.UnpicklingError) -> str:
    """The unpickler's own reason inside torch's long 'Weights only load failed' text."""
    text = str(err)
    if 'WeightsUnpickler error:' in text:
        text = text.split('WeightsUnpickler error:', 1)[1].split('Check the documentation of torch.load')[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def read_checkpoint(source: str, map_location='cpu', mmap: bool = False) -> dict:
    """Load a checkpoint file or URL with ``weights_only=True`` and mmoverlock's allow-list.

    Raises a one-line error for a missing, truncated or non-checkpoint file (random bytes, a text file, an
    HTML page): ``checkpoint 'x' is corrupt or not a PyTorch checkpoint (...)``. ``mmap``: map a local zip
    checkpoint's tensors instead of reading them (a quick check of a large file).

    torch < 2.4 has no allow-list for ``weights_only=True``; there the same allow-list is enforced by a
    restricted unpickler (:func:`mmoverlock.utils.compat.safe_load_kwargs`), so the same checkpoints load and
    the same are refused; a URL is downloaded into torch hub's cache first, as ``load_state_dict_from_url`` does.
    """
    # Process-wide and idempotent (``import mmoverlock`` adds the same list). A
    # ``torch.serialization.safe_globals`` context would *remove* the entries on exit.
    load_kwargs = compat.safe_load_kwargs(SAFE_GLOBALS)
    is_url = isinstance(source, str) and source.startswith(('http://', 'https://'))
    if not is_url and not os.path.isfile(source):
        raise FileNotFoundError(f"checkpoint '{source}' does not exist; expected a .pth file or an http(s) URL")
    path = source
    try:
        if is_url and load_kwargs['weights_only']:
            return torch.hub.load_state_dict_from_url(source, map_location=map_location, weights_only=True)
        if is_url:     # torch < 2.4: the hub's download and cache, then the restricted load below
            path = _hub_download(source)
    except URLError as err:
        raise ValueError(f"checkpoint '{source}' could not be downloaded ({err.reason}); "
                         f"download it and pass the local file") from None
    except pickle.UnpicklingError as err:
        raise _refusal(source, err) from None
    except _UNREADABLE as err:
        raise _unreadable(source, err) from None
    sniff_checkpoint(path)
    try:
        return torch.load(path, map_location=map_location, mmap=mmap and zipfile.is_zipfile(path), **load_kwargs)
    except pickle.UnpicklingError as err:
        raise _refusal(source, err) from None
    except _UNREADABLE as err:
        raise _unreadable(source, err) from None


def _refusal(source: str, err: pickle.UnpicklingError) -> ValueError:
    """The one-line error of an unpickler's refusal: an object outside the allow-list, or broken bytes."""
    detail = _weights_only_detail(err)
    if not _ALLOW_LIST_REFUSAL.search(detail):   # broken bytes the unpickler could not parse
        return _corrupt(source, detail)
    return ValueError(f"checkpoint '{source}' holds objects outside the allow-list and was not loaded "
                      f"(weights_only): {detail}")


def _unreadable(source: str, err: Exception) -> ValueError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return _corrupt(source, f'{type(err).__name__}: {first}' if isinstance(err, LookupError) else first)


def _hub_download(url: str) -> str:
    """The file of ``url`` in torch hub's checkpoint cache (downloaded once), where
    ``torch.hub.load_state_dict_from_url`` keeps it."""
    folder = os.path.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, os.path.basename(urlparse(url).path))
    if not os.path.isfile(path):
        torch.hub.download_url_to_file(url, path, progress=False)
    return path


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


def shape_mismatches(own: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor]) -> List[str]:
    """'key: checkpoint (shape) vs model (shape)' for every tensor both have with different shapes."""
    return [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
            for k, v in state.items() if k in own and v.shape != own[k].shape]


__all__ = ['read_checkpoint', 'sniff_checkpoint', 'extract_state_dict', 'shape_mismatches', 'NESTING_KEYS']
