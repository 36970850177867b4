"""tools/convert_official.py and mmoverlock.checkpoint.official: official cls / det / seg checkpoints -> the
OpenMMLab 2.x layouts, checked against the model a config builds."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from mmoverlock.checkpoint.official import (check_state_dict, convert_state_dict, infer_arch,
                                            official_cls_to_mmpretrain)

from . import conftest
from .helpers import layout_state as layout

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = dict(depth=[1, 1, 1, 1], sub_depth=[2, 2], embed_dim=[16, 32, 64, 96], kernel_size=[9, 7, 7, 7],
            mlp_ratio=[2, 2, 2, 2], sub_num_heads=[2, 2], sub_mlp_ratio=[2, 2])


def load_tool():
    return conftest.load_tool('convert_official')


def tiny_config(src: str, dst, **model) -> str:
    cfg = Config.fromfile(osp.join(ROOT, src))
    cfg.model.backbone.update(arch=TINY, init_cfg=None)
    cfg.merge_from_dict({f'model.{k}': v for k, v in model.items()})
    cfg.dump(str(dst))
    return str(dst)


@pytest.mark.parametrize('variant', ['t', 's', 'b'])
@pytest.mark.parametrize('task', ['det', 'seg'])
def test_infer_arch_from_official_layouts(task, variant):
    state = {'backbone.' + k: v for k, v in layout(f'{task}_{variant}').items()}
    assert infer_arch(state, 'backbone.') == variant
    assert infer_arch(layout(f'cls_{variant}')) == variant


def test_cls_official_to_mmpretrain_fits_and_loads(fixture, tmp_path):
    tool = load_tool()
    src, dst = tmp_path / 'overlock_tiny_in1k.pth', tmp_path / 'converted.pth'
    torch.save(fixture['cls_state_dict'], src)       # official ImageNet checkpoints: a plain state dict
    cfg = tiny_config('configs/cls/overlock_t_in1k.py', tmp_path / 'cls.py', **{
        'head.in_channels': 120, 'head.overview_channels': 96, 'head.projection': 64, 'head.num_classes': 10})
    tool.main([str(src), str(dst), '--task', 'cls', '--config', cfg])
    state = torch.load(dst, weights_only=True)['state_dict']
    expected = official_cls_to_mmpretrain(fixture['cls_state_dict'])
    assert set(state) == set(expected) and all(torch.equal(state[k], v) for k, v in expected.items())
    assert {k.split('.')[0] + '.' + k.split('.')[1] for k in state if k.startswith('head.')} == \
        {'head.main_head', 'head.aux_head'}


def test_seg_official_to_mmseg1_fits(fixture, tmp_path):
    tool = load_tool()
    cfg = tiny_config('configs/seg/upernet_overlock_t_160k_ade20k.py', tmp_path / 'seg.py', **{
        'decode_head.in_channels': [16, 32, 88, 120], 'decode_head.channels': 32, 'auxiliary_head.in_channels': 88,
        'auxiliary_head.channels': 32})
    heads = {k: v for k, v in tool.target_state_dict(cfg).items() if not k.startswith('backbone.')}
    official = dict(heads, **{'backbone.' + k: v for k, v in fixture['seg_state_dict'].items()})
    meta = dict(mmseg_version='0.30.0', CLASSES=('wall', 'building'), PALETTE=[[120, 120, 120], [180, 120, 120]])
    torch.save(dict(meta=meta, state_dict=official), tmp_path / 'upernet_official.pth')
    tool.main([str(tmp_path / 'upernet_official.pth'), str(tmp_path / 'out.pth'), '--task', 'seg', '--config', cfg])
    out = torch.load(tmp_path / 'out.pth', weights_only=True)
    assert out['meta']['dataset_meta'] == dict(classes=['wall', 'building'], palette=meta['PALETTE'])
    assert set(out['state_dict']) == set(official)
    assert all(torch.equal(out['state_dict'][k], v) for k, v in official.items())


@pytest.mark.slow
def test_det_default_config_from_the_backbone(tmp_path):
    """Without --config the variant the backbone shows picks the shipped Mask R-CNN config (full size)."""
    tool = load_tool()
    official = tool.target_state_dict(osp.join(ROOT, 'configs/det/mask_rcnn_overlock_s_1x_coco.py'))
    torch.save(dict(state_dict=official), tmp_path / 'maskrcnn1x_overlock_small_coco.pth')
    info = tool.convert(str(tmp_path / 'maskrcnn1x_overlock_small_coco.pth'), str(tmp_path / 'out.pth'), 'det')
    assert osp.basename(info['config']) == 'mask_rcnn_overlock_s_1x_coco.py'
    assert info['tensors'] == len(official)


def test_clear_errors(fixture, tmp_path, capsys):
    tool = load_tool()
    det = {'backbone.' + k: v for k, v in fixture['det_state_dict'].items()}
    torch.save(dict(state_dict=det), tmp_path / 'tiny_det.pth')
    # another arch than the shipped variants, no --config
    with pytest.raises(SystemExit, match='none of the official variants'):
        tool.main([str(tmp_path / 'tiny_det.pth'), str(tmp_path / 'out.pth'), '--task', 'det'])
    # a detector given as a segmentor
    with pytest.raises(ValueError, match=r"mmseg-0 segmentor checkpoint has modules \['neck.'"):
        convert_state_dict({'backbone.x': torch.zeros(1), 'neck.y': torch.zeros(1)}, 'seg')
    with pytest.raises(ValueError, match="task 'pose'"):
        convert_state_dict({}, 'pose')
    with pytest.raises(SystemExit, match='does not exist'):
        tool.main([str(tmp_path / 'missing.pth'), str(tmp_path / 'out.pth'), '--task', 'det'])
    # keys and shapes are checked, each kind of misfit named
    target = {'a': torch.zeros(2), 'b': torch.zeros(3), 'c': torch.zeros(1)}
    with pytest.raises(ValueError) as err:
        check_state_dict({'a': torch.zeros(4), 'b': torch.zeros(3), 'd': torch.zeros(1)}, target)
    assert str(err.value) == ('the converted checkpoint does not fit model: 1 missing (c); 1 unexpected (d); '
                              '1 of another shape (checkpoint vs model: a: (4,) vs (2,))')
    check_state_dict(dict(target), target)
    assert not osp.exists(tmp_path / 'out.pth')
