#!/usr/bin/env python
"""Effective receptive field (ERF) of one OverLoCK stage, as in the paper's ERF figure.

    python tools/analysis/visualize_erf.py CONFIG [--checkpoint CKPT] [--stage 3] [--images DIR]
                                           [--num-images 16] [--size 256] [--out erf.png]

For every image, the summed channels of the stage's output at its centre pixel are back-propagated to the
input; the absolute input gradient (summed over RGB) is averaged over the images and drawn log-scaled,
``log10(g + 1)`` normalised to [0, 1] (the RepLKNet / OverLoCK ERF recipe). Printed besides: the
side of the smallest centred square holding 20 / 50 / 90 / 99 % of the total gradient, as a fraction of the
image side. Without ``--images`` the images are drawn by the demo data generator (mmoverlock.demo.shapes_data;
no files needed); without ``--checkpoint`` the weights are the random init. Stages: 0-3 the four stage outputs,
4 the Overview-Net map.
"""
import argparse
import os
import os.path as osp
from typing import List, Optional

import numpy as np

import mmoverlock.cli.quiet_warnings  # noqa: F401  (before mmengine: third-party import warnings)
from mmoverlock.analysis.erf import (MASS_LEVELS, STAGE_NAMES, build_backbone, check_stage, demo_images,
                                     effective_receptive_field, log_scaled, mass_square_fractions,
                                     read_images)


def save_erf_png(erf: np.ndarray, out: str, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.2, 3.6), dpi=100)
    im = ax.imshow(log_scaled(erf), cmap='RdYlGn', vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    if osp.dirname(out):
        os.makedirs(osp.dirname(out), exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def parse_args(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(description='Effective receptive field of an OverLoCK stage')
    parser.add_argument('config', help='det / seg / cls config with an OverLoCK backbone')
    parser.add_argument('--checkpoint', help='weights (whole model or backbone); default: random init')
    parser.add_argument('--stage', type=int, default=3, help='0-3 the stages, 4 the Overview-Net map')
    parser.add_argument('--images', help='folder of images; default: drawn by the demo data generator')
    parser.add_argument('--num-images', type=int, default=16)
    parser.add_argument('--size', type=int, default=256, help='input side in pixels')
    parser.add_argument('--out', default='work_dirs/erf.png', help='PNG to write')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None):
    args = parse_args(argv)
    check_stage(args.stage)
    if args.num_images < 1 or args.size < 32:
        raise ValueError(f'--num-images {args.num_images} / --size {args.size}: need >= 1 image of >= 32 px')
    backbone = build_backbone(args.config, args.checkpoint)
    images = (read_images(args.images, args.num_images, args.size) if args.images
              else demo_images(args.num_images, args.size))
    erf = effective_receptive_field(backbone, images, args.stage)
    fractions = mass_square_fractions(erf)
    weights = 'random init' if not args.checkpoint else osp.basename(args.checkpoint)
    title = f'ERF of {STAGE_NAMES[args.stage]} ({weights}, {len(images)} images, {args.size} px)'
    save_erf_png(erf, args.out, title)
    print(title)
    print('centred square holding ' + ', '.join(
        f'{int(t * 100)}%: {f:.2f}' for t, f in zip(MASS_LEVELS, fractions)) + ' of the image side')
    print(f'written to {args.out}')
    return erf


if __name__ == '__main__':
    main()
