"""mmoverlock's registries: scope ``mmoverlock``, children of mmengine's root MODELS, HOOKS, LOOPS,
DATA_SAMPLERS and OPTIM_WRAPPER_CONSTRUCTORS.

Configs of mmdet, mmseg and mmpretrain name mmoverlock's modules with the scope prefix --
``type='mmoverlock.OverLoCK'``, ``type='mmoverlock.AtomicCheckpointHook'``,
``constructor='mmoverlock.LearningRateDecayOptimizerConstructor'`` -- the way mmdet configs name
``mmpretrain.ConvNeXt``: mmengine finds the ``mmoverlock`` child of its root registry and imports the module
that defines the name (``locations``) on first use. Nothing is written into the root registries.
"""
from mmengine.registry import DATA_SAMPLERS as ROOT_DATA_SAMPLERS
from mmengine.registry import HOOKS as ROOT_HOOKS
from mmengine.registry import LOOPS as ROOT_LOOPS
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as ROOT_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import Registry

MODELS = Registry('model', parent=ROOT_MODELS, scope='mmoverlock', locations=['mmoverlock.models'])
HOOKS = Registry('hook', parent=ROOT_HOOKS, scope='mmoverlock', locations=['mmoverlock.engine'])
LOOPS = Registry('loop', parent=ROOT_LOOPS, scope='mmoverlock', locations=['mmoverlock.engine'])
DATA_SAMPLERS = Registry('data sampler', parent=ROOT_DATA_SAMPLERS, scope='mmoverlock',
                         locations=['mmoverlock.engine'])
#: ``constructor='mmoverlock.LearningRateDecayOptimizerConstructor'``: mmdet's layer-wise lr decay for OverLoCK;
#: ``constructor='mmoverlock.GroupedParamsOptimWrapperConstructor'``: paramwise options in few param groups
OPTIM_WRAPPER_CONSTRUCTORS = Registry('optimizer wrapper constructor', parent=ROOT_OPTIM_WRAPPER_CONSTRUCTORS,
                                      scope='mmoverlock', locations=['mmoverlock.models.mmdet', 'mmoverlock.engine'])
