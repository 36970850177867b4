"""The built-in demo data set: coloured shapes on textured backgrounds (written by ``tools/make_demo_data.py``
and ``tools/demo.py``; drawn in memory by the ERF and kernel pictures).

Four classes (circle, square, triangle, star) of random colour, size and rotation, 1-4 per image, allowed to
overlap (later shapes occlude earlier ones; each keeps >= half of itself visible), on backgrounds of value
noise, stripes or checks. One drawing, two annotation styles:

    OUT/images/{training,validation}/NNNNNN.jpg          the images (ADE20K layout)
    OUT/annotations/{training,validation}/NNNNNN.png     ADE-style label maps: 0 background, 1..4 the classes
    OUT/annotations/instances_{training,validation}.json COCO instances (visible part as polygons, bbox, area)

Deterministic: image i of a split depends only on (seed, split, i), so the same arguments give the same files.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Tuple

import cv2
import numpy as np

CLASSES = ('circle', 'square', 'triangle', 'star')
#: RGB colour per label-map value (background first), for drawing label maps
PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48)]
SPLITS = ('training', 'validation')
SUBPIXEL_BITS = 4                 # cv2.fillPoly shift: polygons are drawn with 1/16 px precision
MIN_VISIBLE = 0.5                 # every shape keeps at least this fraction of itself visible
MIN_AREA = 40                     # px; smaller visible parts are not annotated
SHAPES_PER_IMAGE = (1, 4)         # inclusive range
RADIUS_RANGE = (0.10, 0.25)       # circumradius as a fraction of the image side: 32-80 px shapes at 160 px
_SPLIT_SALT = {'training': 1, 'validation': 2}


# ---------------------------------------------------------------------------------------------- drawing
def shape_outline(name: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Vertices (N, 2) of a shape of circumradius ``radius`` centred at (cx, cy), rotated by ``angle``."""
    if name == 'circle':
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        r = np.full_like(t, radius)
    elif name == 'square':
        t = np.arange(4) * np.pi / 2 + np.pi / 4
        r = np.full_like(t, radius)
    elif name == 'triangle':
        t = np.arange(3) * 2 * np.pi / 3 - np.pi / 2
        r = np.full_like(t, radius)
    elif name == 'star':
        t = np.arange(10) * np.pi / 5 - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
    else:
        raise ValueError(f"make_demo_data: unknown shape '{name}'; valid: {list(CLASSES)}")
    t = t + angle
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def fill_polygon(canvas: np.ndarray, vertices: np.ndarray, value) -> None:
    """Draw a filled polygon in place, with sub-pixel vertices."""
    pts = np.round(vertices * (1 << SUBPIXEL_BITS)).astype(np.int32)[None]
    cv2.fillPoly(canvas, pts, value, lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)


def value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a random (cells, cells, 3) grid upsampled bicubically. -> (size, size, 3)."""
    grid = rng.random((cells, cells, 3)).astype(np.float32)
    return np.clip(cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC), 0, 1)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background, float32 (size, size, 3) in [0, 1]: value noise, stripes or checks."""
    base = rng.random(3) * 0.6 + 0.2
    other = np.clip(base + rng.normal(0, 0.25, 3), 0, 1)
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == 0:
        mix = value_noise(rng, size, int(rng.integers(3, 9)))[..., :1]
    elif kind == 1:
        theta = rng.random() * np.pi
        period = rng.uniform(6, 24)
        mix = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)[..., None]
    else:
        cell = int(rng.integers(8, 28))
        mix = (((xx // cell) + (yy // cell)) % 2)[..., None]
    img = base * (1 - mix) + other * mix
    img += 0.25 * (value_noise(rng, size, int(rng.integers(8, 20))) - 0.5)   # colour blotches
    img += rng.normal(0, 0.03, img.shape)                                   # grain
    return np.clip(img, 0, 1).astype(np.float32)


def draw_scene(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, List[dict]]:
    """One image and its shapes: uint8 RGB (size, size, 3), [{label, visible: bool (size, size)}]."""
    img = background(rng, size)
    shapes: List[dict] = []
    for _ in range(int(rng.integers(SHAPES_PER_IMAGE[0], SHAPES_PER_IMAGE[1] + 1))):
        for _attempt in range(20):
            label = int(rng.integers(len(CLASSES)))
            radius = rng.uniform(*RADIUS_RANGE) * size
            cx, cy = rng.uniform(radius * 0.6, size - radius * 0.6, 2)
            vertices = shape_outline(CLASSES[label], cx, cy, radius, rng.uniform(0, 2 * np.pi))
            full = np.zeros((size, size), np.uint8)
            fill_polygon(full, vertices, 1)
            full = full.astype(bool)
            if full.sum() < 4 * MIN_AREA:
                continue
            if all((s['visible'] & ~full).sum() >= MIN_VISIBLE * s['area'] for s in shapes):
                break
        else:
            continue   # no free place found: fewer shapes in this image
        for s in shapes:
            s['visible'] &= ~full
        shapes.append(dict(label=label, visible=full, area=int(full.sum())))
        colour = rng.random(3)
        shade = 1 + 0.25 * (value_noise(rng, size, 4) - 0.5)   # gentle shading inside the shape
        img[full] = np.clip(colour * shade[full], 0, 1)
    rgb = (img * 255).round().astype(np.uint8)
    return rgb, [s for s in shapes if s['visible'].sum() >= MIN_AREA]


# ---------------------------------------------------------------------------------------------- annotation
def mask_to_polygons(mask: np.ndarray) -> List[List[float]]:
    """Outer contours of a binary mask as COCO polygons [[x0, y0, x1, y1, ...], ...] (>= 3 points each)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for c in contours:
        if len(c) >= 3:
            polygons.append([float(v) + 0.5 for v in c.reshape(-1)])   # pixel centres
    return polygons


def mask_to_bbox(mask: np.ndarray) -> List[float]:
    """COCO [x, y, w, h] of the pixels of a binary mask."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def label_map(shapes: List[dict], size: int) -> np.ndarray:
    """ADE-style semantic map: uint8 (size, size), 0 background, 1 + class index where a shape is visible."""
    out = np.zeros((size, size), np.uint8)
    for s in shapes:
        out[s['visible']] = s['label'] + 1
    return out


def image_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, _SPLIT_SALT[split], index])


def make_split(out: str, split: str, num: int, size: int, seed: int) -> Dict[str, int]:
    """Draw ``num`` images of one split; write images, label maps and the COCO json. Returns counts."""
    img_dir = osp.join(out, 'images', split)
    ann_dir = osp.join(out, 'annotations', split)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    images, annotations = [], []
    for index in range(num):
        rng = np.random.default_rng(image_seed(seed, split, index))
        rgb, shapes = draw_scene(rng, size)
        name = f'{index:06d}'
        cv2.imwrite(osp.join(img_dir, name + '.jpg'), rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(osp.join(ann_dir, name + '.png'), label_map(shapes, size))
        images.append(dict(id=index, file_name=name + '.jpg', height=size, width=size))
        for s in shapes:
            polygons = mask_to_polygons(s['visible'])
            if not polygons:
                continue
            annotations.append(dict(id=len(annotations) + 1, image_id=index, category_id=s['label'] + 1,
                                    segmentation=polygons, area=float(s['visible'].sum()),
                                    bbox=mask_to_bbox(s['visible']), iscrowd=0))
    coco = dict(info=dict(description=f'mmoverlock demo shapes, {split}, seed {seed}'),
                images=images, annotations=annotations,
                categories=[dict(id=i + 1, name=n, supercategory='shape') for i, n in enumerate(CLASSES)])
    with open(osp.join(out, 'annotations', f'instances_{split}.json'), 'w') as f:
        json.dump(coco, f)
    return dict(images=len(images), instances=len(annotations))


def make_demo_data(out: str = 'data/demo', num_train: int = 400, num_val: int = 60, size: int = 160,
                   seed: int = 0) -> Dict[str, Dict[str, int]]:
    """Write both splits under ``out``; returns {split: {images, instances}}."""
    if size < 64:
        raise ValueError(f'make_demo_data: size={size} is too small; use >= 64 px')
    if num_train < 1 or num_val < 1:
        raise ValueError(f'make_demo_data: num_train={num_train}, num_val={num_val}; both must be >= 1')
    return {split: make_split(out, split, num, size, seed)
            for split, num in zip(SPLITS, (num_train, num_val))}
