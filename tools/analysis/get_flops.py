#!/usr/bin/env python
"""Params and FLOPs of an OverLoCK model (mmengine's flop analysis with ContMix counted).

    python tools/analysis/get_flops.py CONFIG [--shape H W] [--train-form] [--convention implemented|official]
    python tools/analysis/get_flops.py --arch t          # the ImageNet model at 224x224

The input defaults to each table's convention: 224x224 (ImageNet), 1280x800 (COCO; mmdet's get_flops
default) and 2048x512 (ADE20K). FLOPs are multiply-adds (fvcore's convention) of one image through the
``mode='tensor'`` forward; the model is re-parameterised first (``switch_to_deploy``), as the official
README reports it, unless ``--train-form``. Detectors: the RoI heads see the RPN's 1000 proposals, the mask
heads the first 100 RoIs (mmdet's convention; the Cascade mask heads too). No checkpoint is loaded.
"""
import argparse
import json
import sys

import torch
from mmengine.config import Config, DictAction

from mmoverlock.analysis.complexity import CONVENTIONS
from mmoverlock.analysis.models import build_model, imagenet_model_cfg, measure, summary
from mmoverlock.models.backbones.overlock import arch_settings


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Params and FLOPs of an OverLoCK model')
    parser.add_argument('config', nargs='?', help='det / seg / cls config file')
    parser.add_argument('--arch', choices=sorted(arch_settings), help='the ImageNet model of this variant')
    parser.add_argument('--shape', type=int, nargs='+', metavar='N',
                        help='input H W (or one number for a square); default: the task\'s table convention')
    parser.add_argument('--train-form', action='store_true', help='count the training form (no reparam)')
    parser.add_argument('--convention', choices=CONVENTIONS, default='implemented',
                        help="kernel generation as this code runs it ('implemented') or in the release's "
                             "operation order ('official', what fvcore gives on the release code)")
    parser.add_argument('--json', help='also write the numbers to this .json file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config entries')
    args = parser.parse_args(argv)
    if (args.config is None) == (args.arch is None):
        parser.error('give either CONFIG or --arch (not both)')
    if args.shape is not None and len(args.shape) not in (1, 2):
        parser.error(f'--shape takes H W or one number, got {len(args.shape)} numbers')
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)   # random weights and image: the RPN's proposals (hence RoI-head FLOPs) repeat
    shape = None if args.shape is None else (args.shape * 2)[:2]
    if args.arch:
        model, task = build_model(imagenet_model_cfg(args.arch), task='cls')
        name = f'ImageNet model, arch {args.arch}'
    else:
        cfg = Config.fromfile(args.config)
        if args.cfg_options:
            cfg.merge_from_dict(args.cfg_options)
        try:
            model, task = build_model(cfg)
        except ValueError as err:
            raise SystemExit(f'get_flops.py: error: {err}') from None
        name = args.config
    try:
        report = measure(model, task, shape, deploy=not args.train_form, convention=args.convention)
    except ValueError as err:
        raise SystemExit(f'get_flops.py: error: {err}') from None
    rows = summary(report)
    h, w = shape or _default_shape(task)
    form = 'training form' if args.train_form else 'deployed (re-parameterised)'
    print(f'{name} [{task}]: input 1x3x{h}x{w}, {form}, kernel generation counted as {args.convention}')
    print('| part | Params (M) | FLOPs (G) |\n|---|---:|---:|')
    for part, (params, flops) in rows.items():
        print(f'| {part} | {params:.3f} | {flops:.3f} |')
    if task == 'cls':
        print('(params without the training-only auxiliary head, as the official README)')
    skipped = ', '.join(sorted(k.split('::')[-1] for k in report.unsupported_ops))
    print(f'not counted (elementwise / activation / softmax, as fvcore): {skipped or "none"}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(model=name, task=task, shape=[h, w], deploy=not args.train_form,
                           convention=args.convention,
                           parts={k: dict(params_m=v[0], flops_g=v[1]) for k, v in rows.items()},
                           flops_by_operator=report.flops_by_operator), f, indent=2)
    return report


def _default_shape(task):
    from mmoverlock.analysis.reference import FLOPS_SHAPE
    return FLOPS_SHAPE[task]


if __name__ == '__main__':
    main(sys.argv[1:])
