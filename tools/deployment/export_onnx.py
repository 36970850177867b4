"""Export an OverLoCK model to ONNX (opset 17, dynamic batch/height/width) and check it with onnxruntime.

The backbone is re-parameterised (``switch_to_deploy()``) first. ContMix exports as standard ops: the
neighbourhood aggregation as a Slice/Pad/Mul/Add tap loop, the region pooling and the small-map resize rule
as branch-free shape arithmetic, so one graph is right for maps both below and above the kernel size.

What is exported (without ``--backbone-only``):

* mmseg (EncoderDecoder): backbone + neck + decode head, logits resized to the input: (B, classes, H, W);
* mmpretrain (ImageClassifier): class logits (B, classes);
* mmdet: backbone + neck features (``extract_feat``). Two-stage heads with RoIAlign / NMS need mmdeploy's
  custom-op rewriting and are not exported by this script.

    python tools/deployment/export_onnx.py CONFIG CKPT --shape 512 512 [--out F] [--backbone-only]

CKPT may be ``none`` (the config's initial weights: for checking the export, not for deployment).
"""
import argparse
import os.path as osp
import time
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import mmoverlock  # noqa: F401  (registers OverLoCK; installs the checkpoint allow-list)
from mmoverlock.models.contmix import adaptive_avg_pool2d_traceable
from mmoverlock.utils.runtime import sync_bn_to_bn, task_of

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


def export(net: nn.Module, shape: Sequence[int], out: str, batch: int = 1) -> List[str]:
    """Trace ``net`` at (batch, 3, *shape) into ``out``; batch, height and width dynamic. Returns output names.
    Adaptive pools in ``net`` are made traceable in place (same results)."""
    make_pools_traceable(net)
    x = torch.randn(batch, 3, *shape)
    with torch.no_grad():
        outputs = as_list(net(x))
    names = [f'output{i}' for i in range(len(outputs))]
    dynamic = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
    dynamic.update({n: {0: 'batch'} if o.dim() == 2 else {0: 'batch', 2: f'height{i}', 3: f'width{i}'}
                    for i, (n, o) in enumerate(zip(names, outputs))})
    torch.onnx.export(net, (x, ), out, opset_version=OPSET, dynamo=False, input_names=['input'],
                      output_names=names, dynamic_axes=dynamic)
    return names


def check(net: nn.Module, onnx_file: str, shapes: Sequence[Sequence[int]], batch: int = 1) -> List[dict]:
    """onnxruntime (CPU) vs PyTorch at each shape: per shape, the max abs error over all outputs and the
    largest output magnitude."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_file, providers=['CPUExecutionProvider'])
    results = []
    for shape in shapes:
        x = torch.randn(batch, 3, *shape)
        with torch.no_grad():
            expected = [t.numpy() for t in as_list(net(x))]
        got = session.run(None, {'input': x.numpy()})
        if [g.shape for g in got] != [e.shape for e in expected]:
            raise RuntimeError(f'ONNX output shapes {[g.shape for g in got]} != PyTorch '
                               f'{[e.shape for e in expected]} at input {tuple(x.shape)}')
        err = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
        scale = max(float(np.abs(e).max()) for e in expected)
        results.append(dict(shape=tuple(shape), max_abs_err=err, output_scale=scale))
    return results


def parse_args(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint', help="a .pth file, or 'none' for the config's initial weights")
    parser.add_argument('--shape', type=int, nargs=2, required=True, metavar=('H', 'W'), help='export input size')
    parser.add_argument('--check-shape', type=int, nargs=2, default=None, metavar=('H', 'W'),
                        help='second size checked with onnxruntime (default: half the export size)')
    parser.add_argument('--out', default=None, help='ONNX file (default: <config name>.onnx)')
    parser.add_argument('--backbone-only', action='store_true', help='export the backbone (its out_indices maps)')
    args = parser.parse_args(argv)
    for value in args.shape + (args.check_shape or []):
        if value < 32:
            parser.error(f'--shape/--check-shape {value}: each side must be >= 32 (the backbone has stride 32)')
    return args


def main(argv: Optional[List[str]] = None) -> List[dict]:
    args = parse_args(argv)
    out = args.out or osp.splitext(osp.basename(args.config))[0] + ('_backbone' if args.backbone_only else '') + '.onnx'
    model = build_model(args.config, args.checkpoint)
    net = export_target(model, args.backbone_only)
    t0 = time.perf_counter()
    export(net, args.shape, out)
    print(f'exported {out} (opset {OPSET}, dynamic batch/height/width) in {time.perf_counter() - t0:.0f} s')
    other = args.check_shape or [max(32, (s // 2) // 32 * 32) for s in args.shape]
    results = check(net, out, [args.shape, other])
    for r in results:
        print(f"onnxruntime vs PyTorch at {r['shape'][0]}x{r['shape'][1]}: max abs error {r['max_abs_err']:.3e} "
              f"(output scale {r['output_scale']:.3g})")
    return results


if __name__ == '__main__':
    main()
