#!/usr/bin/env python
"""One image in, an overlay PNG out: a detector's boxes and masks, or a segmentor's label map.

    python tools/infer.py IMAGE CONFIG CHECKPOINT [--out out.png] [--score-thr 0.3] [--device cpu]

The task follows the config's ``default_scope`` (mmdet or mmseg). Drawing is done by the packages' own
visualizers (mmdet's DetLocalVisualizer, mmseg's SegLocalVisualizer); class names and colours come from the
checkpoint's ``meta.dataset_meta`` (what mmengine's Runner saves), else from the config's ``metainfo``.

The checkpoint is checked as tools/test.py checks it, with the same one-line messages: it must exist, be a
PyTorch checkpoint, and fit the config's model tensor for tensor (another arch or number of classes is an
error, not a run with those layers at their initialisation).
"""
import argparse
import sys
import warnings

try:
    import mmoverlock.cli.quiet_warnings  # noqa: F401  (first: third-party import warnings)
except ImportError as err:   # a python without the environment: one line, not a traceback
    raise SystemExit(f"tools/infer.py: error: {err} ({sys.executable}); run the tools with the environment's "
                     f"python: source .venv/bin/activate (made by make env)") from None
import os.path as osp
from typing import List, Optional

import mmcv
import numpy as np
import torch
from mmengine.config import Config
from mmengine.runner import load_checkpoint

import mmoverlock  # noqa: F401  (registers OverLoCK; installs the checkpoint allow-list)
from mmoverlock.cli.checks import check_checkpoint, check_writable
from mmoverlock.cli.errors import one_line_errors
from mmoverlock.engine.load_check import check_checkpoint_fits
from mmoverlock.utils.config import sync_bn_to_bn, task_of


def parse_args(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(description='Run a det / seg model on one image and save the overlay')
    parser.add_argument('image', help='input image file')
    parser.add_argument('config', help='mmdet or mmseg config file')
    parser.add_argument('checkpoint', help='checkpoint file (.pth) of that config')
    parser.add_argument('--out', default='out.png', help='overlay PNG to write (default out.png)')
    parser.add_argument('--score-thr', type=float, default=0.3, help='det: hide boxes scoring below this')
    parser.add_argument('--opacity', type=float, default=0.5, help='seg: label-map opacity')
    parser.add_argument('--device', default='cuda:0' if torch.cuda.is_available() else 'cpu')
    return parser.parse_args(argv)


def load_config(path: str, device: str) -> Config:
    cfg = Config.fromfile(path)
    if not str(device).startswith('cuda'):
        sync_bn_to_bn(cfg)   # SyncBN cannot run without CUDA; BN has the same parameters
    return cfg


def dataset_meta_of(cfg: Config) -> Optional[dict]:
    """The ``metainfo`` of the config's test (or val) dataset, if it names its classes."""
    for key in ('test_dataloader', 'val_dataloader'):
        meta = cfg.get(key, {}).get('dataset', {}).get('metainfo')
        if meta and 'classes' in meta:
            return dict(meta)
    return None


def checkpoint_dataset_meta(checkpoint: dict) -> Optional[dict]:
    """``meta.dataset_meta`` of a checkpoint saved by mmengine's Runner, if it names its classes."""
    meta = (checkpoint.get('meta') if isinstance(checkpoint, dict) else None) or {}
    dataset_meta = meta.get('dataset_meta') if isinstance(meta, dict) else None
    return dict(dataset_meta) if dataset_meta and 'classes' in dataset_meta else None


def load_checked(model: torch.nn.Module, checkpoint: str, device: str) -> Optional[dict]:
    """tools/test.py's check (mmoverlock.CheckpointCheckHook, strict), then the weights: a checkpoint of
    another model is one line, not a run with its layers at their initialisation. Returns the checkpoint's
    ``dataset_meta``, if it has one."""
    check_checkpoint_fits(model, checkpoint, strict=True)
    return checkpoint_dataset_meta(load_checkpoint(model, checkpoint, map_location=device))


def infer_det(image: str, cfg: Config, checkpoint: str, out: str, score_thr: float, device: str) -> dict:
    from mmdet.apis import inference_detector, init_detector
    from mmdet.registry import VISUALIZERS
    with warnings.catch_warnings(record=True) as caught:   # init_detector resets the filters to show its note
        model = init_detector(cfg, None, device=device)
    for w in caught:   # the classes come from the checkpoint or the config, just below: drop only that note
        if 'checkpoint is None' not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    model.dataset_meta = load_checked(model, checkpoint, device) or dataset_meta_of(cfg) or model.dataset_meta
    result = inference_detector(model, image)
    visualizer = VISUALIZERS.build(dict(model.cfg.visualizer, name='mmoverlock_infer'))
    visualizer.dataset_meta = model.dataset_meta
    rgb = mmcv.imconvert(mmcv.imread(image), 'bgr', 'rgb')
    visualizer.add_datasample('result', rgb, data_sample=result, draw_gt=False, show=False,
                              pred_score_thr=score_thr, out_file=out)
    kept = result.pred_instances[result.pred_instances.scores >= score_thr]
    return dict(task='det', instances=len(kept), labels=kept.labels.tolist(), scores=kept.scores.tolist())


def infer_seg(image: str, cfg: Config, checkpoint: str, out: str, opacity: float, device: str) -> dict:
    from mmseg.apis import inference_model, init_model
    from mmseg.registry import VISUALIZERS
    from mmseg.utils import dataset_aliases, get_classes, get_palette
    model = init_model(cfg, None, device=device)
    model.dataset_meta = load_checked(model, checkpoint, device) or dataset_meta_of(cfg)
    if not model.dataset_meta:   # as mmseg's init_model: the data set with this many classes, else Cityscapes
        num = model.decode_head.num_classes
        name = next((n for n in dataset_aliases if len(get_classes(n)) == num), 'cityscapes')
        model.dataset_meta = dict(classes=get_classes(name), palette=get_palette(name))
    classes = model.dataset_meta['classes']
    palette = model.dataset_meta.get('palette')
    if not palette or len(palette) != len(classes):   # a fixed pseudo-random colour per class
        palette = [tuple(int(v) for v in np.random.default_rng(i).integers(0, 256, 3)) for i in range(len(classes))]
    result = inference_model(model, image)
    visualizer = VISUALIZERS.build(dict(model.cfg.visualizer, name='mmoverlock_infer', alpha=opacity))
    visualizer.set_dataset_meta(classes, palette)
    rgb = mmcv.imconvert(mmcv.imread(image), 'bgr', 'rgb')
    visualizer.add_datasample('result', rgb, data_sample=result, draw_gt=False, show=False, out_file=out)
    labels = result.pred_sem_seg.data.unique().tolist()
    return dict(task='seg', labels=labels)


def infer(image: str, config: str, checkpoint: str, out: str = 'out.png', score_thr: float = 0.3,
          opacity: float = 0.5, device: str = 'cpu') -> dict:
    """Run one image through a det or seg model and write the overlay to ``out``; returns a summary."""
    if not osp.isfile(image):
        raise FileNotFoundError(f"image '{image}' does not exist; expected an image file (.jpg, .png, ...)")
    check_checkpoint(checkpoint)   # tools/test.py's check: exists, and is a PyTorch checkpoint
    if mmcv.imread(image) is None:   # what the test pipeline's LoadImageFromFile would assert on
        raise ValueError(f"image '{image}' is not an image OpenCV can decode (another kind of file, or truncated); "
                         f"expected a .jpg, .png, .bmp or .tif image")
    if not out.lower().endswith(('.png', '.jpg', '.jpeg')):
        raise ValueError(f'--out {out} must end with .png or .jpg')
    cfg = load_config(config, device)
    task = task_of(cfg)
    check_writable(out, '--out', folder=False)
    if task == 'det':
        return infer_det(image, cfg, checkpoint, out, score_thr, device)
    if task == 'seg':
        return infer_seg(image, cfg, checkpoint, out, opacity, device)
    raise ValueError(f"config '{config}' is a {task} config; infer.py draws det and seg results "
                     f"(default_scope mmdet or mmseg)")


def main(argv: Optional[List[str]] = None):
    args = parse_args(argv)
    with one_line_errors('tools/infer.py', __file__):   # its checks and mmoverlock's: one line, as test.py
        summary = infer(args.image, args.config, args.checkpoint, args.out, args.score_thr, args.opacity,
                        args.device)
    if summary['task'] == 'det':
        print(f"{summary['instances']} instances scoring >= {args.score_thr}; overlay written to {args.out}")
    else:
        print(f"labels present: {summary['labels']}; overlay written to {args.out}")
    return summary


if __name__ == '__main__':
    main()
