"""mmoverlock: the OverLoCK backbone (CVPR 2025) for OpenMMLab 2.x (mmdet 3, mmseg 1, mmpretrain 1)."""
__version__ = '0.1.0'

from . import engine, ops  # noqa: E402,F401
from .models import ContMix, ContMixBlock, OverLoCK, OverLoCKClsHead  # noqa: E402,F401
from .registry import MODELS  # noqa: E402,F401
from .utils.safe_load import install_safe_globals  # noqa: E402

install_safe_globals()

__all__ = ['OverLoCK', 'ContMix', 'ContMixBlock', 'OverLoCKClsHead', 'MODELS', '__version__']
