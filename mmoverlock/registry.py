"""mmoverlock's registry: scope ``mmoverlock``, child of mmengine's root MODELS.

``type='mmoverlock.OverLoCK'`` resolves from any OpenMMLab 2.x package after
``custom_imports=dict(imports=['mmoverlock'])``. Public models are also registered in the root registry,
so the plain ``type='OverLoCK'`` resolves in mmdet, mmseg and mmpretrain (their registries fall back to it).
"""
from mmengine.registry import HOOKS as ROOT_HOOKS
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=ROOT_MODELS, scope='mmoverlock', locations=['mmoverlock.models'])
#: ``type='mmoverlock.AtomicCheckpointHook'`` / ``'mmoverlock.ChannelCheckHook'`` (mmoverlock.engine)
HOOKS = Registry('hook', parent=ROOT_HOOKS, scope='mmoverlock', locations=['mmoverlock.engine'])


def register_public(cls):
    """Register ``cls`` in mmoverlock's registry and in the root one (for unprefixed names)."""
    MODELS.register_module(module=cls)
    if cls.__name__ not in ROOT_MODELS.module_dict:
        ROOT_MODELS.register_module(module=cls)
    return cls


def register_hook(cls):
    """Register a hook in mmoverlock's HOOKS and in the root one (``type='AtomicCheckpointHook'`` too)."""
    HOOKS.register_module(module=cls)
    if cls.__name__ not in ROOT_HOOKS.module_dict:
        ROOT_HOOKS.register_module(module=cls)
    return cls
