"""ONNX export of OverLoCK models (opset 17, dynamic batch/height/width) and the onnxruntime check; the library
behind ``tools/deployment/export_onnx.py``, not imported by ``import mmoverlock``.

The backbone is re-parameterised (``switch_to_deploy()``) first. ContMix exports as standard ops: the
neighbourhood aggregation as a Slice/Pad/Mul/Add tap loop, the region pooling and the small-map resize rule
as branch-free shape arithmetic, so one graph is right for maps both below and above the kernel size. An export
of one input size (``fixed_size``) writes the aggregation of small maps as per-window MatMuls or one dense
aggregation matrix instead.
"""
import contextlib
import os.path as osp
from typing import List, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..engine.load_check import check_checkpoint_fits
from ..models.contmix import adaptive_avg_pool2d_traceable
from ..ops import fixed_size_export
from ..utils import compat
from ..utils.config import sync_bn_to_bn, task_of

OPSET = 17


class SegLogits(nn.Module):
    """mmseg EncoderDecoder -> logits at the input size: (B, 3, H, W) -> (B, classes, H, W)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model._forward(x)
        return F.interpolate(logits, size=x.shape[-2:], mode='bilinear',
                             align_corners=self.model.decode_head.align_corners)


class Features(nn.Module):
    """``extract_feat`` (backbone + neck) of an mmdet detector: (B, 3, H, W) -> tuple of maps."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return tuple(self.model.extract_feat(x))


class ClsLogits(nn.Module):
    """mmpretrain ImageClassifier -> (B, classes) logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, mode='tensor')


class TraceableAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as averaging matmuls: exports with dynamic input sizes (e.g. UperNet's PPM)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.output_size if isinstance(self.output_size, (tuple, list)) else (self.output_size, ) * 2
        size = [x.shape[-2 + i] if s is None else s for i, s in enumerate(size)]
        return adaptive_avg_pool2d_traceable(x, size)


def make_pools_traceable(net: nn.Module) -> int:
    """Replace every ``nn.AdaptiveAvgPool2d`` with output size other than 1 (GlobalAveragePool exports as
    is) by :class:`TraceableAdaptiveAvgPool2d`. Returns how many were replaced."""
    count = 0
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.AdaptiveAvgPool2d and child.output_size not in (1, (1, 1)):
                setattr(parent, name, TraceableAdaptiveAvgPool2d(child.output_size))
                count += 1
    return count


def build_model(config: str, checkpoint: str) -> nn.Module:
    """The config's model on CPU, eval mode, checkpoint loaded (unless ``none``), backbone deployed."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint

    cfg = Config.fromfile(config)
    sync_bn_to_bn(cfg)
    task = task_of(cfg)
    init_default_scope(cfg.default_scope)
    registry = {'det': 'mmdet', 'seg': 'mmseg', 'cls': 'mmpretrain'}[task]
    models = __import__(f'{registry}.registry', fromlist=['MODELS']).MODELS
    cfg.model.pop('pretrained', None)
    backbone_cfg = cfg.model.get('backbone', {})
    if isinstance(backbone_cfg.get('init_cfg'), dict) and backbone_cfg['init_cfg'].get('type') == 'Pretrained':
        backbone_cfg.pop('init_cfg')   # the checkpoint below holds every weight; never download
    model = models.build(cfg.model)
    if checkpoint.lower() != 'none':
        if not osp.isfile(checkpoint):
            raise FileNotFoundError(f"checkpoint '{checkpoint}' does not exist; expected a .pth file or 'none'")
        check_checkpoint_fits(model, checkpoint, strict=True)   # tools/test.py's check: the same one line
        load_checkpoint(model, checkpoint, map_location='cpu', strict=False)
    else:
        model.init_weights()
    model.eval()
    if hasattr(model.backbone, 'switch_to_deploy'):
        model.backbone.switch_to_deploy()
    model.task = task
    return model


def export_target(model: nn.Module, backbone_only: bool) -> nn.Module:
    if backbone_only:
        return model.backbone
    return {'seg': SegLogits, 'det': Features, 'cls': ClsLogits}[model.task](model).eval()


def as_list(outputs) -> List[torch.Tensor]:
    return [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)


def export(net: nn.Module, shape: Sequence[int], out: str, batch: int = 1, fixed_size: bool = False) -> List[str]:
    """Trace ``net`` at (batch, 3, *shape) into ``out``; batch, height and width dynamic. Returns output names.
    Adaptive pools in ``net`` are made traceable in place (same results).

    ``fixed_size``: the graph is for height and width ``shape`` only (the batch stays dynamic), and ContMix's
    aggregation exports as the eager forward's path where that is the per-window matmuls or the dense operator
    (stage 3 and 4 at classification sizes) instead of the k*k-tap Slice/Pad/Mul/Add chain: OverLoCK-T at
    224x224 runs 1.5x faster in onnxruntime, with a graph a sixth the size (docs/benchmarks.md)."""
    make_pools_traceable(net)
    x = torch.randn(batch, 3, *shape)
    with torch.no_grad():
        outputs = as_list(net(x))
    names = [f'output{i}' for i in range(len(outputs))]
    sizes = {} if fixed_size else {2: 'height', 3: 'width'}
    dynamic = {'input': {0: 'batch', **sizes}}
    dynamic.update({n: {0: 'batch'} if o.dim() == 2 or fixed_size else {0: 'batch', 2: f'height{i}', 3: f'width{i}'}
                    for i, (n, o) in enumerate(zip(names, outputs))})
    with fixed_size_export() if fixed_size else contextlib.nullcontext():
        torch.onnx.export(net, (x, ), out, opset_version=OPSET, input_names=['input'], output_names=names,
                          dynamic_axes=dynamic, **compat.onnx_export_kwargs())
    return names


def ort_session(onnx_file: str):
    """An onnxruntime CPU session of ``onnx_file``."""
    import onnxruntime as ort
    return ort.InferenceSession(onnx_file, providers=['CPUExecutionProvider'])


def check_shape(net: nn.Module, session, shape: Sequence[int], batch: int = 1) -> dict:
    """onnxruntime vs PyTorch at one input size: the max abs error over all outputs and the largest output
    magnitude."""
    x = torch.randn(batch, 3, *shape)
    with torch.no_grad():
        expected = [t.numpy() for t in as_list(net(x))]
    got = session.run(None, {'input': x.numpy()})
    if [g.shape for g in got] != [e.shape for e in expected]:
        raise RuntimeError(f'ONNX output shapes {[g.shape for g in got]} != PyTorch '
                           f'{[e.shape for e in expected]} at input {tuple(x.shape)}')
    err = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
    scale = max(float(np.abs(e).max()) for e in expected)
    return dict(shape=tuple(shape), max_abs_err=err, output_scale=scale)


def check(net: nn.Module, onnx_file: str, shapes: Sequence[Sequence[int]], batch: int = 1) -> List[dict]:
    """onnxruntime (CPU) vs PyTorch at each shape (:func:`check_shape`)."""
    session = ort_session(onnx_file)
    return [check_shape(net, session, shape, batch) for shape in shapes]


def half_size(shape: Sequence[int]) -> List[int]:
    """The second size checked by default: half the export size, each side at least 32 (the backbone's
    stride; odd sizes are fine, the graph has dynamic height and width)."""
    return [max(32, side // 2) for side in shape]
