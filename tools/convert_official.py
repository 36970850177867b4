#!/usr/bin/env python
"""Convert an official OverLoCK checkpoint to mmoverlock's OpenMMLab 2.x layout, checked against the model.

    python tools/convert_official.py SRC DST --task cls|det|seg [--config CONFIG]

cls: the release's ImageNet model -> mmpretrain ImageClassifier; det: mmdet 2.28 Mask R-CNN -> mmdet 3;
seg: mmseg 0.30 UperNet -> mmseg 1. The result must fit the model of CONFIG key for key and shape for shape
(default: the shipped config of the variant the backbone shows, e.g. configs/det/mask_rcnn_overlock_t_1x_coco.py).
A deploy-form (re-parameterised) ImageNet checkpoint, the release's ``overlock_*_in1k_224_reparam.pth``, is
recognised and checked against the deploy-form config (``configs/cls/overlock_*_in1k_reparam.py``:
``model.backbone.deploy=True``); the tool says which form it found.

(The classification configs also load the release's ImageNet files directly: this tool writes a checkpoint in
mmpretrain's layout, checked, with the form and the config recorded in its meta.)
"""
import argparse
import os
import os.path as osp
import sys

try:
    import torch

    import mmoverlock  # noqa: F401
except ImportError as err:   # a python without the environment: one line, not a traceback
    raise SystemExit(f"tools/convert_official.py: error: {err} ({sys.executable}); run the tools with the "
                     f"environment's python: source .venv/bin/activate (made by make env)") from None
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from mmengine.utils import import_modules_from_strings

from mmoverlock.checkpoint import extract_state_dict, read_checkpoint
from mmoverlock.checkpoint.official import TASKS, check_state_dict, convert_state_dict, infer_arch
from mmoverlock.models.layers import is_deploy_form

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_CONFIGS = {'cls': 'configs/cls/overlock_{}_in1k.py', 'det': 'configs/det/mask_rcnn_overlock_{}_1x_coco.py',
                   'seg': 'configs/seg/upernet_overlock_{}_160k_ade20k.py'}
#: deploy-form (re-parameterised) checkpoints: the release has them for ImageNet only
DEPLOY_CONFIGS = {'cls': 'configs/cls/overlock_{}_in1k_reparam.py'}
FORMS = {False: 'train form (dilated re-parameterisable branches)',
         True: 'deploy form (re-parameterised: one large kernel per block)'}
#: mmdet-2 / mmseg-0 meta keys -> mmengine dataset_meta keys
META_KEYS = {'CLASSES': 'classes', 'PALETTE': 'palette'}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Convert an official OverLoCK checkpoint')
    parser.add_argument('src', help='official checkpoint (.pth)')
    parser.add_argument('dst', help='where to write the converted checkpoint')
    parser.add_argument('--task', required=True, choices=TASKS)
    parser.add_argument('--config', help='config whose model the result must fit (default: by task and arch)')
    return parser.parse_args(argv)


def default_config(task: str, state: dict, deploy: bool = False) -> str:
    arch = infer_arch(state, 'backbone.')
    if arch is None:
        raise ValueError('the backbone is none of the official variants (xt, t, s, b); pass --config')
    if deploy and task not in DEPLOY_CONFIGS:
        raise ValueError(f'a deploy-form {task} checkpoint: no shipped config builds that model; pass --config '
                         f'with model.backbone.deploy=True')
    path = osp.join(ROOT, (DEPLOY_CONFIGS if deploy else DEFAULT_CONFIGS)[task].format(arch))
    if not osp.isfile(path):
        raise ValueError(f'no shipped {task} config for OverLoCK-{arch.upper()} ({path}); pass --config')
    return path


def target_state_dict(config: str) -> dict:
    """State dict of the model a config builds (no weights loaded, nothing downloaded)."""
    cfg = Config.fromfile(config)
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    cfg.model.get('backbone', {}).pop('init_cfg', None)
    return MODELS.build(cfg.model).state_dict()


def dataset_meta(checkpoint: dict) -> dict:
    meta = checkpoint.get('meta') or {}
    return {new: list(meta[old]) for old, new in META_KEYS.items() if meta.get(old) is not None}


def convert(src: str, dst: str, task: str, config: str = None) -> dict:
    checkpoint = read_checkpoint(src)
    state = convert_state_dict(extract_state_dict(checkpoint), task)
    deploy = is_deploy_form(state)
    config = config or default_config(task, state, deploy)
    check_state_dict(state, target_state_dict(config), f"the model of '{config}'")
    meta = dict(converted_from=osp.basename(src), task=task, config=osp.basename(config), deploy=deploy)
    if dataset_meta(checkpoint):
        meta['dataset_meta'] = dataset_meta(checkpoint)
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    torch.save(dict(meta=meta, state_dict=state), dst)
    return dict(tensors=len(state), config=config, form=FORMS[deploy])


def main(argv=None):
    args = parse_args(argv)
    try:
        info = convert(args.src, args.dst, args.task, args.config)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'tools/convert_official.py: error: {err}')
    print(f"{args.src}: {info['form']}")
    print(f"{args.src} -> {args.dst}: {info['tensors']} tensors, fit the model of {info['config']}")


if __name__ == '__main__':
    main()
