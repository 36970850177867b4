"""Layer-wise lr decay for OverLoCK from its one stage table: ``OverLoCK.get_layer_depth`` (mmpretrain's
contract), mmoverlock's subclass of mmdet's ``LearningRateDecayOptimizerConstructor`` and timm's
``group_matcher`` -- the groups each builds, and a 2-iteration training with each."""
import os.path as osp

import pytest
import timm
import torch
from mmengine.config import Config

import mmoverlock.timm  # noqa: F401  (registers overlock_* with timm)
from mmoverlock import OverLoCK
from mmoverlock.models.backbones.overlock import STAGE_TABLE

from .conftest import ROOT, load_tool

MASK_RCNN = osp.join(ROOT, 'configs', 'det', 'mask_rcnn_overlock_t_1x_coco.py')
CLS_T = osp.join(ROOT, 'configs', 'cls', 'overlock_t_in1k.py')


def layer_table(backbone):
    """({layer id: the modules of its parameters}, number of layers)."""
    table = {}
    for name, _ in backbone.named_parameters():
        layer, num_layers = backbone.get_layer_depth(name)
        parts = name.split('.')
        module = '.'.join(parts[:2]) if parts[0].startswith(('blocks', 'sub_blocks')) else parts[0]
        table.setdefault(layer, [])
        if module not in table[layer]:
            table[layer].append(module)
    return dict(sorted(table.items())), num_layers


def test_layers_of_t_follow_the_stage_table(capsys):
    with torch.device('meta'):
        backbone = OverLoCK('t', layout='detection')
    table, num_layers = layer_table(backbone)
    with capsys.disabled():
        print(f'\nOverLoCK-T: {num_layers} layers (lr_scale for decay_rate 0.9)')
        for layer, modules in table.items():
            print(f'  layer {layer:2d}  lr_scale {0.9 ** (num_layers - layer - 1):.3f}  {", ".join(modules)}')
    # T: depth 4, 4, 6, 2 (Base-Net 1-3, Overview-Net), sub_depth 12, 2 (Focus-Net): stem + 30 blocks + heads
    assert num_layers == 32
    depth = backbone.get_layer_depth
    assert depth('patch_embed1.0.weight') == (0, 32)                           # stem first
    assert [depth(f'blocks1.{i}.dwconv.weight')[0] for i in range(4)] == [1, 2, 3, 4]
    assert depth('patch_embed2.0.weight')[0] == depth('blocks2.0.proj.0.weight')[0] == 5
    assert depth('blocks3.5.ls.weight')[0] == 14
    assert depth('patch_embed4.0.weight')[0] == 15 and depth('blocks4.1.dwconv.weight')[0] == 16   # Overview-Net
    assert depth('high_level_proj.weight')[0] == depth('sub_blocks3.0.rpb1')[0] == 17              # Focus-Net
    assert depth('sub_blocks3.11.ls2.weight')[0] == 28
    assert depth('patch_embedx.h_proj.0.weight')[0] == depth('sub_blocks4.0.lepe.1.weight')[0] == 29
    assert depth('sub_blocks4.1.mlp.0.weight')[0] == 30
    assert depth('extra_norm.4.weight') == depth('h_proj.0.weight') == (31, 32)                   # heads last
    assert depth('neck.lateral_convs.0.conv.weight', 'backbone.') == (31, 32)
    # stages: the table's order
    assert [backbone.get_stage_depth(n)[0] for n in ('patch_embed1.1.weight', 'blocks2.0.ls.weight',
                                                     'blocks4.0.ls.weight', 'sub_blocks4.1.ls1.weight',
                                                     'extra_norm.0.bias')] == [0, 2, 4, 6, 7]
    assert backbone.get_stage_depth('blocks1.0.ls.weight') == (1, len(STAGE_TABLE))
    # every parameter has a layer, and the layers run in execution order
    layers = [depth(name)[0] for name, _ in backbone.named_parameters()]
    assert set(layers) == set(range(32))


def test_timm_layer_decay_groups_by_stem_and_blocks():
    from timm.optim import create_optimizer_v2
    model = timm.create_model('overlock_xt')
    optimizer = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.8)
    scales = sorted({g['lr_scale'] for g in optimizer.param_groups})
    # XT: depth 2, 2, 3, 2 and sub_depth 6, 2: stem + 17 blocks + head = 19 layers (not one per parameter)
    assert len(scales) == 19 and scales[0] == pytest.approx(0.8 ** 18) and scales[-1] == 1
    assert len(optimizer.param_groups) <= 2 * 19
    by_name = {}
    for group in optimizer.param_groups:
        for p in group['params']:
            by_name[id(p)] = group
    params = dict(model.named_parameters())
    assert by_name[id(params['backbone.patch_embed1.0.weight'])]['lr_scale'] == scales[0]      # stem lowest
    assert by_name[id(params['head.main_head.4.weight'])]['lr_scale'] == 1                    # head highest
    assert (by_name[id(params['backbone.patch_embed2.0.weight'])]['lr_scale']
            == by_name[id(params['backbone.blocks2.0.dwconv.weight'])]['lr_scale'])
    assert (by_name[id(params['backbone.blocks4.1.dwconv.weight'])]['lr_scale']
            < by_name[id(params['backbone.sub_blocks3.0.dwconv1.weight'])]['lr_scale'])
    # no weight decay: 1-D parameters and the model's no_weight_decay() (position bias tables, LayerScale, GRN)
    for name in ('backbone.sub_blocks3.0.rpb2', 'backbone.blocks3.0.ls.weight', 'backbone.blocks1.0.proj.7.gamma',
                 'backbone.patch_embed1.1.weight'):
        assert name in model.no_weight_decay() or params[name].dim() == 1
        assert by_name[id(params[name])]['weight_decay'] == 0
    assert by_name[id(params['backbone.blocks1.0.proj.4.weight'])]['weight_decay'] > 0


def _train_two_steps(step):
    losses = [step() for _ in range(2)]
    assert all(torch.isfinite(torch.as_tensor(v)) for v in losses)


def test_timm_layer_decay_trains(fixture):
    from timm.optim import create_optimizer_v2
    model = timm.create_model('overlock_t', arch=fixture['arch'], num_classes=3, projection=16).train()
    optimizer = create_optimizer_v2(model, 'adamw', lr=1e-3, layer_decay=0.8)
    before = model.backbone.patch_embed1[0].weight.detach().clone()
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])

    def step():
        for group in optimizer.param_groups:      # what timm's scheduler does with lr_scale
            group['lr'] = 1e-3 * group['lr_scale']
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()
    _train_two_steps(step)
    assert not torch.equal(before, model.backbone.patch_embed1[0].weight)


def test_mmpretrain_layer_decay_constructor_trains(fixture):
    from mmengine.optim import build_optim_wrapper
    from mmpretrain.registry import MODELS
    from mmpretrain.structures import DataSample
    from mmpretrain.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(CLS_T)
    cfg.model.backbone.arch = fixture['arch']
    e = fixture['arch']['embed_dim']
    cfg.model.head.update(num_classes=3, in_channels=e[3] + e[3] // 4, overview_channels=e[3], projection=16)
    cfg.model.pop('train_cfg', None)        # no Mixup / CutMix: plain labels
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, dict(
        optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
        constructor='LearningRateDecayOptimWrapperConstructor', paramwise_cfg=dict(layer_decay_rate=0.8)))
    groups = wrapper.optimizer.param_groups
    num_layers = model.backbone.get_layer_depth('backbone.patch_embed1.0.weight', 'backbone.')[1]
    scales = {g['lr_scale'] for g in groups}
    assert min(scales) == pytest.approx(0.8 ** (num_layers - 1)) and max(scales) == 1
    head = [g for g in groups if g['param_name'].startswith('head.')]
    assert head and all(g['lr_scale'] == 1 for g in head)
    data = dict(inputs=torch.randn(2, 3, 64, 64),
                data_samples=[DataSample().set_gt_label(i) for i in (0, 2)])

    def step():
        losses = model(**model.data_preprocessor(data, True), mode='loss')
        loss = sum(v for v in losses.values())
        wrapper.update_params(loss)
        return loss.item()
    _train_two_steps(step)


@pytest.mark.integration
def test_mmdet_layer_decay_constructor_trains_two_iterations(tmp_path):
    from .helpers import make_coco
    from .test_det import TINY, TINY_FPN_IN, derive_tiny
    make_coco(str(tmp_path / 'coco'))
    config = derive_tiny(MASK_RCNN, str(tmp_path / 'coco'), str(tmp_path / 'tiny.py'), neck=TINY_FPN_IN)
    cfg = Config.fromfile(config)
    cfg.optim_wrapper.constructor = 'mmoverlock.LearningRateDecayOptimizerConstructor'
    cfg.optim_wrapper.paramwise_cfg = dict(decay_rate=0.9, decay_type='layer_wise', num_layers=6)
    cfg.dump(config)
    runner = load_tool('train').main([config, '--work-dir', str(tmp_path / 'work')])
    assert runner.iter == 2
    groups = runner.optim_wrapper.optimizer.param_groups
    backbone = runner.model.backbone
    num_layers = sum(TINY['depth']) + sum(TINY['sub_depth']) + 2
    by_name = {name: g for g in groups for name in g['param_names']}
    assert by_name['backbone.patch_embed1.0.weight']['lr_scale'] == pytest.approx(0.9 ** (num_layers - 1))
    assert by_name['neck.lateral_convs.0.conv.weight']['lr_scale'] == 1
    assert by_name['backbone.blocks3.0.ls.weight']['weight_decay'] == 0      # OverLoCK.no_weight_decay()
    assert backbone.get_layer_depth('backbone.sub_blocks4.1.ls1.weight', 'backbone.')[0] == num_layers - 2
    # stage-wise: one group per stage of the table
    from mmengine.optim import build_optim_wrapper
    stage = build_optim_wrapper(runner.model, dict(
        type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        constructor='mmoverlock.LearningRateDecayOptimizerConstructor',
        paramwise_cfg=dict(decay_rate=0.5, decay_type='stage_wise')))
    assert sorted({g['lr_scale'] for g in stage.optimizer.param_groups}) == [0.5 ** i for i in range(7, -1, -1)]
