"""A newcomer's first hour (issue 27): each mistake of a fresh clone without GPU or data sets ends in one line
that names the bad value and the fix, with a non-zero exit status and no traceback, and each recipe of the
README runs. One test (at least) per item of the issue:

1. a python without the environment (tools and shell launchers);
2. no data set (tools/train.py, tools/test.py, tools/dist_train.sh once);
3. a file that is not a checkpoint (random bytes, text, HTML, truncated) in every reader and tool;
4. the README's "Usage in your configs" snippets, trained on tiny data (mmdet's ConvNeXt Cascade config with
   OverLoCK swapped in; our Mask R-CNN with mmdet's ResNet-50), and the ConvNeXt-only settings;
5. tools/infer.py checks a checkpoint as tools/test.py does;
6. (tools/analysis/gpu_check.py: tests/test_gpu_check.py);
7. export_onnx's progress lines and its default second size;
8. the model hub line, parameter counts, one device notice per run, repeated out_indices, demo captions.

In-process where an exit status is a ``SystemExit`` with a message (status 1); a subprocess where the status or
the launcher is the point.
"""
import os
import os.path as osp
import re
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config

import mmoverlock  # noqa: F401  (registers the models; the checkpoint allow-list)
from mmoverlock import OverLoCK
from mmoverlock.checkpoint import read_checkpoint

from .conftest import ROOT, load_tool
from .helpers import empty_checkpoint, exit_message
from .test_det import TINY, TINY_FPN_IN, derive_tiny

ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONWARNINGS='ignore')
MASK_RCNN = osp.join(ROOT, 'configs', 'det', 'mask_rcnn_overlock_t_1x_coco.py')
CASCADE_S = osp.join(ROOT, 'configs', 'det', 'cascade_overlock_s_3x_coco.py')
UPERNET = osp.join(ROOT, 'configs', 'seg', 'upernet_overlock_t_160k_ade20k.py')
README = open(osp.join(ROOT, 'README.md')).read()
CORRUPT = "is corrupt or not a PyTorch checkpoint ("


def run(args, cwd=ROOT, **env):
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=dict(ENV, **env), capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def only_line(output: str) -> str:
    """The output is one line (no traceback, no launcher block): that line."""
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and 'Traceback' not in output, output[-3000:]
    return lines[0]


def tool(name: str):
    return load_tool(name).main


def tiny(config: str, coco: str, dst: str, overlock: bool = True, neck: list = TINY_FPN_IN,
         validate: bool = False) -> str:
    """``config`` on the tiny COCO set (test_det's derive_tiny), validated only with ``validate``."""
    return derive_tiny(config, coco, dst, overlock=overlock, neck=neck, val_interval=1 if validate else 2)


# ============================================================================ 1. which python
@pytest.fixture
def bare_python(tmp_path):
    """A python without the environment: this interpreter without its site-packages (no torch, no mmoverlock)."""
    path = tmp_path / 'python'
    path.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    path.chmod(0o755)
    return str(path)


def test_1_a_python_without_the_environment_says_so_in_one_line(bare_python, tmp_path):
    for script, args in (('train.py', [MASK_RCNN]), ('test.py', [MASK_RCNN, 'x.pth']),
                         ('infer.py', ['a.jpg', MASK_RCNN, 'x.pth'])):
        code, out = run([bare_python, osp.join(ROOT, 'tools', script), *args])
        line = only_line(out)
        assert code == 1 and line.startswith(f"tools/{script}: error: No module named 'mmoverlock'"), out
        assert "run the tools with the environment's python: source .venv/bin/activate" in line
    # the launcher: the interpreter named by PYTHON, checked once before torchrun
    code, out = run(['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), CASCADE_S, '8'], cwd=tmp_path,
                    PYTHON=bare_python)
    assert code == 1 and only_line(out).endswith('or PYTHON=.venv/bin/python tools/dist_train.sh ...'), out
    code, out = run(['bash', osp.join(ROOT, 'tools', 'dist_test.sh'), CASCADE_S, 'x.pth', '8'], cwd=tmp_path,
                    PYTHON='python-that-is-not-there')
    assert code == 1 and 'error: PYTHON=python-that-is-not-there is not a command' in only_line(out), out
    # where a newcomer looks: the Quick start and the launchers' own usage comment
    assert 'source .venv/bin/activate' in README and 'PYTHON=.venv/bin/python tools/dist_train.sh' in README
    assert 'PYTHON=.venv/bin/python tools/dist_train.sh' in open(osp.join(ROOT, 'tools', 'dist_train.sh')).read()


# ============================================================================ 2. no data set
DATA_FIX = ('lay out the data set as configs/det/README.md#data says, or point the config at yours: --cfg-options '
            'train_dataloader.dataset.data_root=DIR val_dataloader.dataset.data_root=DIR val_evaluator.ann_file=FILE')


def test_2_missing_data_is_named_before_anything_is_built(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # a fresh clone's working directory without data/
    train = tool('train')
    start = time.perf_counter()
    message = exit_message(train, MASK_RCNN)
    assert message == f"tools/train.py: error: data not found: train_dataloader.dataset.data_root 'data/coco/' " \
                      f"does not exist; {DATA_FIX}"
    assert time.perf_counter() - start < 15                 # the config is read, nothing is built
    (tmp_path / 'coco').mkdir()                             # a root without the annotations
    message = exit_message(train, MASK_RCNN, '--cfg-options', 'train_dataloader.dataset.data_root=coco/')
    assert "train_dataloader.dataset.ann_file 'coco/annotations/instances_train2017.json' does not exist " \
           "(data_root='coco/')" in message
    # tools/test.py: the test loader of a segmentation config, with its README
    checkpoint = empty_checkpoint(tmp_path, 'ok.pth')
    message = exit_message(tool('test'), UPERNET, checkpoint)
    assert message.startswith("tools/test.py: error: data not found: test_dataloader.dataset.data_root "
                              "'data/ade/ADEChallengeData2016' does not exist; lay out the data set as "
                              "configs/seg/README.md#data says, or point the config at yours: --cfg-options "
                              "test_dataloader.dataset.data_root=DIR"), message
    for task in ('det', 'seg'):   # the anchors named exist
        assert '\n## Data\n' in open(osp.join(ROOT, 'configs', task, 'README.md')).read()


@pytest.mark.integration
def test_2_dist_train_says_it_once_before_starting_processes(tmp_path):
    """The README's 8-process command in a clone without COCO: one line from one process, no torchrun."""
    code, out = run(['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), CASCADE_S, '8'], cwd=tmp_path,
                    PYTHON=sys.executable)
    assert code == 1
    assert only_line(out) == (f"tools/train.py: error: data not found: train_dataloader.dataset.data_root "
                              f"'data/coco/' does not exist; {DATA_FIX}")


# ============================================================================ 3. not a checkpoint
def junk(tmp_path) -> dict:
    """Files a newcomer passes as a checkpoint by mistake."""
    rng = np.random.default_rng(0)
    state = {'state_dict': OverLoCK(TINY).state_dict()}
    torch.save(state, tmp_path / 'full.pth')
    files = {
        'random.pth': b'\x13' + rng.bytes(1023),              # 1 KB of random bytes
        'random_pickle_head.pth': b'\x80\x02' + rng.bytes(1022),   # random bytes past a pickle header
        'notes.txt': b'epoch 12: bbox mAP 0.483\n' * 20,       # a text file
        'page.pth': b'<!DOCTYPE html><html><body>Not Found</body></html>\n',   # an HTML page for a download
        'truncated.pth': (tmp_path / 'full.pth').read_bytes()[:4000],   # a download cut short
        'empty.pth': b'',
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return {name: str(tmp_path / name) for name in files}


def test_3_every_non_checkpoint_file_is_named_corrupt_in_one_line(tmp_path):
    files = junk(tmp_path)
    for name, path in files.items():
        with pytest.raises(ValueError) as err:
            read_checkpoint(path)
        assert str(err.value).startswith(f"checkpoint '{path}' {CORRUPT}") and '\n' not in str(err.value), name
    legacy = tmp_path / 'legacy.pth'     # torch's pre-1.6 format still reads
    torch.save({'w': torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(str(legacy))['w'], torch.ones(2))
    # the tools: before the Runner (test.py), in the converter, in infer.py
    test, convert, infer = tool('test'), tool('convert_official'), tool('infer')
    for name in ('random.pth', 'notes.txt', 'random_pickle_head.pth'):
        path = files[name]
        assert exit_message(test, MASK_RCNN, path).startswith(f"tools/test.py: error: checkpoint '{path}' {CORRUPT}")
        assert exit_message(convert, path, tmp_path / 'out.pth', '--task', 'det').startswith(
            f"tools/convert_official.py: error: checkpoint '{path}' {CORRUPT}")
        assert exit_message(infer, files['page.pth'], MASK_RCNN, path, '--out', tmp_path / 'o.png').startswith(
            f"tools/infer.py: error: checkpoint '{path}' {CORRUPT}")


@pytest.mark.integration
def test_3_test_py_on_random_bytes_exits_1_with_one_line(tmp_path):
    path = junk(tmp_path)['random.pth']
    code, out = run([sys.executable, osp.join(ROOT, 'tools', 'test.py'), MASK_RCNN, path])
    assert code == 1
    assert only_line(out) == (f"tools/test.py: error: checkpoint '{path}' is corrupt or not a PyTorch checkpoint "
                              f"(neither a zip archive nor a pickle)")


# ============================================================================ 4. the README's config recipes
def readme_snippet(index: int) -> str:
    """The ``index``-th python block of the README's 'Usage in your configs'."""
    section = README.split('## Usage in your configs', 1)[1].split('\n## ', 1)[0]
    return re.findall(r'```python\n(.*?)```', section, re.S)[index]


def user_config(tmp_path, index: int, name: str, drop: str = None) -> str:
    """A user's config file: the README's snippet as it stands (``drop``: leave out the statement that starts so);
    a path ``_base_`` points at the shipped file."""
    text = readme_snippet(index).replace("'./mask_rcnn_overlock_t_1x_coco.py'", repr(MASK_RCNN))
    if drop:
        statements = re.split(r'\n(?=\S)', text)
        assert any(s.startswith(drop) for s in statements), drop
        text = '\n'.join(s for s in statements if not s.startswith(drop))
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.integration
def test_4_readme_snippet_swaps_overlock_into_mmdets_convnext_cascade(coco, tmp_path, capsys):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from mmoverlock.engine import check_channels
    config = user_config(tmp_path, 0, 'cascade_convnext_to_overlock.py')
    cfg = Config.fromfile(config)
    assert cfg.model.type == 'CascadeRCNN' and 'LearningRateDecayOptimizerConstructor' not in cfg.pretty_text
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'    # mmdet's ConvNeXt recipe, kept
    # the full-size model of the snippet builds and its neck fits (what ChannelCheckHook checks)
    register_all_modules()
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    assert type(model.backbone).__name__ == 'OverLoCK' and model.backbone.arch['embed_dim'] == [64, 128, 256, 512]
    check_channels(model)
    del model

    train = tool('train')
    runner = train([tiny(config, coco, str(tmp_path / 'tiny.py')), '--work-dir', str(tmp_path / 'work')])
    assert runner.iter == 2 and osp.isfile(tmp_path / 'work' / 'epoch_1.pth')
    notice = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith('tools/train.py: no CUDA')]
    if not torch.cuda.is_available():
        assert notice == ['tools/train.py: no CUDA device: SyncBN -> BN (3 places), AmpOptimWrapper -> '
                          'OptimWrapper (fp32)']

    # the snippet without its optim_wrapper: mmdet's ConvNeXt layer decay, answered in one line
    config = user_config(tmp_path, 0, 'no_optim.py', drop='optim_wrapper')
    assert exit_message(train, config) == (
        "tools/train.py: error: optim_wrapper.constructor='LearningRateDecayOptimizerConstructor' gives layer-wise "
        "lr decay to ConvNeXt / ViT backbones only, not to model.backbone.type='mmoverlock.OverLoCK'; use "
        "constructor='mmoverlock.LearningRateDecayOptimizerConstructor' (mmdet's paramwise_cfg: decay_rate, "
        "decay_type; README, 'Usage in your configs')")
    # the neck left at ConvNeXt-T's channels: the channel check's fix, in one line, before the first iteration
    left = tiny(user_config(tmp_path, 0, 'neck.py'), coco, str(tmp_path / 'tiny_neck.py'),
                neck=[96, 192, 384, 768])
    assert exit_message(train, left, '--work-dir', tmp_path / 'neck') == (
        'tools/train.py: error: model.neck.in_channels=[96, 192, 384, 768] does not match the backbone: '
        f'OverLoCK(out_indices=(0, 1, 2, 3)) gives out_channels={TINY_FPN_IN}; set model.neck.in_channels='
        f'{TINY_FPN_IN}')


@pytest.mark.integration
def test_4_readme_snippet_swaps_resnet50_into_our_recipe(coco, tmp_path):
    config = user_config(tmp_path, 1, 'mask_rcnn_resnet50.py')
    cfg = Config.fromfile(config)
    assert (cfg.model.backbone.type, cfg.model.backbone.depth) == ('ResNet', 50)
    assert cfg.optim_wrapper.optimizer.type == 'AdamW' and 'mmoverlock.ChannelCheckHook' in str(cfg.custom_hooks)
    runner = tool('train')([tiny(config, coco, str(tmp_path / 'tiny.py'), overlock=False),
                            '--work-dir', str(tmp_path / 'work')])
    assert runner.iter == 2 and type(runner.model.backbone).__name__ == 'ResNet'
    assert osp.isfile(tmp_path / 'work' / 'epoch_1.pth')


# ============================================================================ 5. infer.py checks as test.py
@pytest.fixture(scope='module')
def tiny_mask_rcnn(coco, tmp_path_factory):
    """The tiny Mask R-CNN config, its own (random) weights and the weights of another arch."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    tmp = tmp_path_factory.mktemp('tiny_mask_rcnn')
    config = tiny(MASK_RCNN, coco, str(tmp / 'tiny.py'))
    register_all_modules()
    cfg = Config.fromfile(config)
    own, other = tmp / 'own.pth', tmp / 'other_arch.pth'
    torch.save({'state_dict': MODELS.build(cfg.model).state_dict(), 'meta': {}}, own)
    cfg.model.backbone.arch = dict(TINY, embed_dim=[16, 32, 64, 128])
    torch.save({'state_dict': MODELS.build(cfg.model).state_dict(), 'meta': {}}, other)
    return config, str(own), str(other)


def test_5_infer_rejects_what_test_rejects_with_the_same_message(tiny_mask_rcnn, coco, tmp_path):
    config, own, other = tiny_mask_rcnn
    image = osp.join(coco, 'val', '0000.jpg')
    infer, test = tool('infer'), tool('test')
    out = str(tmp_path / 'out.png')
    message = exit_message(infer, image, config, other, '--out', out)
    assert message.startswith(f"tools/infer.py: error: checkpoint '{other}' does not fit this model (")
    assert message.split(': error: ')[1] == exit_message(test, config, other).split(': error: ')[1]
    for args in ((tmp_path / 'no.jpg', config, own), (image, config, tmp_path / 'no.pth')):
        message = exit_message(infer, *args, '--out', out)
        missing = [str(a) for a in args if not osp.exists(str(a))][0]
        assert re.match(rf"tools/infer\.py: error: (image|checkpoint) '{re.escape(missing)}' does not exist; expected",
                        message), message
    assert not osp.exists(out)
    summary = infer([image, config, own, '--out', out, '--score-thr', '0'])   # its own weights: drawn
    assert summary['task'] == 'det' and cv2.imread(out) is not None


@pytest.mark.integration
def test_5_infer_mismatched_checkpoint_exits_1_with_one_line(tiny_mask_rcnn, coco, tmp_path):
    config, _, other = tiny_mask_rcnn
    code, out = run([sys.executable, osp.join(ROOT, 'tools', 'infer.py'), osp.join(coco, 'val', '0000.jpg'), config,
                     other, '--out', tmp_path / 'out.png'])
    assert code == 1 and not osp.exists(tmp_path / 'out.png')
    assert only_line(out).startswith(f"tools/infer.py: error: checkpoint '{other}' does not fit this model (")


# ============================================================================ 7. export progress
def test_7_export_says_each_phase_with_its_time_and_checks_half_the_size(tmp_path, capsys):
    pytest.importorskip('onnxruntime')
    arch = dict(depth=[1, 1, 1, 1], sub_depth=[1, 1], embed_dim=[8, 16, 32, 48], kernel_size=[7, 5, 5, 5],
                mlp_ratio=[2, 2, 2, 2], sub_num_heads=[1, 1], sub_mlp_ratio=[2, 2])
    cfg = tmp_path / 'tiny_seg.py'
    cfg.write_text(
        "default_scope = 'mmseg'\n"
        "custom_imports = dict(imports=['mmoverlock'], allow_failed_imports=False)\n"
        "model = dict(type='EncoderDecoder', data_preprocessor=dict(type='SegDataPreProcessor'),\n"
        f"    backbone=dict(type='mmoverlock.OverLoCK', arch={arch!r}, out_indices=(0, 1, 2, 3)),\n"
        "    decode_head=dict(type='FCNHead', in_channels=44, channels=8, num_convs=1,\n"
        "        in_index=2, num_classes=3, norm_cfg=dict(type='BN', requires_grad=True)))\n")
    onnx_file = tmp_path / 'm.onnx'
    results = tool('deployment/export_onnx')([str(cfg), 'none', '--shape', '96', '160', '--out', str(onnx_file)])
    assert [r['shape'] for r in results] == [(96, 160), (48, 80)]    # the help's default: half the export size
    lines = capsys.readouterr().out.splitlines()
    seconds = r'in \d+\.\d s'
    expected = [r'building the model of .*tiny_seg\.py \(weights: none\) \.\.\.$',
                rf'model built and re-parameterised {seconds}$',
                r'exporting to .*m\.onnx at 1x3x96x160 \(opset 17.*\.\.\.$',
                rf'exported .*m\.onnx \(\d+\.\d MB\) {seconds}$',
                rf'loaded into onnxruntime {seconds}$',
                r'checking onnxruntime vs PyTorch at 96x160 \.\.\.$',
                rf'onnxruntime vs PyTorch at 96x160: max abs error .* {seconds}$',
                r'checking onnxruntime vs PyTorch at 48x80 \.\.\.$',
                rf'onnxruntime vs PyTorch at 48x80: max abs error .* {seconds}$']
    ours = [ln for ln in lines if ln.startswith('export_onnx: ')]
    assert len(ours) == len(expected), lines
    for line, pattern in zip(ours, expected):
        assert re.match('export_onnx: ' + pattern, line), (line, pattern)
    for r in results:
        assert r['max_abs_err'] <= 1e-4 * max(1., r['output_scale']), r
    with pytest.raises(SystemExit):
        tool('deployment/export_onnx')(['--help'])
    assert 'default: half the export size' in ' '.join(capsys.readouterr().out.split())


# ============================================================================ 8. the smaller points
def test_8_model_hub_and_parameter_counts_are_said_where_users_look():
    import mmpretrain

    import mmoverlock.models.mmpretrain  # noqa: F401  (what the README's model-hub line says to import)
    assert "`import mmoverlock.models.mmpretrain`" in README and "mmpretrain.list_models('overlock*')" in README
    assert 'overlock_xt_in1k' in mmpretrain.list_models('overlock*')
    # the README's counts, per variant: what get_model builds (train form, aux head) and what the tables count
    said = re.search(r'with that head: ([\d. /]+) M parameters for ([\d. /]+) M in the', ' '.join(README.split()))
    built, tabled = ([float(v) for v in group.split(' / ')] for group in said.groups())
    model = mmpretrain.get_model('overlock_xt_in1k')
    total = sum(p.numel() for p in model.parameters()) / 1e6
    aux = sum(p.numel() for p in model.head.aux_head.parameters()) / 1e6
    model.backbone.switch_to_deploy()
    deployed = sum(p.numel() for p in model.parameters()) / 1e6 - aux
    assert (round(total, 2), round(deployed, 2)) == (built[0], tabled[0]) == (17.31, 16.45)
    assert f'| OverLoCK-XT | [config](configs/cls/overlock_xt_in1k.py) | {tabled[0]:.2f} |' in README
    for variant, count in zip(('T', 'S', 'B'), tabled[1:]):   # the other variants: the tables' own numbers
        assert f'| OverLoCK-{variant} | [config](configs/cls/overlock_{variant.lower()}_in1k.py) | {count:.2f} |' \
            in README


def test_8_the_device_notice_is_printed_by_the_first_process_only(coco, tmp_path, monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip('the notice is about running without CUDA')
    config = tiny(CASCADE_S, coco, str(tmp_path / 'tiny_cascade.py'))   # SyncBN in its RoI heads
    train = load_tool('train')
    printed = {}
    for rank in ('0', '1'):   # what torchrun sets in each process
        monkeypatch.setenv('RANK', rank)
        train.build_cfg(train.parse_args([config]))
        printed[rank] = capsys.readouterr().out
    assert re.fullmatch(r'tools/train\.py: no CUDA device: SyncBN -> BN \(\d+ places\)\n', printed['0'])
    assert printed['1'] == ''


def test_8_repeated_out_indices_are_refused():
    with pytest.raises(ValueError) as err:
        OverLoCK(TINY, out_indices=(3, 3))
    assert str(err.value) == 'OverLoCK: out_indices=(3, 3) repeats [3]; name each map once, e.g. out_indices=(3,)'


def test_8_demo_pictures_say_how_to_read_them(tmp_path):
    from mmoverlock.demo import report  # the demo's figures (tools/demo.py calls them)
    overlays = tmp_path / 'overlays'
    overlays.mkdir()
    for i in range(2):
        cv2.imwrite(str(overlays / f'{i}.png'), np.full((60, 200, 3), 90, np.uint8))
    out = report.montage(str(overlays), str(tmp_path / 'predictions.png'))
    picture = cv2.imread(out)
    band = picture.shape[0] - 120
    assert picture.shape[1] == 200 and band > 0
    assert (picture[:band] < 128).any() and (picture[:band] == 255).mean() > 0.7   # dark text on a white band
    assert 'LEFT = ground truth, RIGHT = ' in report.PREDICTIONS_CAPTION
    erf = tmp_path / 'erf.png'
    cv2.imwrite(str(erf), np.full((100, 120, 3), 30, np.uint8))
    report.caption_file(str(erf), report.ERF_CAPTION)
    captioned = cv2.imread(str(erf))
    assert captioned.shape[0] > 100 + 18 * 3 and (captioned[:-100] == 255).mean() > 0.7   # several lines of text
