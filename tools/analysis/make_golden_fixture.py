#!/usr/bin/env python
"""Regenerate the golden data of ``tests/data`` with the official OverLoCK release's own code.

    python tools/analysis/make_golden_fixture.py --official PATH [--weights-from FIXTURE | --seed N]
        [--out DIR] [--no-layouts]

PATH is a checkout of https://github.com/LMMMEng/OverLoCK (verified against commit
2c8ab3b29e3a11fb4a2510d98e4d9ed8b33cf091, see ``tests/data/README.md``). The release's files are imported from PATH
at run time by file location (nothing of the release is in this repository; the import path is left alone):
``models/overlock.py`` (the ImageNet model), ``detection/models/overlock.py`` and
``segmentation/models/overlock.py`` (the dense backbones). What they import and this machine lacks or has in a newer,
incompatible form is stood in through ``sys.modules`` while they load (and restored afterwards):

* ``natten.functional.na2d_av``: a brute-force gather of this file's own (``na2d_av_brute_force``: one slice of the
  clamped k x k window per output pixel), so the golden data depend neither on NATTEN nor on mmoverlock's kernels;
* ``timm.models.registry.register_model``: the identity (timm's global model registry is left alone); the rest of
  timm (``timm.models.layers.DropPath``/``to_2tuple``, ``timm.data``) is the installed timm (1.x keeps the 0.6 names);
* the mmdet-2 / mmseg-0 / mmcv-1 names the dense copies import (``mmdet.models.builder.MODELS``,
  ``mmdet.utils.get_root_logger``, the mmseg twins, ``mmcv.runner.load_checkpoint``) and mmengine's
  ``load_checkpoint``: registries whose ``register_module()`` returns the class unchanged, a logger, and a
  ``load_checkpoint`` that refuses (nothing here loads pretrained weights).

Outputs, under ``--out`` (default: this repository's ``tests/data``):

``overlock_tiny_fixture.pt``
    ``arch``, ``inputs`` (three batches), ``cls_state_dict``, ``cls_logits``, ``cls_logits_reparam`` (after the
    release's ``reparam()``), ``det_state_dict``, ``det_features``, ``seg_state_dict``, ``seg_features``; float32,
    CPU, eval mode. With ``--weights-from FIXTURE`` the arch, inputs and the three state dicts are taken from an
    existing fixture and every output is recomputed (how the committed fixture is checked: nobody knows the seed it
    was first made with). Without it, fresh weights from ``--seed`` for the committed fixture's arch: the
    release's initialisation (trunc-normal convolutions), then every parameter and BN statistic perturbed
    (``perturb``), so every path of the network shows in the outputs.
``state_dict_layout/{cls,det,seg}_{variant}.tsv``
    ``key<TAB>shape`` of each official variant's state dict, in state-dict order: ``cls`` for xt/t/s/b (the
    release's ImageNet model, ``overlock_*()``), ``det``/``seg`` for t/s/b (the variants the release's det/seg
    configs build: ``detection/configs/maskrcnn_overlock``, ``segmentation/configs/overlock``). The det/seg files
    hold the backbone's keys only (no ``backbone.`` prefix), as the committed ones do: the heads (FPN, RPN, RoI
    heads, UperNet) are mmdet-2 / mmseg-0 modules, not the release's code, and building those detectors needs
    mmcv 1 / mmdet 2, which this environment (mmcv 2) cannot import.
"""
import argparse
import contextlib
import copy
import importlib.util
import os
import os.path as osp
import subprocess
import sys
import types
import warnings

import torch
from torch import nn

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DATA = osp.join(ROOT, 'tests', 'data')
FIXTURE_NAME = 'overlock_tiny_fixture.pt'
LAYOUT_DIR = 'state_dict_layout'
#: the release commit the committed data were verified against (tests/test_golden_fixture_regen.py)
RELEASE_COMMIT = '2c8ab3b29e3a11fb4a2510d98e4d9ed8b33cf091'
#: the release's files this tool imports, relative to the checkout
RELEASE_FILES = {'cls': 'models/overlock.py', 'det': 'detection/models/overlock.py',
                 'seg': 'segmentation/models/overlock.py'}
#: variants per task: the release's ImageNet models, and those its det/seg configs build
LAYOUT_VARIANTS = {'cls': ('xt', 't', 's', 'b'), 'det': ('t', 's', 'b'), 'seg': ('t', 's', 'b')}
#: the release's det/seg configs build the backbone with these arguments (besides pretrained=True)
DENSE_CONFIG_KWARGS = dict(drop_path_rate=0.2)

#: fresh fixtures (no --weights-from): the tiny model, its classifier and the input batches
TINY_ARCH = dict(depth=[1, 1, 1, 1], sub_depth=[2, 2], embed_dim=[16, 32, 64, 96], kernel_size=[9, 7, 7, 7],
                 mlp_ratio=[2, 2, 2, 2], sub_num_heads=[2, 2], sub_mlp_ratio=[2, 2])      # the committed fixture's
TINY_CLASSES = 10
TINY_PROJECTION = 64
INPUT_SHAPES = ((2, 3, 96, 128), (1, 3, 160, 224), (1, 3, 130, 190))
FIXTURE_KEYS = ('arch', 'inputs', 'cls_state_dict', 'cls_logits', 'cls_logits_reparam', 'det_state_dict',
                'det_features', 'seg_state_dict', 'seg_features')


def na2d_av_brute_force(attn: torch.Tensor, value: torch.Tensor, kernel_size: int, dilation: int = 1,
                        **kwargs) -> torch.Tensor:
    """NATTEN's ``na2d_av`` by brute force: ``out[b, g, i, j] = sum_t attn[b, g, i, j, t] * value[b, g, window_t]``.

    ``attn``: (B, G, H, W, k*k), ``value``: (B, G, H, W, C). The window of pixel (i, j) is the k x k square of
    the map starting at ``clamp(i - k // 2, 0, H - k)``, ``clamp(j - k // 2, 0, W - k)`` (NATTEN's neighbourhood
    without dilation: shifted inwards at the borders, never padded); tap t = row * k + col inside it.
    """
    if dilation != 1 or kwargs:
        raise NotImplementedError(f'na2d_av stand-in: dilation={dilation}, {sorted(kwargs)}: only the release\'s '
                                  'call (dilation 1, no other options) is implemented')
    b, g, h, w, c = value.shape
    k = kernel_size
    if h < k or w < k or attn.shape != (b, g, h, w, k * k):
        raise ValueError(f'na2d_av stand-in: attn {tuple(attn.shape)} / value {tuple(value.shape)} / '
                         f'kernel_size {k}: expected attn (B, G, H, W, k*k) and H, W >= k')
    out = value.new_zeros(value.shape)
    for i in range(h):
        top = min(max(i - k // 2, 0), h - k)
        for j in range(w):
            left = min(max(j - k // 2, 0), w - k)
            window = value[:, :, top:top + k, left:left + k, :].reshape(b, g, k * k, c)
            out[:, :, i, j, :] = (attn[:, :, i, j, :].unsqueeze(-2) @ window).squeeze(-2)
    return out


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


class _Registry:
    """Stand-in for an mmcv-1 ``Registry``: ``register_module()`` returns the class or function unchanged."""

    def register_module(self, name=None, force=False, module=None):
        return module if module is not None else (lambda obj: obj)


def _refuse_load_checkpoint(model, filename, *args, **kwargs):
    raise RuntimeError(f'load_checkpoint({filename!r}): the golden data are made from random weights; build the '
                       'release\'s models with pretrained=False')


def _get_root_logger(*args, **kwargs):
    import logging
    return logging.getLogger('overlock_release')


def stand_in_modules() -> dict:
    """The ``sys.modules`` entries installed while the release's files load (see the module docstring)."""
    functional = _module('natten.functional', na2d_av=na2d_av_brute_force)
    modules = {
        'natten': _module('natten', functional=functional, __version__='stand-in'),
        'natten.functional': functional,
        'timm.models.registry': _module('timm.models.registry', register_model=lambda fn: fn),
        'mmengine.runner': _module('mmengine.runner', load_checkpoint=_refuse_load_checkpoint),
        'mmcv.runner': _module('mmcv.runner', load_checkpoint=_refuse_load_checkpoint),
    }
    for lib in ('mmdet', 'mmseg'):
        modules[f'{lib}.models.builder'] = _module(f'{lib}.models.builder', MODELS=_Registry())
        modules[f'{lib}.utils'] = _module(f'{lib}.utils', get_root_logger=_get_root_logger)
    return modules


@contextlib.contextmanager
def _installed(modules: dict):
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def check_release(path: str) -> str:
    """``path`` made absolute; ValueError naming what is missing unless it is a checkout of the release."""
    missing = [rel for rel in RELEASE_FILES.values() if not osp.isfile(osp.join(path, rel))]
    if missing:
        raise ValueError(f"--official {path}: not a checkout of the OverLoCK release (github.com/LMMMEng/OverLoCK): "
                         f"missing {', '.join(missing)}; pass the root of a checkout (e.g. commit "
                         f"{RELEASE_COMMIT[:7]})")
    return osp.abspath(path)


def release_commit(path: str):
    """The commit checked out at ``path``, or None where ``path`` is not the top of a git work tree (e.g. an
    extracted archive) or git is missing."""
    def git(*args):
        return subprocess.run(['git', '-C', path, *args], capture_output=True, text=True, check=False)

    try:
        head, top = git('rev-parse', 'HEAD'), git('rev-parse', '--show-toplevel')
    except OSError:
        return None
    if head.returncode or top.returncode or osp.realpath(top.stdout.strip()) != osp.realpath(path):
        return None
    return head.stdout.strip()


def load_release(path: str) -> dict:
    """The release's three model files as modules, by task: ``{'cls': ..., 'det': ..., 'seg': ...}``."""
    path = check_release(path)
    for name in ('timm', 'einops'):
        if importlib.util.find_spec(name) is None:
            raise ImportError(f'the release imports {name}, which is not installed: pip install --no-deps '
                              f'{"timm==1.0.31 huggingface_hub safetensors" if name == "timm" else name}')
    import timm  # noqa: F401  the real timm first: only its registry is stood in
    import timm.data  # noqa: F401
    modules = {}
    with _installed(stand_in_modules()), warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # timm 1.x: "Importing from timm.models.layers is deprecated"
        for task, rel in RELEASE_FILES.items():
            spec = importlib.util.spec_from_file_location(f'overlock_release_{task}', osp.join(path, rel))
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            modules[task] = module
    return modules


def build(release: dict, task: str, arch: dict, **kwargs) -> nn.Module:
    """The release's ``OverLoCK`` of ``task`` for a fixture arch (``use_gemm=False``: the plain ``nn.Conv2d``)."""
    return release[task].OverLoCK(**copy.deepcopy(arch), use_gemm=False, **kwargs)


@torch.no_grad()
def perturb(model: nn.Module, generator: torch.Generator) -> None:
    """Every parameter plus N(0, 0.1^2) noise, every BN's running mean drawn from N(0, 0.1^2) and running variance
    from 0.5 + |N(0, 0.1^2)| (the statistics of the committed fixture): at the release's identity-like initial
    values (BN, LayerNorm, LayerScale, GRN, relative position biases, zero biases) those paths would not show in the
    outputs."""
    def noise(t):
        return torch.randn(t.shape, generator=generator, dtype=t.dtype) * 0.1

    for param in model.parameters():
        param.add_(noise(param))
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(noise(module.running_mean))
            module.running_var.copy_(0.5 + noise(module.running_var).abs())


def fresh_weights(release: dict, seed: int) -> dict:
    """Arch, inputs and cls/det/seg state dicts for a new fixture, drawn from ``seed``."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    weights = dict(arch=copy.deepcopy(TINY_ARCH),
                   inputs=[torch.randn(shape, generator=generator) for shape in INPUT_SHAPES])
    for task in ('cls', 'det', 'seg'):
        kwargs = dict(num_classes=TINY_CLASSES, projection=TINY_PROJECTION) if task == 'cls' else {}
        model = build(release, task, TINY_ARCH, **kwargs)       # the release's init (trunc-normal convolutions)
        perturb(model, generator)
        weights[f'{task}_state_dict'] = model.state_dict()
    return weights


def weights_from(path: str) -> dict:
    """Arch, inputs and cls/det/seg state dicts of an existing fixture."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'--weights-from {path}: no such file; pass a golden fixture such as '
                                f'tests/data/{FIXTURE_NAME}')
    fixture = torch.load(path, weights_only=True)
    missing = [key for key in ('arch', 'inputs', 'cls_state_dict', 'det_state_dict', 'seg_state_dict')
               if key not in fixture]
    if missing:
        raise ValueError(f'--weights-from {path}: no {", ".join(missing)} in it; pass a golden fixture such as '
                         f'tests/data/{FIXTURE_NAME}')
    return {key: fixture[key] for key in ('arch', 'inputs', 'cls_state_dict', 'det_state_dict', 'seg_state_dict')}


def _loaded(model: nn.Module, state_dict: dict) -> nn.Module:
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


@torch.no_grad()
def make_fixture(release: dict, weights: dict) -> dict:
    """The fixture: ``weights`` (arch, inputs, state dicts) and the outputs the release computes from them."""
    arch, inputs = weights['arch'], weights['inputs']
    head = weights['cls_state_dict']['head.4.weight']                 # (num_classes, projection, 1, 1)
    cls = _loaded(build(release, 'cls', arch, num_classes=head.shape[0], projection=head.shape[1]),
                  weights['cls_state_dict'])
    fixture = dict(arch=arch, inputs=inputs, cls_state_dict=weights['cls_state_dict'],
                   cls_logits=[cls(x) for x in inputs])
    cls.reparam()
    fixture['cls_logits_reparam'] = [cls(x) for x in inputs]
    for task in ('det', 'seg'):
        model = _loaded(build(release, task, arch), weights[f'{task}_state_dict'])
        fixture[f'{task}_state_dict'] = weights[f'{task}_state_dict']
        fixture[f'{task}_features'] = [list(model(x)) for x in inputs]
    return {key: fixture[key] for key in FIXTURE_KEYS}


@contextlib.contextmanager
def _no_init(release: dict):
    """Skip the release's weight init (layouts need names and shapes only; OverLoCK-B's init is seconds)."""
    saved = {task: module.OverLoCK._init_weights for task, module in release.items()}
    for module in release.values():
        module.OverLoCK._init_weights = lambda self, m: None
    try:
        yield
    finally:
        for task, module in release.items():
            module.OverLoCK._init_weights = saved[task]


def layout_lines(state_dict: dict) -> str:
    """``key<TAB>shape`` lines, shape as a Python tuple: ``patch_embed1.0.weight\\t(32, 3, 3, 3)``."""
    return ''.join(f'{key}\t{tuple(value.shape)}\n' for key, value in state_dict.items())


def make_layouts(release: dict) -> dict:
    """``{'cls_xt': text, ...}``: the layout files of the official variants (see the module docstring)."""
    layouts = {}
    with _no_init(release):
        for task, variants in LAYOUT_VARIANTS.items():
            for variant in variants:
                factory = getattr(release[task], f'overlock_{variant}')
                kwargs = {} if task == 'cls' else dict(DENSE_CONFIG_KWARGS)
                model = factory(pretrained=False, use_gemm=False, **kwargs)
                layouts[f'{task}_{variant}'] = layout_lines(model.state_dict())
                del model
    return layouts


def write(out: str, fixture: dict = None, layouts: dict = None) -> list:
    """Write the fixture and/or layouts under ``out``; the paths written."""
    written = []
    if fixture is not None:
        os.makedirs(out, exist_ok=True)
        torch.save(fixture, osp.join(out, FIXTURE_NAME))
        written.append(osp.join(out, FIXTURE_NAME))
    for name, text in (layouts or {}).items():
        os.makedirs(osp.join(out, LAYOUT_DIR), exist_ok=True)
        path = osp.join(out, LAYOUT_DIR, f'{name}.tsv')
        with open(path, 'w') as f:
            f.write(text)
        written.append(path)
    return written


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Regenerate the golden fixture and the state-dict layouts with '
                                                 'the official OverLoCK release\'s code')
    parser.add_argument('--official', required=True, metavar='PATH',
                        help=f'checkout of github.com/LMMMEng/OverLoCK (verified: {RELEASE_COMMIT[:7]})')
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--weights-from', metavar='FIXTURE',
                        help='take arch, inputs and state dicts from this fixture and recompute the outputs')
    source.add_argument('--seed', type=int, default=0, help='seed of fresh random weights (default: 0)')
    parser.add_argument('--out', default=DATA, help='output directory (default: tests/data)')
    parser.add_argument('--no-layouts', action='store_true', help='write the fixture only')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        release = load_release(args.official)
        weights = weights_from(args.weights_from) if args.weights_from else fresh_weights(release, args.seed)
    except (ValueError, ImportError, FileNotFoundError) as err:
        raise SystemExit(f'make_golden_fixture.py: error: {err}') from None
    commit = release_commit(args.official)
    if commit is None:
        print(f'{args.official}: not a git checkout; the committed data were verified against release commit '
              f'{RELEASE_COMMIT}')
    else:
        print(f'{args.official}: release commit {commit}'
              + ('' if commit == RELEASE_COMMIT else f' (the committed data were verified against {RELEASE_COMMIT})'))
    with torch.no_grad():
        fixture = make_fixture(release, weights)
    layouts = None if args.no_layouts else make_layouts(release)
    for path in write(args.out, fixture, layouts):
        print(f'wrote {path}')


if __name__ == '__main__':
    main()
