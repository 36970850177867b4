"""Effective receptive fields (ERF) of OverLoCK stages: the backbone of any config, demo images, the mean
input gradient of a stage's centre pixel and the mass of the ERF; the library behind
``tools/analysis/visualize_erf.py`` and ``visualize_kernels.py``."""
import glob
import os.path as osp
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..checkpoint import extract_state_dict, load_overlock_checkpoint, read_checkpoint
from ..demo.shapes_data import draw_scene
from ..models.backbones.overlock import NUM_OUTPUTS
from ..registry import MODELS

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
STAGE_NAMES = ('stage 1', 'stage 2', 'stage 3 (Focus-Net)', 'stage 4 (Focus-Net)', 'Overview-Net')
MASS_LEVELS = (0.2, 0.5, 0.9, 0.99)


def build_backbone(config: str, checkpoint: Optional[str] = None) -> nn.Module:
    """The OverLoCK backbone of any det / seg / cls config, with ``checkpoint`` weights or the random init.

    A checkpoint of the whole model (keys ``backbone.*``) and a bare backbone checkpoint both load.
    """
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    if 'model' not in cfg or 'backbone' not in cfg.model:
        raise ValueError(f"config '{config}' has no model.backbone; expected a det / seg / cls config")
    backbone_cfg = dict(cfg.model.backbone)
    if 'OverLoCK' not in str(backbone_cfg.get('type')):
        raise ValueError(f"config '{config}' has backbone type {backbone_cfg.get('type')}; "
                         f"expected OverLoCK (or mmoverlock.OverLoCK)")
    backbone_cfg['type'] = 'mmoverlock.OverLoCK'   # scoped: resolves whatever the default scope is
    backbone_cfg['init_cfg'] = None   # never download: weights come from --checkpoint or the random init
    backbone_cfg['drop_path_rate'] = 0.
    backbone_cfg['with_cp'] = False
    backbone = MODELS.build(backbone_cfg)
    backbone.init_weights()
    if checkpoint:
        state = extract_state_dict(read_checkpoint(checkpoint))
        prefix = 'backbone.' if any(k.startswith('backbone.') for k in state) else None
        load_overlock_checkpoint(backbone, checkpoint, prefix=prefix)
    return backbone.eval()


def demo_images(num: int, size: int, seed: int = 0) -> List[np.ndarray]:
    """``num`` RGB uint8 (size, size, 3) scenes from the demo data generator (nothing read from disk)."""
    return [draw_scene(np.random.default_rng(np.random.SeedSequence([seed, 3, i])), size)[0] for i in range(num)]


def read_images(folder: str, num: int, size: int) -> List[np.ndarray]:
    """Up to ``num`` images of a folder (jpg / png), RGB uint8 resized to (size, size)."""
    import cv2
    files = sorted(f for ext in ('jpg', 'jpeg', 'png') for f in glob.glob(osp.join(folder, f'*.{ext}')))
    if not files:
        raise FileNotFoundError(f"--images {folder}: no .jpg / .png file there")
    return [cv2.resize(cv2.imread(f)[..., ::-1], (size, size), interpolation=cv2.INTER_LINEAR)
            for f in files[:num]]


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> normalised float (1, 3, H, W)."""
    x = (torch.from_numpy(rgb.astype(np.float32)) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    return x.permute(2, 0, 1)[None].contiguous()


def check_stage(stage: int) -> None:
    if not 0 <= stage < NUM_OUTPUTS:
        raise ValueError(f'--stage {stage} out of range; expected 0-3 (the stages) or 4 (the Overview-Net map)')


def input_gradient(backbone: nn.Module, image: torch.Tensor, stage: int) -> np.ndarray:
    """|d (sum over channels of the stage map at its centre) / d input|, summed over RGB: (H, W)."""
    check_stage(stage)
    image = image.clone().requires_grad_(True)
    out = backbone.forward_features(image)[stage]                 # (1, C, h, w)
    h, w = out.shape[-2:]
    out[0, :, h // 2, w // 2].sum().backward()
    return image.grad[0].abs().sum(0).numpy()


def effective_receptive_field(backbone: nn.Module, images: Sequence[np.ndarray], stage: int) -> np.ndarray:
    """Mean input gradient of the centre of ``stage`` over ``images``: float64 (H, W)."""
    grads = [input_gradient(backbone, to_tensor(img), stage) for img in images]
    return np.mean(np.stack(grads).astype(np.float64), axis=0)


def log_scaled(erf: np.ndarray) -> np.ndarray:
    """The ERF as drawn: log10(g + 1), normalised to [0, 1]."""
    scaled = np.log10(erf + 1)
    return scaled / max(scaled.max(), 1e-12)


def mass_square_fractions(erf: np.ndarray, levels: Sequence[float] = MASS_LEVELS) -> List[float]:
    """For each level t: side of the smallest centred square holding a fraction t of the ERF's total,
    over the image side (small = local, 1 = the whole image)."""
    h, w = erf.shape
    total = erf.sum()
    cy, cx = h // 2, w // 2
    fractions = []
    for t in levels:
        for r in range(max(h, w)):
            window = erf[max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1]
            if window.sum() >= t * total:
                fractions.append(min(2 * r + 1, max(h, w)) / max(h, w))
                break
        else:
            fractions.append(1.0)
    return fractions
