"""Complexity analysis (hand-counted params / FLOPs), the model zoo (metafiles -> generated files) and the
results tables (synthetic work_dirs): the library mmoverlock.analysis and the scripts in tools/analysis over it."""
import json
import os
import os.path as osp
import shutil

import pytest
import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer
from mmengine.config import Config

from mmoverlock.analysis import reference
from mmoverlock.analysis.complexity import analyze_complexity, deploy_
from mmoverlock.analysis.models import build_model, imagenet_model_cfg, measure
from mmoverlock.analysis.results import merge, read_work_dir, table, tables
from mmoverlock.models.contmix import ContMix, ContMixBlock

from .conftest import load_tool

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

RELEASE = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/'
TINY = dict(depth=[1, 1, 1, 1], sub_depth=[1, 1], embed_dim=[8, 16, 32, 32], kernel_size=[5, 5, 5, 5],
            mlp_ratio=2, sub_num_heads=[2, 2], sub_mlp_ratio=2)
S = 5            # small dynamic kernel
REGIONS = 49     # 7 x 7 context regions


def _tool(name):
    """tools/analysis/<name>.py as a module."""
    return load_tool(f'analysis/{name}')


# ------------------------------------------------------------------------------------ hand counts (fvcore rules)
# conv: out elements x (C_in / groups) x k x k (bias free); eval BN: 2 per element; LN: 5 per element;
# adaptive pool: 1 per input element; bilinear resize: 4 per output element; LayerScale: 1 per element;
# activations, GRN, softmax, elementwise adds and muls: 0.

def _conv(n_out, c_in, c_out, k=1, groups=1):
    return n_out * c_out * (c_in // groups) * k * k


def _se(n, c):
    hidden = max(16, c // 8)
    return n * c + 2 * c * hidden, 2 * c * hidden + hidden + c


def _rep_block(n, c, k, r, layer_scale):
    """(flops, params) of a deployed RepConvBlock on n pixels."""
    hid = c * r
    se_f, se_p = _se(n, c)
    flops = (_conv(n, c, c, 3, c) + 5 * n * c + _conv(n, c, c, k, c) + 2 * n * c + se_f
             + _conv(n, c, hid) + _conv(n, hid, hid, 3, hid) + _conv(n, hid, c) + (n * c if layer_scale else 0))
    params = ((9 * c + c) + 2 * c + (k * k * c + c) + 2 * c + se_p + (c * hid + hid) + (9 * hid + hid)
              + 2 * hid + (hid * c + c) + (2 * c if layer_scale else 0))
    return flops, params


def _contmix_mixer(n, dim, ctx, k, groups):
    """(flops, params) of ContMix's kernel generation + aggregation as implemented (weight_proj folded)."""
    taps = k * k + S * S
    d = dim // 2 // groups
    flops = (_conv(n, dim, dim // 2) + 2 * n * dim // 2                            # weight_query conv + BN
             + n * ctx + _conv(REGIONS, ctx, dim // 2) + 2 * REGIONS * dim // 2   # weight_key pool conv BN
             + groups * taps * REGIONS * d + groups * taps * d * n                 # the two folded matmuls
             + n * dim // 2 * (S * S + k * k))                                    # aggregation: k*k per output
    params = (dim * dim // 2 + dim + ctx * dim // 2 + dim + REGIONS * taps + taps
              + groups * ((2 * S - 1) ** 2 + (2 * k - 1) ** 2))
    return flops, params


def _contmix_block(n, dim, ctx, k, groups, r, is_first):
    out, hid = dim + ctx, dim * r
    mix_f, mix_p = _contmix_mixer(n, dim, ctx, k, groups)
    se_f, se_p = _se(n, dim)
    flops = ((0 if is_first else 2 * n * ctx) + _conv(n, out, out, 3, out) + 5 * n * out
             + _conv(n, out, out, 3, out) + 2 * n * out + _conv(n, out, dim)               # fusion
             + _conv(n, dim, dim) + 2 * n * dim + _conv(n, dim, dim, k, dim) + 2 * n * dim  # gate, lepe
             + mix_f + _conv(n, dim, dim) + 2 * n * dim + se_f                            # dyconv_proj, se
             + 2 * n * dim + _conv(n, dim, out) + n * out                                  # proj, ls1
             + _conv(n, out, out, 3, out) + 5 * n * out + _conv(n, out, hid)               # dwconv2 norm2 mlp
             + _conv(n, hid, hid, 3, hid) + _conv(n, hid, out) + n * out)                  # ... ls2
    params = ((0 if is_first else 4 * ctx) + 10 * out + 2 * out + (9 * out + out) + 2 * out + (out * dim + dim)
              + 2 * dim + dim * dim + 2 * dim + (k * k * dim + dim) + 2 * dim + mix_p + dim * dim + 2 * dim
              + se_p + 2 * dim + (dim * out + out) + 2 * out + 10 * out + 2 * out + (out * hid + hid)
              + (9 * hid + hid) + 2 * hid + (hid * out + out) + 2 * out)
    return flops, params


def _tiny_imagenet_count(size, num_classes=10, projection=32):
    """(flops, params) of the deployed tiny ImageNet model (aux head excluded) on a size x size image."""
    e, ks, r = TINY['embed_dim'], TINY['kernel_size'], TINY['mlp_ratio']
    ctx, groups = e[3] // 4, [2 * h for h in TINY['sub_num_heads']]
    n = [(size // 4 // 2 ** i) ** 2 for i in range(4)]
    half = e[0] // 2
    flops = (_conv(n[0] * 4, 3, half, 3) + 2 * n[0] * 4 * half + _conv(n[0] * 4, half, half, 3)
             + 2 * n[0] * 4 * half + _conv(n[0], half, e[0], 3) + 2 * n[0] * e[0] + _conv(n[0], e[0], e[0], 3)
             + 2 * n[0] * e[0])
    params = 27 * half + 2 * half + 9 * half * half + 2 * half + 9 * half * e[0] + 2 * e[0] + 9 * e[0] ** 2 + 2 * e[0]
    for i in range(4):
        if i:   # patch_embed2-4: 3x3 s2 conv + BN
            flops += _conv(n[i], e[i - 1], e[i], 3) + 2 * n[i] * e[i]
            params += 9 * e[i - 1] * e[i] + 2 * e[i]
        f, p = _rep_block(n[i], e[i], ks[i], r, layer_scale=i >= 2)
        flops, params = flops + f, params + p
    flops += _conv(n[3], e[3], ctx) + 4 * n[2] * ctx                  # high_level_proj, resize to stage 3
    params += e[3] * ctx + ctx
    f, p = _contmix_block(n[2], e[2], ctx, ks[2], groups[0], TINY['sub_mlp_ratio'], is_first=True)
    flops, params = flops + f, params + p
    flops += _conv(n[3], e[2], e[3], 3) + 2 * n[3] * e[3] + _conv(n[3], ctx, ctx, 3) + 2 * n[3] * ctx
    params += 9 * e[2] * e[3] + 2 * e[3] + 9 * ctx * ctx + 2 * ctx   # patch_embedx x_proj, h_proj
    f, p = _contmix_block(n[3], e[3], ctx, ks[3], groups[1], TINY['sub_mlp_ratio'], is_first=False)
    flops, params = flops + f, params + p
    fused = e[3] + ctx                                                # main head
    flops += _conv(n[3], fused, projection) + 2 * n[3] * projection + n[3] * projection + projection * num_classes
    params += fused * projection + 2 * projection + projection * num_classes + num_classes
    return flops, params


# ------------------------------------------------------------------------------------------------ get_flops
def test_contmix_aggregation_and_kernel_generation_hand_count():
    dim, ctx, k, groups, h, w = 16, 8, 7, 2, 9, 11
    mixer = ContMix(dim, ctx, kernel_size=k, smk_size=S, num_groups=groups).eval()
    x, context = torch.randn(1, dim, h, w), torch.randn(1, ctx, h, w)
    n, d, taps = h * w, dim // 2 // groups, k * k + S * S

    ours = analyze_complexity(mixer, (x, context), parts=())
    assert ours.flops_by_operator['na2d_av'] == n * dim // 2 * (S * S + k * k)
    assert ours.flops_by_operator['matmul'] == groups * taps * REGIONS * d + groups * taps * d * n
    assert ours.flops == _contmix_mixer(n, dim, ctx, k, groups)[0]
    assert ours.params == _contmix_mixer(n, dim, ctx, k, groups)[1]

    official = analyze_complexity(mixer, (x, context), parts=(), convention='official')
    # query^T key; mmengine reads numpy's einsum_path cost, printed to 4 significant digits
    assert official.flops_by_operator['einsum'] == pytest.approx(groups * n * REGIONS * d, rel=1e-3)
    assert official.flops_by_operator['conv'] - ours.flops_by_operator['conv'] == groups * n * REGIONS * taps
    assert 'matmul' not in official.flops_by_operator

    # mmengine's own counter (what the get_flops.py tools of mmdet, mmseg and mmpretrain call) counts the same:
    # ``import mmoverlock`` added the op's rule to its defaults, and the traced ContMix matmuls broadcast nothing
    plain = FlopAnalyzer(mixer, (x, context))
    plain.unsupported_ops_warnings(False)
    assert plain.total() == ours.flops and plain.by_operator()['na2d_av'] == ours.flops_by_operator['na2d_av']
    assert 'mmoverlock::na2d_av' not in plain.unsupported_ops()


def _state(model):
    """Everything of every module's ``vars`` (hook dicts and parameter dicts copied, so that a change shows)."""
    return {name: {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(m).items()}
            for name, m in model.named_modules()}


def test_counting_leaves_the_model_untouched():
    """Nothing is patched while counting: the same outputs, the same module state and flags before and after."""
    block = ContMixBlock(16, 8, kernel_size=7, smk_size=S, num_groups=2).eval()
    nn.init.normal_(block.rpb2)
    x, h = torch.randn(2, 16, 9, 11), torch.randn(2, 8, 9, 11)
    with torch.no_grad():
        expected = block(x, h)
    before = _state(block)
    for convention in ('implemented', 'official'):
        report = analyze_complexity(block, (x, h), parts=('ls1', 'dyconv_proj'), convention=convention)
        assert report.parts['ls1'][0] == x.shape[0] * (16 + 8) * 9 * 11     # LayerScale: one per element
    assert _state(block) == before
    with torch.no_grad():
        for got, want in zip(block(x, h), expected):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    block.train()
    analyze_complexity(block, (x, h), parts=())
    assert all(m.training for m in block.modules())                       # training flags restored
    with pytest.raises(ValueError, match="convention='paper'"):
        analyze_complexity(block, (x, h), convention='paper')


def test_tiny_imagenet_model_equals_hand_count():
    model, task = build_model(imagenet_model_cfg(TINY, num_classes=10, projection=32), task='cls')
    report = measure(model, task, shape=(160, 160))
    flops, params = _tiny_imagenet_count(160)
    assert report.params == params
    assert report.flops == flops
    assert report.parts['head'][1] == 40 * 32 + 2 * 32 + 32 * 10 + 10     # the main head; aux left out
    assert report.parts['backbone'][1] + report.parts['head'][1] == params
    assert not any('na2d_av' in op or 'matmul' in op for op in report.unsupported_ops)


def test_train_form_counts_the_reparam_branches():
    model, task = build_model(imagenet_model_cfg(TINY, num_classes=10, projection=32), task='cls')
    train = measure(model, task, shape=(160, 160), deploy=False)
    flops, params = _tiny_imagenet_count(160)
    # K=5 DilatedReparamBlock in training form: 5x5 (no bias) + BN and branches 3x3 r1, 3x3 r2, each + BN;
    # deployed: one 5x5 conv with bias. One per RepConvBlock (stages 1-4) and per ContMix block (lepe).
    n = [(160 // 4 // 2 ** i) ** 2 for i in range(4)]
    sites = [(n[i], TINY['embed_dim'][i]) for i in range(4)] + [(n[2], TINY['embed_dim'][2]),
                                                                (n[3], TINY['embed_dim'][3])]
    assert train.params == params + sum(2 * c + 2 * (9 * c + 2 * c) - c for _, c in sites)
    assert train.flops == flops + sum(2 * m * c + 2 * (9 * m * c + 2 * m * c) for m, c in sites)


def test_deploy_is_idempotent_and_outputs_match():
    model, _ = build_model(imagenet_model_cfg(TINY, num_classes=10, projection=32), task='cls')
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x, mode='tensor')
        deploy_(deploy_(model))
        torch.testing.assert_close(model(x, mode='tensor'), before, rtol=1e-4, atol=1e-5)


def test_get_flops_cli_rejects_bad_input(capsys):
    get_flops = _tool('get_flops')
    with pytest.raises(SystemExit):
        get_flops.main([])                     # neither CONFIG nor --arch
    with pytest.raises(SystemExit):
        get_flops.main(['--arch', 'q'])
    assert "invalid choice: 'q'" in capsys.readouterr().err


def test_build_model_drops_the_checkpoint(tmp_path):
    """A config whose backbone points at an unreachable checkpoint builds and counts without loading it."""
    cfg_file = tmp_path / 'tiny_cls.py'
    cfg_file.write_text(
        "default_scope = 'mmpretrain'\n"
        "custom_imports = dict(imports=['mmoverlock'], allow_failed_imports=False)\n"
        f"model = {imagenet_model_cfg(TINY, num_classes=10, projection=32)!r}\n"
        "model['backbone']['init_cfg'] = dict(type='Pretrained', checkpoint='/nonexistent/overlock.pth')\n")
    get_flops = _tool('get_flops')
    report = get_flops.main([str(cfg_file), '--shape', '64'])   # stage 4 is 2x2: the small-map path runs
    assert report.params == _tiny_imagenet_count(64)[1]
    # bilinear resizes: ctx_up to stage 3 (4x4, 8 ch), then both ContMix maps (4x4 and 2x2, under K=5) to 5x5:
    # x (32 ch) and [query source, context] (32 + 8 ch), 4 FLOPs per output element
    assert report.flops_by_operator['upsample_bilinear2d'] == 4 * 16 * 8 + 2 * 4 * 25 * (32 + 32 + 8)


# ------------------------------------------------------------------------------------------ collect_results
def _fake_run(work_dir, stamp, *, test=None, val=None, log_lines=(), model_type=None):
    """One mmengine run folder: <stamp>.json (test), vis_data/scalars.json (val), <stamp>.log, config."""
    run = osp.join(work_dir, stamp)
    os.makedirs(osp.join(run, 'vis_data'), exist_ok=True)
    if test is not None:
        with open(osp.join(run, f'{stamp}.json'), 'w') as f:
            json.dump(test, f)
    if val is not None:
        from mmengine.visualization import LocalVisBackend
        backend = LocalVisBackend(save_dir=osp.join(run, 'vis_data'))
        backend.add_scalars({'lr': 1e-4, 'loss': 1.0}, step=10)       # a training line: no metrics
        for step, scalars in enumerate(val, start=1):
            backend.add_scalars(scalars, step=step, file_path=f'{stamp}.json')
    with open(osp.join(run, f'{stamp}.log'), 'w') as f:
        f.write('\n'.join(log_lines) + '\n')
    if model_type is not None:
        with open(osp.join(run, 'vis_data', 'config.py'), 'w') as f:
            f.write(f"model = dict(type='{model_type}', module=dict(type='EncoderDecoder'))\n")


def _row(text, label, backbone, method):
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip('|').split('|')]
        if cells[:3] == [method, backbone, 'official']:
            if label == 'official':
                return cells
            return [c.strip() for c in lines[i + 1].strip('|').split('|')]
    raise AssertionError(f'no row {method} / {backbone} in\n{text}')


def test_collect_results_tables(tmp_path):
    det = tmp_path / 'mask_rcnn_overlock_t_1x_coco'
    coco = {'coco/bbox_mAP': 0.481, 'coco/bbox_mAP_50': 0.702, 'coco/bbox_mAP_75': 0.529,
            'coco/segm_mAP': 0.434, 'coco/segm_mAP_50': 0.671, 'coco/segm_mAP_75': 0.468}
    # training run: two validations (the last one counts) ...
    _fake_run(str(det), '20250101_000000', val=[{'coco/bbox_mAP': 0.300}, {**coco, 'coco/bbox_mAP': 0.479}])
    # ... then a test run, which wins
    _fake_run(str(det), '20250102_000000', test={**coco, 'coco/bbox_mAP_copypaste': '0.481 0.702'})

    seg = tmp_path / 'my_seg_dir'
    _fake_run(str(seg), '20250101_000000', log_lines=[
        '2025/01/01 00:00:00 - mmengine - INFO - Iter(val) [500/500]    aAcc: 82.0000  mIoU: 49.0000  '
        'mAcc: 60.0000  data_time: 0.0100  time: 0.2000',
        '2025/01/01 01:00:00 - mmengine - INFO - Iter(val) [500/500]    aAcc: 83.0000  mIoU: 50.5600  '
        'mAcc: 61.0000  data_time: 0.0100  time: 0.2000'])
    _fake_run(str(seg), '20250103_000000', test={'aAcc': 84.0, 'mIoU': 51.62, 'mAcc': 62.0},
              model_type='SegTTAModel')
    (seg / 'upernet_overlock_t_160k_ade20k.py').write_text('# dumped config\n')   # the runner's config dump

    results = merge([read_work_dir(str(det)), read_work_dir(str(seg))])
    assert set(results) == {'mask_rcnn_overlock_t_1x_coco', 'upernet_overlock_t_160k_ade20k'}
    text = tables(results)
    assert '### ImageNet' not in text                        # no ImageNet run given: no table

    official = _row(text, 'official', 'OverLoCK-T', 'Mask R-CNN 1x')
    assert official[5:] == ['48.3', '', '', '43.3', '', '']
    ours = _row(text, 'ours', 'OverLoCK-T', 'Mask R-CNN 1x')
    assert ours[5:] == ['48.1 (-0.2)', '70.2', '52.9', '43.4 (+0.1)', '67.1', '46.8']
    missing = _row(text, 'ours', 'OverLoCK-S', 'Mask R-CNN 1x')
    assert missing[5:] == [''] * 6                           # not run: blanks, not zeros

    seg_ours = _row(text, 'ours', 'OverLoCK-T', 'UperNet 160k')
    assert seg_ours[5:] == ['50.6 (+0.3)', '51.6']            # ss from the validation log, ms from the TTA test
    moga = [line for line in text.splitlines() if 'MogaNet-B' in line and 'UperNet' in line]
    assert [c.strip() for c in moga[0].strip('|').split('|')] == [
        'UperNet 160k', 'MogaNet-B', 'reported', '73.70', '1050.4', '50.1', '']


def test_collect_results_cli(tmp_path, capsys):
    collect_results = _tool('collect_results')
    empty = tmp_path / 'overlock_t_in1k'
    empty.mkdir()
    text = collect_results.main([str(empty), '--all', '--out', str(tmp_path / 'tables.md')])
    assert '### ImageNet' in text and '### COCO' in text and '### ADE20K' in text
    ours = _row(text, 'ours', 'OverLoCK-T', 'ImageNet-1K 300e')
    assert ours[5] == '' and ours[3] == '33.47'
    assert (tmp_path / 'tables.md').read_text().strip() == text.strip()
    with pytest.raises(SystemExit, match='is not a folder'):
        collect_results.main([str(tmp_path / 'nope')])


def test_reference_table_covers_the_issue_numbers():
    top1 = {r.arch: r.official['top1'] for r in reference.records('cls')}
    assert top1 == {'xt': 82.7, 't': 84.2, 's': 84.8, 'b': 85.1}
    assert sum(1 for r in reference.records('det', competitors=False)) == 9
    # verified release downloads only: Mask R-CNN and UperNet, none for Cascade Mask R-CNN or the competitors
    weights = {r.name: r.weights for r in reference.records('det') + reference.records('seg')}
    assert weights['mask_rcnn_overlock_s_3x_coco'] == RELEASE + 'maskrcnn3x_overlock_small_coco.pth'
    assert weights['upernet_overlock_b_160k_ade20k'] == RELEASE + 'upernet_overlock_base_ade20k.pth'
    assert [n for n, w in weights.items() if w is None] == [
        'cascade_overlock_t_3x_coco', 'cascade_overlock_s_3x_coco', 'cascade_overlock_b_3x_coco',
        'cascade_unireplknet_t_3x', 'cascade_moganet_b_3x', 'upernet_unireplknet_t_160k', 'upernet_moganet_b_160k']
    text = table('seg', {})
    assert '0.0' not in text.replace('1050.4', '')


def test_model_index_zoo_and_readmes_are_generated_from_the_metafiles():
    import yaml
    make_model_index = _tool('make_model_index')
    assert make_model_index.main(['--check']) == []          # committed files == generated from the metafiles
    with open(osp.join(ROOT, 'model-index.yml')) as f:
        imports = yaml.safe_load(f)['Import']
    models = {}
    for path in imports:
        with open(osp.join(ROOT, path)) as f:
            models.update({m['Name']: m for m in yaml.safe_load(f)['Models']})
    assert set(models) == {r.name for r in reference.MODELS}
    for name, model in models.items():
        assert osp.isfile(osp.join(ROOT, model['Config'])), model['Config']
    t = models['overlock_t_in1k']
    assert t['Results'][0]['Metrics'] == {'Top 1 Accuracy': 84.2}
    assert t['Weights'] == 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_t_in1k_224.pth'
    assert t['Metadata']['Parameters'] == 33467000
    mask = models['mask_rcnn_overlock_b_3x_coco']['Results']
    assert [r['Metrics'] for r in mask] == [{'box AP': 51.4}, {'mask AP': 45.3}]
    assert models['mask_rcnn_overlock_b_3x_coco']['Weights'] == RELEASE + 'maskrcnn3x_overlock_base_coco.pth'
    assert 'Weights' not in models['cascade_overlock_b_3x_coco']
    # the deploy form: the release's re-parameterised weights, the same metrics and inference params / FLOPs
    for arch in ('xt', 't', 's', 'b'):
        train, deploy = models[f'overlock_{arch}_in1k'], models[f'overlock_{arch}_in1k_reparam']
        assert deploy['Config'] == f'configs/cls/overlock_{arch}_in1k_reparam.py'
        assert deploy['Weights'] == RELEASE + f'overlock_{arch}_in1k_224_reparam.pth'
        assert deploy['Results'] == train['Results'] and deploy['Metadata'] == train['Metadata']
    assert t['Metadata']['Paper Parameters'] == 33470000 and t['Metadata']['Paper FLOPs'] == 5500000000
    zoo = open(osp.join(ROOT, 'docs', 'model_zoo.md')).read()
    assert RELEASE + 'upernet_overlock_tiny_ade20k.pth' in zoo and '--task seg' in zoo and '--task det' in zoo
    assert '[config](../configs/cls/overlock_b_in1k_reparam.py)' in zoo


def _zoo_copy(tmp_path):
    """The metafiles and generated files in a scratch repository root."""
    generated = [f'configs/{t}/{f}' for t in ('cls', 'det', 'seg') for f in ('metafile.yml', 'README.md')]
    for rel in ['model-index.yml', 'docs/model_zoo.md'] + generated:
        os.makedirs(osp.dirname(tmp_path / rel), exist_ok=True)
        shutil.copy(osp.join(ROOT, rel), tmp_path / rel)
    return tmp_path


def test_make_model_index_writes_only_between_the_markers(tmp_path, monkeypatch, capsys):
    make_model_index = _tool('make_model_index')
    root = _zoo_copy(tmp_path)
    monkeypatch.setattr(make_model_index, 'ROOT', str(root))
    readme = root / 'configs' / 'seg' / 'README.md'
    marked = readme.read_text()
    begin = marked.index(make_model_index.RESULTS_BEGIN)
    end = marked.index(make_model_index.RESULTS_END)
    edited = ('# Title kept\n\nProse before | 0.0\n\n' + marked[begin:end].replace('50.3', '99.9')
              + marked[end:] + '\nProse after.\n')
    readme.write_text(edited)
    (root / 'docs' / 'model_zoo.md').write_text('stale\n')
    with pytest.raises(SystemExit) as failed:
        make_model_index.main(['--check'])
    assert failed.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and 'docs/model_zoo.md' in err[0] and 'configs/seg/README.md' in err[1]
    assert readme.read_text() == edited                                   # --check writes nothing
    assert make_model_index.main([]) == ['docs/model_zoo.md', 'configs/seg/README.md']
    assert readme.read_text() == '# Title kept\n\nProse before | 0.0\n\n' + marked[begin:] + '\nProse after.\n'
    assert make_model_index.main(['--check']) == []
    (root / 'configs' / 'cls' / 'README.md').unlink()                     # a missing README: title and markers
    make_model_index.main([])
    created = (root / 'configs' / 'cls' / 'README.md').read_text()
    assert created.startswith('# ') and make_model_index.RESULTS_BEGIN in created
    metafile = root / 'configs' / 'det' / 'metafile.yml'                 # the metafiles are the source
    metafile.write_text(metafile.read_text().replace('box AP: 48.3', 'box AP: 48.4'))
    with pytest.raises(SystemExit):
        make_model_index.main(['--check'])
    assert capsys.readouterr().err.count('out of date') == 2               # the zoo and configs/det/README.md
    readme.write_text('# no markers\n')
    with pytest.raises(SystemExit, match='needs the line'):
        make_model_index.main(['--check'])


def test_metafile_errors_are_one_line(tmp_path):
    root = _zoo_copy(tmp_path)
    metafile = root / 'configs' / 'det' / 'metafile.yml'
    metafile.write_text(metafile.read_text().replace('box AP: 48.3', 'box mAP: 48.3'))
    with pytest.raises(ValueError, match="mask_rcnn_overlock_t_1x_coco: metric 'box mAP' is not one of"):
        reference.read_metafiles(str(root))
    metafile.write_text(metafile.read_text().replace('Name: mask_rcnn_overlock_t_1x_coco', 'Name: maskrcnn_t'))
    with pytest.raises(ValueError, match="model name 'maskrcnn_t' does not read as"):
        reference.read_metafiles(str(root))


def test_cascade_mask_heads_see_the_first_100_rois():
    from mmoverlock.analysis.models import cascade_mask_rois

    class FakeMaskHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = []

        def forward(self, mask_feats):
            self.seen.append(mask_feats.shape[0])
            return mask_feats[:, :1] * 0 + torch.arange(mask_feats.shape[0], dtype=torch.float).view(-1, 1, 1, 1)

    class FakeCascadeRoIHead(nn.Module):
        """mmdet 3's CascadeRoIHead._mask_forward: RoI features of every RoI -> the stage's mask head."""
        num_stages, with_mask = 3, True

        def __init__(self):
            super().__init__()
            self.mask_head = nn.ModuleList(FakeMaskHead() for _ in range(self.num_stages))

        def _mask_forward(self, stage, x, rois):
            return dict(mask_preds=self.mask_head[stage](torch.zeros(rois.shape[0], 4, 7, 7)))

    model = nn.Module()
    model.roi_head = FakeCascadeRoIHead()
    before = _state(model)
    rois = torch.zeros(1000, 5)
    with cascade_mask_rois(model):
        preds = model.roi_head._mask_forward(0, (), rois)['mask_preds']
    assert model.roi_head.mask_head[0].seen == [100] and preds.shape == (1000, 1, 7, 7)   # tiled back
    assert preds[250, 0, 0, 0].item() == 50.
    assert _state(model) == before                                        # hooks removed, nothing left
    assert model.roi_head._mask_forward(1, (), rois)['mask_preds'].shape[0] == 1000


@pytest.mark.slow
def test_mmengines_counter_as_mmdets_get_flops_calls_it_equals_ours_on_a_detector():
    """mmdet's tools/analysis_tools/get_flops.py is mmengine's ``get_model_complexity_info`` on the model's
    tensor forward (data samples bound with ``functools.partial``), training form: with ``import mmoverlock``'s
    op handles it counts a Mask R-CNN with OverLoCK exactly as ``analyze_complexity`` does (ContMix included)."""
    from functools import partial

    from mmengine.analysis import get_model_complexity_info

    from mmoverlock.analysis.models import dummy_inputs

    from .test_det import TINY as DET_TINY
    from .test_det import TINY_FPN_IN
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'det', 'mask_rcnn_overlock_t_1x_coco.py'))
    cfg.model.backbone.update(arch=DET_TINY, init_cfg=None)
    cfg.model.neck.in_channels = TINY_FPN_IN
    torch.manual_seed(0)
    model, task = build_model(cfg)
    image, samples = dummy_inputs(task, (160, 224))
    ours = analyze_complexity(model, (image, ), parts=(), forward_kwargs=dict(data_samples=samples, mode='tensor'))
    assert ours.flops_by_operator['na2d_av'] > 0
    model.forward = partial(model.forward, data_samples=samples)      # as mmdet's get_flops.py does
    theirs = get_model_complexity_info(model, None, inputs=image, show_table=False, show_arch=False)
    del model.forward
    assert theirs['flops'] == ours.flops
