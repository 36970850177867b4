"""The allow-list of non-tensor types that mmengine writes into checkpoints.

torch >= 2.6 loads with ``weights_only=True`` by default; rather than turning that off, the few types
mmengine stores are allow-listed: numpy arrays, scalars and dtypes (``meta`` and the message hub),
mmengine's ``HistoryBuffer`` (the message hub's log buffers), ``collections.Counter`` (MultiStepLR's
milestones in the scheduler state) and ``ConfigDict``. A ``HistoryBuffer`` pickles its statistics methods as
``getattr(HistoryBuffer, 'mean')``; ``builtins.getattr`` is therefore served by :func:`history_buffer_getattr`,
which resolves exactly those attributes and refuses everything else.

``import mmoverlock`` adds the list with torch's public ``torch.serialization.add_safe_globals`` (its only
process-wide effect besides registering its modules). :func:`mmoverlock.checkpoint.io.read_checkpoint` loads
with ``weights_only=True`` and this list on torch >= 2.4; torch < 2.4 has no allow-list (``add_safe_globals``
arrived in 2.4; its ``weights_only=True`` loads plain state dicts only), and there the reader enforces the same
list through a restricted unpickler (:func:`mmoverlock.utils.compat.safe_load_kwargs`). mmengine's own file
loader passes no ``weights_only``: torch's default, ``True`` from torch 2.6 (then this list lets it read
mmengine's checkpoints), ``False`` before.
"""
import pickle
from collections import Counter

import numpy as np
from mmengine.config import ConfigDict
from mmengine.logging.history_buffer import HistoryBuffer

try:  # numpy >= 2 moved the private module
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar

_NUMPY_DTYPES = [type(np.dtype(t)) for t in (
    'bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64',
    'float16', 'float32', 'float64', 'complex64', 'complex128', 'str', 'object')]

#: attributes of HistoryBuffer that a pickled buffer may reference (its registered statistics methods)
HISTORY_BUFFER_METHODS = frozenset({'min', 'max', 'current', 'mean'})


def history_buffer_getattr(obj, name: str):
    """``getattr`` restricted to ``HistoryBuffer.<statistics method>``: what a pickled HistoryBuffer needs."""
    if obj is HistoryBuffer and name in HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f'checkpoint asks for getattr({obj!r}, {name!r}); only HistoryBuffer.'
                                 f'{{{", ".join(sorted(HISTORY_BUFFER_METHODS))}}} are allowed')


SAFE_GLOBALS = [
    np.ndarray, np.dtype, *_NUMPY_DTYPES,
    # numpy 1.x writes numpy.core.*, numpy 2.x numpy._core.*: accept both spellings
    (_reconstruct, 'numpy.core.multiarray._reconstruct'), (_reconstruct, 'numpy._core.multiarray._reconstruct'),
    (scalar, 'numpy.core.multiarray.scalar'), (scalar, 'numpy._core.multiarray.scalar'),
    HistoryBuffer, ConfigDict, Counter,
    (history_buffer_getattr, 'builtins.getattr'),
]
