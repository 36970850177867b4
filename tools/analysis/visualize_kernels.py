#!/usr/bin/env python
"""ContMix's dynamic kernels at one pixel: where a Focus-Net block looks, and with what weights.

    python tools/analysis/visualize_kernels.py CONFIG [--checkpoint CKPT] [--block sub_blocks3.0]
                                               [--pixel Y X] [--image IMG] [--size 256] [--out kernels.png]

ContMix makes, for every pixel and channel group, a small (5x5) and a large (K x K) kernel from the
pixel's affinity to 7x7 context regions (``ContMix.dynamic_kernels``). This tool runs one image, records the
kernels the chosen block computes, and draws for the chosen pixel (image coordinates, default the centre):
the image with the large and small windows (mean over groups) laid where they sit, then every group's
K x K and 5 x 5 weights. Without ``--image`` the image is drawn by the demo data generator; without
``--checkpoint`` the weights are the random init.
"""
import argparse
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmoverlock.analysis.erf import build_backbone, demo_images, to_tensor
from mmoverlock.models.contmix import ContMixBlock
from mmoverlock.ops import window_starts


def focus_blocks(backbone: nn.Module) -> Dict[str, ContMixBlock]:
    """The Focus-Net blocks by name: {'sub_blocks3.0': block, ...}."""
    return {name: m for name, m in backbone.named_modules() if isinstance(m, ContMixBlock)}


@torch.no_grad()
def record_kernels(backbone: nn.Module, block_name: str, image: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run ``image`` (1, 3, H, W); return the block's kernels: small (G, S*S, h, w), large (G, K*K, h, w).

    (h, w) is the map the kernels were computed on (maps smaller than K are resized up to K first).
    """
    blocks = focus_blocks(backbone)
    if block_name not in blocks:
        raise ValueError(f"--block {block_name} is not a Focus-Net block; valid: {sorted(blocks)}")
    block = blocks[block_name]
    recorded = []
    original = block.dynamic_kernels

    def recording(query_src, context):
        kernels = original(query_src, context)
        recorded.append(kernels)
        return kernels

    block.dynamic_kernels = recording
    try:
        backbone.forward_features(image)
    finally:
        del block.dynamic_kernels          # back to the class method
    small, large = recorded[0]
    return small[0].float(), large[0].float()


def pixel_kernels(kernels: torch.Tensor, kernel_size: int, y: int, x: int) -> np.ndarray:
    """(G, k*k, h, w) -> the (G, k, k) kernels of map pixel (y, x)."""
    g = kernels.shape[0]
    return kernels[:, :, y, x].reshape(g, kernel_size, kernel_size).numpy()


def window_on_map(kernel: np.ndarray, map_size: Tuple[int, int], y: int, x: int) -> np.ndarray:
    """Place a (k, k) kernel of pixel (y, x) where its clamped window sits on an (h, w) map of zeros."""
    k = kernel.shape[-1]
    h, w = map_size
    top = int(window_starts(h, k)[y])
    left = int(window_starts(w, k)[x])
    canvas = np.zeros((h, w), np.float32)
    canvas[top:top + k, left:left + k] = kernel
    return canvas


def map_pixel(y: int, x: int, image_size: Tuple[int, int], map_size: Tuple[int, int]) -> Tuple[int, int]:
    """Image pixel -> the map pixel that covers it."""
    return (min(int(y * map_size[0] / image_size[0]), map_size[0] - 1),
            min(int(x * map_size[1] / image_size[1]), map_size[1] - 1))


def overlay(rgb: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Blend an (h, w) weight map, stretched to the image, over an RGB image as a heat map. -> float RGB."""
    import matplotlib
    heat = F.interpolate(torch.from_numpy(weights)[None, None], size=rgb.shape[:2], mode='nearest')[0, 0].numpy()
    heat = heat / max(heat.max(), 1e-12)
    colours = matplotlib.colormaps['inferno'](heat)[..., :3]
    alpha = 0.75 * (heat[..., None] > 0)
    return (1 - alpha) * rgb / 255. + alpha * colours


def save_kernels_png(rgb: np.ndarray, small: np.ndarray, large: np.ndarray, small_on_map: np.ndarray,
                     large_on_map: np.ndarray, pixel: Tuple[int, int], out: str, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    groups = large.shape[0]
    cols = max(groups, 3)
    fig, axes = plt.subplots(3, cols, figsize=(1.9 * cols, 6.2), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis('off')
    panels = [(rgb / 255., 'image'), (overlay(rgb, large_on_map), f'large {large.shape[-1]}x{large.shape[-1]}'),
              (overlay(rgb, small_on_map), f'small {small.shape[-1]}x{small.shape[-1]}')]
    for ax, (img, name) in zip(axes[0], panels):
        ax.imshow(img)
        ax.plot(pixel[1], pixel[0], marker='+', color='cyan', markersize=10, mew=2)
        ax.set_title(name + (' (mean of groups)' if name != 'image' else ''), fontsize=8)
    for row, kernels, name in ((1, large, 'large'), (2, small, 'small')):
        for g in range(groups):
            axes[row, g].imshow(kernels[g], cmap='viridis')
            axes[row, g].set_title(f'{name}, group {g}', fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if osp.dirname(out):
        os.makedirs(osp.dirname(out), exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def parse_args(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(description="ContMix dynamic kernels of one Focus-Net block at one pixel")
    parser.add_argument('config', help='det / seg / cls config with an OverLoCK backbone')
    parser.add_argument('--checkpoint', help='weights (whole model or backbone); default: random init')
    parser.add_argument('--block', default='sub_blocks3.0', help='Focus-Net block, e.g. sub_blocks3.0')
    parser.add_argument('--pixel', type=int, nargs=2, metavar=('Y', 'X'), help='image pixel; default centre')
    parser.add_argument('--image', help='image file; default: one drawn by the demo data generator')
    parser.add_argument('--size', type=int, default=256, help='input side in pixels')
    parser.add_argument('--out', default='work_dirs/kernels.png', help='PNG to write')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None):
    args = parse_args(argv)
    backbone = build_backbone(args.config, args.checkpoint)
    if args.image:
        import cv2
        if not osp.isfile(args.image):
            raise FileNotFoundError(f"--image {args.image} does not exist")
        rgb = cv2.resize(cv2.imread(args.image)[..., ::-1], (args.size, args.size))
    else:
        rgb = demo_images(1, args.size)[0]
    y, x = args.pixel if args.pixel else (args.size // 2, args.size // 2)
    if not (0 <= y < args.size and 0 <= x < args.size):
        raise ValueError(f'--pixel {y} {x} lies outside the {args.size}x{args.size} image')
    small, large = record_kernels(backbone, args.block, to_tensor(np.ascontiguousarray(rgb)))
    block = focus_blocks(backbone)[args.block]
    map_size = tuple(large.shape[-2:])
    my, mx = map_pixel(y, x, (args.size, args.size), map_size)
    small_k = pixel_kernels(small, block.smk_size, my, mx)
    large_k = pixel_kernels(large, block.kernel_size, my, mx)
    weights = 'random init' if not args.checkpoint else osp.basename(args.checkpoint)
    title = (f'ContMix kernels of {args.block} ({weights}) at image pixel ({y}, {x}) = map pixel ({my}, {mx}) '
             f'of {map_size[0]}x{map_size[1]}')
    save_kernels_png(rgb, small_k, large_k, window_on_map(small_k.mean(0), map_size, my, mx),
                     window_on_map(large_k.mean(0), map_size, my, mx), (y, x), args.out, title)
    print(title)
    print(f'{large_k.shape[0]} groups; large kernel max weight {large_k.max():.3f} (uniform would be '
          f'{1 / large_k[0].size:.3f}); written to {args.out}')
    return small_k, large_k


if __name__ == '__main__':
    main()
