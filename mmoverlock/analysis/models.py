"""Build OverLoCK models for complexity analysis (no checkpoint is loaded) and give them dummy inputs."""
import copy
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine.config import Config, ConfigDict
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope
from mmengine.utils import import_modules_from_strings

from mmoverlock.models.backbones.overlock import resolve_arch
from mmoverlock.utils.config import task_of

from .complexity import ComplexityReport, analyze_complexity, deploy_
from .reference import FLOPS_SHAPE

#: Parts reported beside the whole model, when the model has them.
PARTS = ('backbone', 'neck', 'rpn_head', 'roi_head', 'decode_head', 'auxiliary_head', 'head')
#: Training-only parts whose params are left out, per task (the official README counts the ImageNet model
#: without its Overview-Net auxiliary head; mmdet/mmseg tables count every param, aux heads included).
TRAIN_ONLY = {'cls': ('head.aux_head', ), 'det': (), 'seg': ()}


def imagenet_model_cfg(arch: Union[str, dict], num_classes: int = 1000, projection: int = 1024) -> dict:
    """The ImageNet model (backbone in the ImageNet layout + :class:`OverLoCKClsHead`) as an mmpretrain
    ``ImageClassifier`` config."""
    e3 = resolve_arch(arch)['embed_dim'][3]
    return dict(
        type='ImageClassifier',
        backbone=dict(type='mmoverlock.OverLoCK', arch=arch, out_indices=(3, 4), layout='classification'),
        head=dict(type='mmoverlock.OverLoCKClsHead', num_classes=num_classes, in_channels=e3 + e3 // 4,
                  overview_channels=e3, projection=projection))


def _strip_pretrained(node: Any) -> Any:
    """Drop every ``init_cfg`` / ``pretrained`` entry so that building never fetches a checkpoint."""
    if isinstance(node, dict):
        for key in ('init_cfg', 'pretrained'):
            if key in node:
                node[key] = None
        for value in node.values():
            _strip_pretrained(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _strip_pretrained(value)
    return node


def _registry(task: str):
    if task == 'det':
        from mmdet.registry import MODELS
    elif task == 'seg':
        from mmseg.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    return MODELS


def build_model(cfg: Union[Config, dict], task: Optional[str] = None) -> Tuple[nn.Module, str]:
    """(model, task) from a det / seg / cls config (or a bare ``model`` dict with ``task``), in eval mode,
    with random weights (``init_cfg`` dropped, ``init_weights`` not called) and SyncBN turned into BN."""
    if isinstance(cfg, Config):
        if cfg.get('custom_imports'):
            import_modules_from_strings(**cfg.custom_imports)
        task = task_of(cfg)
        model_cfg = copy.deepcopy(cfg.model)
    else:
        if task not in TRAIN_ONLY:
            raise ValueError(f"build_model: task='{task}' must be one of {sorted(TRAIN_ONLY)} for a model dict")
        model_cfg = ConfigDict(copy.deepcopy(cfg))
    init_default_scope({'det': 'mmdet', 'seg': 'mmseg', 'cls': 'mmpretrain'}[task])
    import mmoverlock  # noqa: F401  (registers OverLoCK)
    if task == 'cls':
        import mmoverlock.models.mmpretrain  # noqa: F401  (registers OverLoCKClsHead)
    model = _registry(task).build(_strip_pretrained(model_cfg))
    return revert_sync_batchnorm(model).eval(), task


def dummy_inputs(task: str, shape: Tuple[int, int]) -> Tuple[torch.Tensor, Optional[list]]:
    """A (1, 3, H, W) image batch and the data samples the task's ``mode='tensor'`` forward needs."""
    h, w = shape
    image = torch.randn(1, 3, h, w)
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w),
                scale_factor=(1., 1.))
    if task == 'det':
        from mmdet.structures import DetDataSample
        return image, [DetDataSample(metainfo=meta)]
    if task == 'seg':
        from mmseg.structures import SegDataSample
        return image, [SegDataSample(metainfo=meta)]
    return image, None


#: Mask-head RoIs of the detection FLOPs: mmdet's convention (mmdet 2 ``forward_dummy``, mmdet 3
#: ``StandardRoIHead.forward``: the first 100 of the 1000 proposals; at test time the mask head sees the
#: <= 100 final detections).
MASK_ROIS = 100


@contextmanager
def cascade_mask_rois(model: nn.Module, limit: int = MASK_ROIS) -> Iterator[nn.Module]:
    """Inside the block a cascade RoI head runs its mask heads on the first ``limit`` RoIs, as mmdet's
    Mask R-CNN tensor forward does (mmdet 3's cascade one feeds all 1000 proposals to the three mask heads,
    ~7x the FLOPs any published table counts). Done with hooks on each stage's ``mask_head`` (removed on
    exit): its input RoI features (N, C, h, w) are cut to the first ``limit``, its predictions tiled back
    to N, one per RoI."""
    roi_head = getattr(model, 'roi_head', None)
    if roi_head is None or not getattr(roi_head, 'with_mask', False) or not hasattr(roi_head, 'num_stages'):
        yield model
        return

    num_rois: Dict[nn.Module, int] = {}   # mask head -> RoIs it was given in the running forward

    def first_rois(mask_head: nn.Module, args: tuple) -> tuple:
        num_rois[mask_head] = args[0].shape[0]
        return (args[0][:limit], ) + tuple(args[1:])

    def tile_back(mask_head: nn.Module, args: tuple, preds: torch.Tensor) -> torch.Tensor:
        repeats = -(-num_rois[mask_head] // max(preds.shape[0], 1))
        return preds.repeat(repeats, *([1] * (preds.dim() - 1)))[:num_rois[mask_head]]

    handles = []
    try:
        for mask_head in roi_head.mask_head:
            handles.append(mask_head.register_forward_pre_hook(first_rois))
            handles.append(mask_head.register_forward_hook(tile_back))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def measure(model: nn.Module, task: str, shape: Optional[Tuple[int, int]] = None, deploy: bool = True,
            convention: str = 'implemented') -> ComplexityReport:
    """Params and FLOPs of a built model (see :func:`build_model`) at ``shape`` (H, W; the task's table
    convention by default), deployed unless ``deploy=False``."""
    shape = tuple(shape or FLOPS_SHAPE[task])
    if len(shape) != 2 or min(shape) < 32:
        raise ValueError(f'measure: shape={shape} must be (H, W) with both sides >= 32')
    if deploy:
        deploy_(model)
    image, data_samples = dummy_inputs(task, shape)
    with cascade_mask_rois(model):   # model(image, data_samples, mode='tensor'), as mmdet's / mmseg's get_flops
        return analyze_complexity(model, (image, ), parts=PARTS, exclude_params=TRAIN_ONLY[task],
                                  convention=convention,
                                  forward_kwargs=dict(data_samples=data_samples, mode='tensor'))


def summary(report: ComplexityReport) -> Dict[str, Tuple[float, float]]:
    """{'whole model' | part: (params M, FLOPs G)}."""
    rows = {name: (p / 1e6, f / 1e9) for name, (f, p) in report.parts.items()}
    rows['whole model'] = (report.params / 1e6, report.flops / 1e9)
    return rows
