"""One source per fact: :mod:`mmoverlock.variants` against the configs (``configs/_base_/variants/``), the backbone,
the timm models, the checkpoint converters and the numbers the docs quote."""
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config

from mmoverlock.checkpoint.official import infer_arch
from mmoverlock.models.backbones.overlock import OverLoCK, arch_settings
from mmoverlock.variants import ARCH_KEYS, VARIANTS, params_m

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_the_table_holds_the_release_variants():
    assert list(VARIANTS) == ['xt', 't', 's', 'b']
    assert VARIANTS['t'].url() == 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_t_in1k_224.pth'
    assert VARIANTS['b'].file_name(reparam=True) == 'overlock_b_in1k_224_reparam.pth'
    assert VARIANTS['xt'].channels == [56, 112, 340, 420] and VARIANTS['xt'].overview_channels == 336
    assert params_m(17_307_272) == '17.31M'


@pytest.mark.parametrize('name', list(VARIANTS))
def test_configs_read_the_same_facts(name):
    """configs/_base_/variants/ are mmengine config files (an import would make mmengine read them as lazy-import
    configs, which ``_base_`` lists cannot inherit): every value equals the module's."""
    variant = VARIANTS[name]
    cfg = Config.fromfile(osp.join(ROOT, 'configs', '_base_', 'variants', f'overlock_{name}.py')).overlock_variant
    assert cfg.arch == name
    assert cfg.checkpoint == variant.url() and cfg.reparam_checkpoint == variant.url(reparam=True)
    assert list(cfg.channels) == variant.channels and cfg.overview_channels == variant.overview_channels
    assert dict(cfg.drop_path) == variant.drop_path and cfg.crop_pct == variant.crop_pct
    assert set(cfg) == {'arch', 'checkpoint', 'reparam_checkpoint', 'channels', 'overview_channels', 'drop_path',
                        'crop_pct'}, 'a fact in the config the module does not check'


@pytest.mark.parametrize('name', list(VARIANTS))
def test_backbone_timm_and_converters_read_the_module(name):
    variant = VARIANTS[name]
    assert arch_settings[name] == arch_settings[variant.alias] == {k: list(getattr(variant, k)) if isinstance(
        getattr(variant, k), tuple) else getattr(variant, k) for k in ARCH_KEYS}
    with torch.device('meta'):
        state = OverLoCK(name, layout='classification').state_dict()
    assert infer_arch(state) == name
    timm_models = pytest.importorskip('mmoverlock.timm')
    assert timm_models.VARIANTS[variant.timm_name] == name and timm_models.CROP_PCT[variant.timm_name] == \
        variant.crop_pct


@pytest.mark.parametrize('name', list(VARIANTS))
def test_parameter_counts_are_the_models(name):
    """params: the ImageNet model as trained (train form, auxiliary head); params_deploy: for inference."""
    timm_models = pytest.importorskip('mmoverlock.timm')

    def count(**kwargs):
        return sum(p.numel() for p in timm_models.OverLoCKTimm(name, device='meta', **kwargs).parameters())

    assert count(aux_logits=True) == VARIANTS[name].params
    assert count(deploy=True) == VARIANTS[name].params_deploy


def test_docs_quote_the_module_numbers():
    """The timm models' docstrings, the README and the model zoo quote the module's parameter counts."""
    timm_models = pytest.importorskip('mmoverlock.timm')
    for variant in VARIANTS.values():
        doc = getattr(timm_models, variant.timm_name).__doc__
        assert params_m(variant.params) in doc and params_m(variant.params_deploy) in doc, doc
        assert f'{variant.top1} top-1' in doc
        assert re.findall(r'(\d+\.\d+)M', doc) == [params_m(variant.params)[:-1], params_m(variant.params_deploy)[:-1]]
    readme = open(osp.join(ROOT, 'README.md')).read()
    trained = ' / '.join(f'{v.params / 1e6:.2f}' for v in VARIANTS.values())
    deployed = ' / '.join(f'{v.params_deploy / 1e6:.2f}' for v in VARIANTS.values())
    if 'M parameters for' in readme:
        assert re.sub(r'\s+', ' ', readme).count(f'{trained} M parameters for {deployed} M') == 1
    zoo = open(osp.join(ROOT, 'docs', 'model_zoo.md')).read()
    for variant in VARIANTS.values():
        rows = [line for line in zoo.splitlines()
                if line.startswith('| ImageNet-1K') and f'| OverLoCK-{variant.name.upper()} |' in line]
        assert len(rows) == 2, rows   # train and deploy form
        for row in rows:
            cells = [c.strip() for c in row.split('|')]
            assert cells[4] == f'{variant.params_deploy / 1e6:.2f}' and cells[8] == str(variant.top1), row
            assert variant.file_name(reparam='deploy form' in row) in row
