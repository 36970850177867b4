"""OverLoCK in timm (>= 1.0): ``import mmoverlock.timm`` registers ``overlock_xt``, ``overlock_t``, ``overlock_s``
and ``overlock_b`` with timm's model registry.

``import mmoverlock`` does not import this module (nor timm). The models wrap the same
:class:`~mmoverlock.models.backbones.overlock.OverLoCK` backbone as the OpenMMLab configs (``backbone``, the
ImageNet layout) and add the release's ImageNet head (``head``); their state dict is mmpretrain's layout
(``backbone.*``, ``head.main_head.*``, ``head.aux_head.*``), so a timm-trained checkpoint also loads into the
mmpretrain classifier and, with ``prefix='backbone.'``, into the dense-task backbones.

``timm.create_model(name, ...)``:

* ``pretrained=True``: the release's ImageNet-1K weights (tag ``.in1k``, the default); ``name + '.in1k_reparam'``
  the deploy-form weights (the model is built with ``deploy=True``);
* ``pretrained_cfg_overlay=dict(file=PATH)``: the same from a local file, offline, in any layout
  :func:`checkpoint_filter_fn` reads;
* ``features_only=True``: the four stage maps (strides 4, 8, 16, 32; ``out_indices``), timm's
  ``FeatureGetterNet`` over :meth:`OverLoCKTimm.forward_intermediates` (``feature_cls='fx'``: timm's
  ``FeatureGraphNet``, the same maps from a torch.fx graph);
* ``num_classes=N``: new classifiers (N = 0: the pooled pre-logits); ``deploy=True``: the re-parameterised
  backbone; ``aux_logits=True``: ``dict(main=..., aux=...)`` in training mode, as the release's train.py expects.
"""
import contextlib
from typing import Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_module
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models._features import feature_take_indices

from .checkpoint.io import extract_state_dict, shape_mismatches
from .checkpoint.official import is_official_cls_layout, official_cls_to_mmpretrain
from .models.backbones.overlock import STAGE_TABLE, STEM_CONV, OverLoCK, resolve_arch
from .models.heads import OverLoCKHead, global_pool_layer, init_convs
from .models.layers import (GRN, DepthwiseConv2d, DilatedReparamBlock, DropPath, LayerNorm2d, LayerScale,
                            PointwiseConv2d, ResDWConv, has_train_form_blocks, is_deploy_form,
                            reparam_state_dict)
from .variants import VARIANTS as OFFICIAL
from .variants import params_m

__all__ = ['OverLoCKTimm', 'OverLoCKHead', 'checkpoint_filter_fn', 'VARIANTS', 'CROP_PCT']

#: timm name -> the backbone's arch (:mod:`mmoverlock.variants`)
VARIANTS = {v.timm_name: v.name for v in OFFICIAL.values()}
#: the release's ImageNet test crop per variant (its model default_cfg; :mod:`mmoverlock.variants`)
CROP_PCT = {v.timm_name: v.crop_pct for v in OFFICIAL.values()}
#: the classifier timm replaces when num_classes differs from the weights' (``pretrained_cfg['classifier']``),
#: and the auxiliary one (there with ``aux_logits=True`` only)
CLASSIFIER = 'head.main_head.4'
AUX_CLASSIFIER = 'head.aux_head.2.'
CLASSIFIERS = (CLASSIFIER + '.', AUX_CLASSIFIER)
REPARAM_TAG = 'in1k_reparam'
#: the fx node of each stage map (``feature_info``): backbone.blocks1 / blocks2 / sub_blocks4 end with it; stage 3
#: is the first concat of the backbone's forward_features (the Focus-Net features and context), which runs in
#: the model's own scope ('cat')
FEATURE_NODES = ('backbone.blocks1', 'backbone.blocks2', 'cat', 'backbone.sub_blocks4')
#: timm's feature wrappers that work: FeatureGetterNet (forward_intermediates) and FeatureGraphNet (torch.fx)
FEATURE_CLASSES = ('getter', 'fx')
#: keyword arguments of timm.create_model that build_model_with_cfg consumes itself
BUILD_KWARGS = ('pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir', 'pretrained_strict', 'features_only',
                'out_indices', 'feature_cls', 'pretrained_model_args')
MODEL_KWARGS = ('arch', 'num_classes', 'in_chans', 'global_pool', 'projection', 'drop_rate', 'drop_path_rate',
                'deploy', 'aux_logits', 'device', 'dtype')


# timm's fx tools (features_only with feature_cls='fx', its fx tests) keep the small layers whole, as torch.fx
# keeps torch.nn's: one graph node each instead of their parameter reads and elementwise ops (far smaller
# graphs, traced in a fraction of the time)
for _layer in (GRN, DepthwiseConv2d, DilatedReparamBlock, DropPath, LayerNorm2d, LayerScale, PointwiseConv2d,
               ResDWConv):
    register_notrace_module(_layer)


def _group_matcher(coarse: bool) -> dict:
    """timm's group matcher from the backbone's STAGE_TABLE: one group per stage ordinal, and within a stage one
    per block (``coarse=False``; the feeding modules join block 0). The heads match nothing: timm puts them last."""
    matcher = {}
    for name, feeders, blocks in STAGE_TABLE[:-1]:
        if coarse or blocks is None:
            parts = '|'.join(feeders + ((blocks, ) if blocks else ()))
            matcher[name] = rf'^backbone\.(?:{parts})\.'
        else:
            matcher[name] = [(rf'^backbone\.{m}\.', (0, )) for m in feeders] + [
                (rf'^backbone\.{blocks}\.(\d+)\.', None)]
    return matcher


class OverLoCKTimm(nn.Module):
    """OverLoCK ImageNet classifier with timm's model interface, around the one OverLoCK backbone.

    Args:
        arch: the backbone's arch: 'xt' | 't' | 's' | 'b' or a dict (see :func:`resolve_arch`).
        num_classes: classes (0: ``forward`` returns the pooled (B, projection) pre-logits).
        in_chans: image channels; the released (RGB) stem weights are adapted as timm does (``first_conv``).
        global_pool: 'avg' (the release's), 'max', 'avgmax' or '' (no pooling: ``forward`` returns maps). The
            head pools after its 1x1 projection, so ``forward_head(x, pre_logits=True)`` has ``head_hidden_size``
            (= projection) channels.
        projection: hidden width of the head (1024 in the release).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth of the backbone (the release trains with XT 0.1, T 0.15, S 0.4, B 0.5).
        deploy: build the re-parameterised backbone (for the ``*_reparam.pth`` weights).
        aux_logits: build the Overview-Net auxiliary head (deep supervision); in training mode ``forward`` then
            returns ``dict(main=logits, aux=overview_logits)``, as the release's train.py expects. Without it the
            head does not exist (its weights in a checkpoint are skipped on loading).
        device, dtype: where and in which dtype to build the parameters (e.g. ``device='meta'``).
    """

    def __init__(self, arch: Union[str, dict] = 't', num_classes: int = 1000, in_chans: int = 3,
                 global_pool: str = 'avg', projection: int = 1024, drop_rate: float = 0.,
                 drop_path_rate: float = 0., deploy: bool = False, aux_logits: bool = False,
                 device: Optional[Union[str, torch.device]] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f'OverLoCK (timm): in_chans={in_chans!r} must be a positive integer')
        if num_classes < 0:
            raise ValueError(f'OverLoCK (timm): num_classes={num_classes} must be >= 0')
        global_pool_layer(global_pool, 'OverLoCK (timm)')       # a one-line error before anything is built
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.drop_rate, self.aux_logits, self.grad_checkpointing = drop_rate, aux_logits, False
        arch = resolve_arch(arch)
        e = arch['embed_dim']
        ctx = e[3] // 4
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self.backbone = OverLoCK(arch, out_indices=(3, 4), layout='classification', in_channels=in_chans,
                                     drop_path_rate=drop_path_rate, deploy=deploy)
            self.head = OverLoCKHead(e[3] + ctx, e[3], num_classes, projection, drop_rate, global_pool,
                                     aux=aux_logits)
            if not self.head.main_head[0].weight.is_meta:    # (meta tensors hold no values to initialise)
                self.backbone.init_weights()      # the release's init (trunc-normal convs), no checkpoint
                init_convs(self.head)
        if dtype is not None:
            self.to(dtype)
        self.num_features = e[3] + ctx
        self.head_hidden_size = projection
        # 'module': where each map comes from, as torch.fx names it (timm's feature_cls='fx' returns those
        # nodes): the last node of blocks1 / blocks2 / sub_blocks4, and the concat of the Focus-Net's stage 3
        self.feature_info = [
            dict(num_chs=c, reduction=r, module=m)
            for c, r, m in zip((e[0], e[1], e[2] + ctx, e[3] + ctx), (4, 8, 16, 32), FEATURE_NODES)]
        self._register_load_state_dict_pre_hook(self._read_release_layout)

    # ------------------------------------------------------------------ timm interface
    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing per block (the backbone's ``with_cp``)."""
        self.grad_checkpointing = self.backbone.with_cp = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter groups (layer-wise lr decay, ``param_groups_layer_decay``) from the backbone's
        stage table: the stem, then per block (per stage if ``coarse``) Base-Net, Overview-Net, Focus-Net, the
        head last."""
        return _group_matcher(coarse)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Parameters timm's optimizer factory keeps out of weight decay beyond the 1-D ones
        (:meth:`OverLoCK.no_weight_decay`: position bias tables, LayerScale and GRN scales)."""
        return {'backbone.' + name for name in self.backbone.no_weight_decay()}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.main_head[4]

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New (main and, with ``aux_logits``, auxiliary) classifiers for ``num_classes``; 0 leaves the pre-logits;
        ``global_pool`` as in the constructor (None keeps the current one)."""
        if num_classes < 0:
            raise ValueError(f'OverLoCK (timm): num_classes={num_classes} must be >= 0')
        if self.head is None:
            raise RuntimeError('OverLoCK (timm): the head was pruned (features_only); there is no classifier')
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head.reset(num_classes, global_pool)

    def switch_to_deploy(self) -> None:
        """Re-parameterise the backbone in place (``timm.utils.reparameterize_model`` calls this too)."""
        self.backbone.switch_to_deploy()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> the last map (B, num_features, H/32, W/32)."""
        return self.backbone.forward_features(x)[3]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Last map (B, num_features, h, w) -> logits (B, num_classes), or the pooled (B, projection)
        (unpooled maps with ``global_pool=''``)."""
        if self.head is None:
            raise RuntimeError('OverLoCK (timm): the head was pruned (features_only); use forward_intermediates')
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> logits (B, num_classes); with ``aux_logits`` in training mode (eager)
        ``dict(main=logits, aux=logits of the Overview-Net head)``."""
        maps = self.backbone.forward_features(x)
        logits = self.forward_head(maps[3])
        if not torch.jit.is_scripting():
            if self.aux_logits and self.training and self.head is not None and self.head.aux_head is not None:
                return dict(main=logits, aux=self.head.forward_aux(maps[4]))
        return logits

    @torch.jit.ignore
    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = 'NCHW',
                              intermediates_only: bool = False
                              ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """(B, in_chans, H, W) -> the stage maps at ``indices`` (0-3: strides 4, 8, 16, 32; channels
        ``feature_info``), alone or after the last map. The Focus-Net needs the Overview-Net (stage 4) for
        stage 3, so the whole backbone always runs (``stop_early`` changes nothing); the ImageNet model has
        no output norms (``norm`` changes nothing)."""
        if output_fmt != 'NCHW':
            raise ValueError(f"OverLoCK (timm): output_fmt='{output_fmt}' is not supported; only 'NCHW'")
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        maps = self.backbone.forward_features(x)
        intermediates = [maps[i] for i in take_indices]
        if intermediates_only:
            return intermediates
        return maps[3], intermediates

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the head (every stage is needed for any map); returns the absolute indices kept."""
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        if prune_head:
            self.head, self.num_classes = None, 0
        return take_indices

    # ------------------------------------------------------------------ checkpoints
    def _read_release_layout(self, state_dict, prefix, *args) -> None:
        """load_state_dict pre-hook: the release's layout (backbone keys at the top level, ``head.*``,
        ``aux_head.*``) renamed in place, so ``model.load_state_dict(release_state_dict)`` works; the
        auxiliary head's weights are dropped when the model has none (``aux_logits=False``)."""
        if prefix:
            return
        renamed = official_cls_to_mmpretrain(dict(state_dict)) if is_official_cls_layout(state_dict) else None
        if renamed is not None:
            state_dict.clear()
            state_dict.update(renamed)
        if self.head is None or self.head.aux_head is None:
            for key in [k for k in state_dict if k.startswith('head.aux_head.')]:
                del state_dict[key]


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: OverLoCKTimm) -> Dict[str, torch.Tensor]:
    """An OverLoCK ImageNet checkpoint in any layout the project reads -> this model's state dict.

    Reads the release's layout (backbone at the top level, ``head.*``, ``aux_head.*``), mmpretrain's
    (``backbone.*``, ``head.main_head.*``, ``head.aux_head.*``, = this model's), nested under ``state_dict`` /
    ``model`` / ``state_dict_ema`` or with a ``module.`` prefix; train-form weights into a deploy-form model are
    re-parameterised on the way. Deploy-form weights into a train-form model, and weights of another arch, raise
    a one-line error.
    """
    state = extract_state_dict(state_dict)
    if is_official_cls_layout(state):
        state = official_cls_to_mmpretrain(state)
    own = model.state_dict()
    if not any(k.startswith('backbone.patch_embed1.') for k in state):
        raise ValueError(f'checkpoint is not an OverLoCK ImageNet model (keys like {list(state)[:3]}); expected the '
                         f"release's layout or mmpretrain's ('backbone.*', 'head.main_head.*')")
    if has_train_form_blocks(state) and not has_train_form_blocks(own):
        state = reparam_state_dict(state)
    elif is_deploy_form(state) and has_train_form_blocks(own):
        raise ValueError("checkpoint is re-parameterised (deploy form, e.g. *_reparam.pth); create the model with "
                         f"deploy=True or the '.{REPARAM_TAG}' tag to load it")
    if model.head is None or model.head.aux_head is None:
        state = {k: v for k, v in state.items() if not k.startswith('head.aux_head.')}
    else:     # another number of classes: a new auxiliary classifier (timm replaces the main one, 'classifier')
        state = {k: v for k, v in state.items()
                 if not k.startswith(AUX_CLASSIFIER) or k not in own or own[k].shape == v.shape}
    stem = 'backbone.' + STEM_CONV   # RGB weights for other in_chans: timm adapts them after this filter
    checked = {k: v for k, v in state.items() if not k.startswith(CLASSIFIERS)
               and not (k == stem and k in own and v.shape[0] == own[k].shape[0] and v.shape[2:] == own[k].shape[2:])}
    mismatched = shape_mismatches(own, checked)
    if mismatched:
        raise ValueError(f'checkpoint does not fit this model ({len(mismatched)} shape mismatches, another arch or '
                         f'projection?): ' + '; '.join(mismatched[:3]) + (' ...' if len(mismatched) > 3 else ''))
    return state


def _check_kwargs(variant: str, kwargs: dict) -> None:
    unsupported = sorted(set(kwargs) - set(BUILD_KWARGS) - set(MODEL_KWARGS))
    if unsupported:
        raise TypeError(f'{variant}: unsupported argument(s) {unsupported}; supported: {list(MODEL_KWARGS)} '
                        f'and timm\'s features_only, out_indices, pretrained_cfg(_overlay)')
    if kwargs.get('features_only'):
        feature_cls = kwargs.get('feature_cls', 'getter')
        if feature_cls not in FEATURE_CLASSES:
            raise ValueError(f"{variant}: feature_cls={feature_cls!r} is not supported; OverLoCK's stages do not "
                             f"run in sequence (the Focus-Net reads the Overview-Net): use feature_cls='getter' "
                             f"(or 'fx')")
        out_indices = kwargs.get('out_indices', (0, 1, 2, 3))
        if isinstance(out_indices, int):
            bad = not 0 < out_indices <= 4
        else:
            bad = not out_indices or any(not -4 <= int(i) < 4 for i in out_indices)
        if bad:
            raise ValueError(f'{variant}: out_indices={out_indices} out of range; the four stage maps are '
                             f'0..3 (strides 4, 8, 16, 32) or -4..-1, or an int n in 1..4 for the last n')


def _create_overlock(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    _check_kwargs(variant, kwargs)
    # the deploy-form weights need the re-parameterised backbone
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'))
    kwargs.setdefault('deploy', cfg.tag == REPARAM_TAG)
    kwargs.setdefault('arch', VARIANTS[variant])
    return build_model_with_cfg(
        OverLoCKTimm, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs)


def _cfg(url: str = '', **kwargs) -> dict:
    return {
        'url': url,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.95, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'backbone.patch_embed1.0', 'classifier': CLASSIFIER,
        'paper_ids': 'arXiv:2502.20087',
        'paper_name': 'OverLoCK: An Overview-first-Look-Closely-next ConvNet with Context-Mixing Dynamic Kernels',
        'origin_url': 'https://github.com/LMMMEng/OverLoCK',
        **kwargs
    }


default_cfgs = generate_default_cfgs({
    f'{variant.timm_name}.{tag}': _cfg(variant.url(reparam), crop_pct=variant.crop_pct, **extra)
    for variant in OFFICIAL.values()
    for tag, reparam, extra in (('in1k', False, {}),
                                (REPARAM_TAG, True, dict(notes=('deploy form (re-parameterised): '
                                                                'the model is built with deploy=True',))))
})


def _describe(name: str) -> str:
    """The docstring of a variant's model function, from :mod:`mmoverlock.variants`."""
    v = OFFICIAL[name]
    return (f'OverLoCK-{name.upper()}: {params_m(v.params)} params as trained (train form, with the auxiliary head; '
            f'{params_m(v.params_deploy)} for inference, deploy form without it), {v.top1} top-1 at 224.')


@register_model
def overlock_xt(pretrained: bool = False, **kwargs) -> OverLoCKTimm:
    return _create_overlock('overlock_xt', pretrained=pretrained, **kwargs)


@register_model
def overlock_t(pretrained: bool = False, **kwargs) -> OverLoCKTimm:
    return _create_overlock('overlock_t', pretrained=pretrained, **kwargs)


@register_model
def overlock_s(pretrained: bool = False, **kwargs) -> OverLoCKTimm:
    return _create_overlock('overlock_s', pretrained=pretrained, **kwargs)


@register_model
def overlock_b(pretrained: bool = False, **kwargs) -> OverLoCKTimm:
    return _create_overlock('overlock_b', pretrained=pretrained, **kwargs)


for _function in (overlock_xt, overlock_t, overlock_s, overlock_b):
    _function.__doc__ = _describe(_function.__name__[len('overlock_'):])
