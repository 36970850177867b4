"""mmoverlock's registry: scope ``mmoverlock``, child of mmengine's root MODELS.

``type='mmoverlock.OverLoCK'`` resolves from any OpenMMLab 2.x package after
``custom_imports=dict(imports=['mmoverlock'])``. Public models are also registered in the root registry,
so the plain ``type='OverLoCK'`` resolves in mmdet, mmseg and mmpretrain (their registries fall back to it).
"""
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=ROOT_MODELS, scope='mmoverlock', locations=['mmoverlock.models'])


def register_public(cls):
    """Register ``cls`` in mmoverlock's registry and in the root one (for unprefixed names)."""
    MODELS.register_module(module=cls)
    if cls.__name__ not in ROOT_MODELS.module_dict:
        ROOT_MODELS.register_module(module=cls)
    return cls
