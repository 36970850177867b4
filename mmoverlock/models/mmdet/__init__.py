"""The mmdet adapter, imported by the detection configs (``custom_imports``), not by ``import mmoverlock``:
test-time augmentation that also merges instance masks (:class:`DetTTAModelWithMasks`)."""
from .tta import DetTTAModelWithMasks

__all__ = ['DetTTAModelWithMasks']
