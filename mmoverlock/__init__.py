"""mmoverlock: the OverLoCK backbone (CVPR 2025) for OpenMMLab 2.x (mmdet 3, mmseg 1, mmpretrain 1).

``import mmoverlock`` -- what a config's ``custom_imports=dict(imports=['mmoverlock'])`` does -- registers the
models in mmoverlock's own registries (scope ``mmoverlock``: configs say ``type='mmoverlock.OverLoCK'``),
registers its two ops with ``torch.library`` (``torch.ops.mmoverlock.na2d_av`` and
``torch.ops.mmoverlock.depthwise_conv2d``, with their backward ops and ``na2d_av_triton``: :mod:`mmoverlock.ops`),
allow-lists the few non-tensor types of mmengine checkpoints with torch's
``torch.serialization.add_safe_globals`` (torch >= 2.4; older torch has no allow-list:
:mod:`mmoverlock.utils.compat`), and adds the FLOP rules of its own ops (``mmoverlock::na2d_av``,
``mmoverlock::depthwise_conv2d``) to mmengine's default op handles, so mmengine's counter -- and the
``get_flops.py`` tools of mmdet, mmseg and mmpretrain -- count them (:mod:`mmoverlock.ops.flops`). It changes
nothing else. The hooks (``mmoverlock.engine``) are
imported by mmengine's registry when a config first names one; the mmpretrain head
(``mmoverlock.models.mmpretrain``) and the mmdet TTA model (``mmoverlock.models.mmdet``) by the configs that use
them, so a segmentation user never imports mmdet or mmpretrain.
"""
from . import ops  # noqa: F401  (registers the ops torch.ops.mmoverlock.na2d_av and .depthwise_conv2d)
from .models import ContMix, ContMixBlock, OverLoCK
from .ops.flops import register_flop_handles
from .registry import HOOKS, MODELS
from .utils.compat import add_safe_globals
from .utils.safe_load import SAFE_GLOBALS

__version__ = '0.1.0'

add_safe_globals(SAFE_GLOBALS)
register_flop_handles()

__all__ = ['OverLoCK', 'ContMix', 'ContMixBlock', 'MODELS', 'HOOKS', '__version__']
