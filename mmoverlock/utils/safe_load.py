"""The allow-list of non-tensor types that mmengine writes into checkpoints.

torch >= 2.6 loads with ``weights_only=True`` by default; rather than turning that off, the few types
mmengine stores (numpy arrays and scalars in ``meta`` and the message hub, mmengine's ``HistoryBuffer``,
config dicts) are allow-listed.
"""
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

SAFE_GLOBALS = [
    np.ndarray, np.dtype, _reconstruct, scalar, *_NUMPY_DTYPES,
    HistoryBuffer, ConfigDict,
]


def install_safe_globals() -> None:
    """Allow-list SAFE_GLOBALS for every ``torch.load(weights_only=True)`` in the process (mmengine's
    checkpoint loader included), so our own checkpoints load under torch >= 2.6 with weights_only on."""
    import torch
    torch.serialization.add_safe_globals(SAFE_GLOBALS)
