"""The mmdet adapter, imported by the detection configs (``custom_imports``), not by ``import mmoverlock``:
test-time augmentation that also merges instance masks (:class:`DetTTAModelWithMasks`), and mmdet's layer-wise lr
decay for OverLoCK (``constructor='mmoverlock.LearningRateDecayOptimizerConstructor'``)."""
from .layer_decay import LearningRateDecayOptimizerConstructor
from .tta import DetTTAModelWithMasks

__all__ = ['DetTTAModelWithMasks', 'LearningRateDecayOptimizerConstructor']
