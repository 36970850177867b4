#!/usr/bin/env python
"""One image in, an overlay PNG out: a detector's boxes and masks, or a segmentor's label map.

    python tools/infer.py IMAGE CONFIG CHECKPOINT [--out out.png] [--score-thr 0.3] [--device cpu]

The task follows the config's ``default_scope`` (mmdet or mmseg). Drawing is done by the packages' own
visualizers (mmdet's DetLocalVisualizer, mmseg's SegLocalVisualizer); class names and colours come from the
checkpoint's ``meta.dataset_meta`` (what mmengine's Runner saves), else from the config's ``metainfo``.
"""
import argparse

import quiet_warnings  # noqa: F401  (before mmengine: third-party import warnings)
import os
import os.path as osp
from typing import List, Optional

import mmcv
import numpy as np
import torch
from mmengine.config import Config

import mmoverlock  # noqa: F401  (registers OverLoCK; installs the checkpoint allow-list)
from mmoverlock.models.backbones.checkpoint import read_checkpoint
from mmoverlock.utils.runtime import sync_bn_to_bn, task_of


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


def checkpoint_dataset_meta(checkpoint: str) -> Optional[dict]:
    """``meta.dataset_meta`` of a checkpoint saved by mmengine's Runner, if it names its classes."""
    meta = read_checkpoint(checkpoint).get('meta') or {}
    dataset_meta = meta.get('dataset_meta') if isinstance(meta, dict) else None
    return dict(dataset_meta) if dataset_meta and 'classes' in dataset_meta else None


def infer_det(image: str, cfg: Config, checkpoint: str, out: str, score_thr: float, device: str) -> dict:
    from mmdet.apis import inference_detector, init_detector
    from mmdet.registry import VISUALIZERS
    model = init_detector(cfg, checkpoint, device=device)
    model.dataset_meta = checkpoint_dataset_meta(checkpoint) or dataset_meta_of(cfg) or model.dataset_meta
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
    model = init_model(cfg, checkpoint, device=device)
    model.dataset_meta = checkpoint_dataset_meta(checkpoint) or dataset_meta_of(cfg) or model.dataset_meta
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
        raise FileNotFoundError(f"infer: image '{image}' does not exist")
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f"infer: checkpoint '{checkpoint}' does not exist; expected a .pth file")
    if not out.lower().endswith(('.png', '.jpg', '.jpeg')):
        raise ValueError(f'infer: --out {out} must end with .png or .jpg')
    cfg = load_config(config, device)
    task = task_of(cfg)
    if osp.dirname(out):
        os.makedirs(osp.dirname(out), exist_ok=True)
    if task == 'det':
        return infer_det(image, cfg, checkpoint, out, score_thr, device)
    if task == 'seg':
        return infer_seg(image, cfg, checkpoint, out, opacity, device)
    raise ValueError(f"infer: config '{config}' is a {task} config; infer.py draws det and seg results "
                     f"(default_scope mmdet or mmseg)")


def main(argv: Optional[List[str]] = None):
    args = parse_args(argv)
    summary = infer(args.image, args.config, args.checkpoint, args.out, args.score_thr, args.opacity,
                    args.device)
    if summary['task'] == 'det':
        print(f"{summary['instances']} instances scoring >= {args.score_thr}; overlay written to {args.out}")
    else:
        print(f"labels present: {summary['labels']}; overlay written to {args.out}")
    return summary


if __name__ == '__main__':
    main()
