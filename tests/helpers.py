"""Helpers the test modules share: tolerances, free ports, the official state-dict layouts, a tiny COCO set,
one-line tool errors. (Fixtures live in ``conftest.py``.)"""
import json
import os
import os.path as osp
import re
import socket
from typing import Callable, Dict, Tuple, Union

import cv2
import numpy as np
import pytest
import torch

from .conftest import LAYOUTS, load_tool

#: the tiny COCO set's classes (:func:`make_coco`)
CLASSES = ('square', 'triangle')
#: a shape as ``tests/data/state_dict_layout/*.tsv`` writes it: ``()``, ``(32,)``, ``(64, 3, 3, 3)``
SHAPE = re.compile(r'\((?:\d+(?:, \d+)*,?)?\)')


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|: the error relative to the reference's scale."""
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now (for torchrun's rendezvous, a local HTTP server)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def parse_shape(text: str) -> Tuple[int, ...]:
    """``'(64, 3, 3, 3)'`` -> ``(64, 3, 3, 3)``; anything but a tuple of integers is refused (no ``eval``)."""
    if not SHAPE.fullmatch(text):
        raise ValueError(f'shape {text!r} is not a tuple of integers such as (64, 3, 3, 3)')
    return tuple(int(d) for d in re.findall(r'\d+', text))


def read_layout(name: str) -> Dict[str, Tuple[int, ...]]:
    """An official state dict's key -> shape, from ``tests/data/state_dict_layout/NAME[.tsv]`` (or a path)."""
    path = osp.join(LAYOUTS, name if name.endswith('.tsv') else f'{name}.tsv')
    with open(path) as f:
        rows = [line.rstrip('\n').split('\t') for line in f if line.strip()]
    return {key: parse_shape(shape) for key, shape in rows}


def layout_state(name: str, make: Callable[[Tuple[int, ...]], torch.Tensor] = torch.zeros) -> dict:
    """A state dict in an official layout (:func:`read_layout`), each tensor ``make(shape)`` (zeros)."""
    return {key: make(shape) for key, shape in read_layout(name).items()}


def exit_message(tool: Union[str, Callable], *argv) -> str:
    """Run a tool's main in-process (``tool``: its name under tools/, or the main): it must exit with a one-line
    message (no traceback); that message."""
    main = load_tool(tool).main if isinstance(tool, str) else tool
    with pytest.raises(SystemExit) as err:
        main([str(a) for a in argv])
    message = err.value.code
    assert isinstance(message, str) and '\n' not in message, message
    return message


def empty_checkpoint(folder, name: str = 'model.pth') -> str:
    """A checkpoint file with an empty state dict: for the tools' checks that run before any weight is read."""
    path = osp.join(str(folder), name)
    torch.save({'state_dict': {}}, path)
    return path


def make_coco(root: str, num_train: int = 2, num_val: int = 2, height: int = 96, width: int = 128) -> None:
    """A COCO-format set: images with one square and one triangle each, polygon masks."""
    rng = np.random.default_rng(0)
    os.makedirs(osp.join(root, 'annotations'))
    for split, num in (('train', num_train), ('val', num_val)):
        os.makedirs(osp.join(root, split))
        images, annotations = [], []
        for i in range(num):
            img = (rng.random((height, width, 3)) * 60).astype(np.uint8)
            for label in range(len(CLASSES)):
                cx, cy = rng.uniform(30, width - 30), rng.uniform(30, height - 30)
                r = rng.uniform(14, 24)
                if label == 0:
                    poly = np.array([[cx - r, cy - r], [cx + r, cy - r], [cx + r, cy + r], [cx - r, cy + r]])
                else:
                    poly = np.array([[cx, cy - r], [cx + r, cy + r], [cx - r, cy + r]])
                cv2.fillPoly(img, [poly.round().astype(np.int32)], (200, 60 + 120 * label, 40))
                (x0, y0), (x1, y1) = poly.min(0), poly.max(0)
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=i + 1, category_id=label + 1, iscrowd=0,
                    segmentation=[poly.flatten().round(2).tolist()], bbox=[x0, y0, x1 - x0, y1 - y0],
                    area=float(cv2.contourArea(poly.astype(np.float32)))))
            cv2.imwrite(osp.join(root, split, f'{i:04d}.jpg'), img)
            images.append(dict(id=i + 1, file_name=f'{i:04d}.jpg', height=height, width=width))
        with open(osp.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(dict(images=images, annotations=annotations,
                           categories=[dict(id=j + 1, name=c) for j, c in enumerate(CLASSES)]), f)
