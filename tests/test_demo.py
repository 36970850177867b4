"""The demo's pieces: synthetic data, one-image inference, ERF and ContMix kernel pictures (tiny models)."""
import filecmp
import json
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from mmoverlock.analysis import erf as erf_lib
from mmoverlock.demo import report, shapes_data

from .conftest import ROOT, load_tool

demo = load_tool('demo')
infer = load_tool('infer')
visualize_erf = load_tool('analysis/visualize_erf')
visualize_kernels = load_tool('analysis/visualize_kernels')

DET_DEMO = osp.join(ROOT, 'configs', 'demo', 'cascade_overlock_demo_shapes.py')
SEG_DEMO = osp.join(ROOT, 'configs', 'demo', 'upernet_overlock_demo_shapes.py')
TINY_ARCH = dict(depth=[1, 1, 1, 1], sub_depth=[1, 1], embed_dim=[8, 16, 32, 64], kernel_size=[7, 7, 7, 5],
                 mlp_ratio=2, sub_num_heads=[1, 2], sub_mlp_ratio=2)


def tiny_config(tmp_path, base: str, name: str) -> str:
    """A config inheriting ``base`` with the tiny arch (and heads sized for it)."""
    e = TINY_ARCH['embed_dim']
    channels = [e[0], e[1], e[2] + e[3] // 4, e[3] + e[3] // 4]
    if 'upernet' in base:
        heads = (f"decode_head=dict(in_channels={channels}, channels=16), "
                 f"auxiliary_head=dict(in_channels={channels[2]}, channels=8)")
    else:
        heads = f'neck=dict(in_channels={channels})'
    path = tmp_path / name
    path.write_text(f"_base_ = [{base!r}]\n"
                    f"model = dict(backbone=dict(arch=dict(_delete_=True, **{TINY_ARCH!r})), {heads})\n")
    return str(path)


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    """A few demo images (96 px) made twice with one seed and once with another."""
    root = tmp_path_factory.mktemp('shapes')
    counts = [shapes_data.make_demo_data(str(root / name), num_train=4, num_val=3, size=96, seed=seed)
              for name, seed in (('a', 1), ('b', 1), ('c', 2))]
    return root, counts


# ---------------------------------------------------------------------------------------------- data
def test_demo_data_is_deterministic_by_seed(shapes):
    root, counts = shapes
    assert counts[0] == counts[1]
    same = filecmp.dircmp(root / 'a', root / 'b')
    files = ['annotations/instances_training.json', 'annotations/instances_validation.json',
             'images/training/000003.jpg', 'annotations/validation/000002.png']
    match, mismatch, errors = filecmp.cmpfiles(root / 'a', root / 'b', files, shallow=False)
    assert match == files and not mismatch and not errors, same.report()
    assert not filecmp.cmp(root / 'a' / files[2], root / 'c' / files[2], shallow=False)   # another seed


def test_demo_data_is_valid_coco_matching_the_label_maps(shapes):
    from pycocotools.coco import COCO
    root, counts = shapes
    coco = COCO(str(root / 'a' / 'annotations' / 'instances_validation.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(shapes_data.CLASSES)
    assert len(coco.getImgIds()) == counts[0]['validation']['images'] == 3
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == counts[0]['validation']['instances'] >= 3
    for ann in anns:
        info = coco.loadImgs(ann['image_id'])[0]
        labels = cv2.imread(str(root / 'a' / 'annotations' / 'validation' / info['file_name'].replace('.jpg', '.png')),
                            cv2.IMREAD_UNCHANGED)
        assert labels.shape == (96, 96) and labels.dtype == np.uint8 and labels.max() <= len(shapes_data.CLASSES)
        mask = coco.annToMask(ann).astype(bool)
        # the polygon covers the instance's visible pixels, which carry its class in the label map
        assert (labels[mask] == ann['category_id']).mean() > 0.9
        assert abs(mask.sum() - ann['area']) < 0.25 * ann['area']
        x, y, w, h = ann['bbox']
        assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 96 and w > 0 and h > 0
        assert ann['iscrowd'] == 0 and all(len(p) >= 6 and len(p) % 2 == 0 for p in ann['segmentation'])


def test_demo_data_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match='size=16'):
        shapes_data.make_demo_data(str(tmp_path), num_train=1, num_val=1, size=16)


# ---------------------------------------------------------------------------------------------- inference
@pytest.mark.integration
@pytest.mark.parametrize('base, task', [(DET_DEMO, 'det'), (SEG_DEMO, 'seg')])
def test_infer_writes_an_overlay_with_random_weights(tmp_path, shapes, base, task):
    config = tiny_config(tmp_path, base, f'tiny_{task}.py')
    checkpoint = str(tmp_path / 'random.pth')
    demo.save_untrained(config, checkpoint)
    image = str(shapes[0] / 'a' / 'images' / 'validation' / '000000.jpg')
    out = str(tmp_path / 'overlay' / 'out.png')
    summary = infer.main([image, config, checkpoint, '--out', out, '--score-thr', '0', '--device', 'cpu'])
    assert summary['task'] == task
    drawn = cv2.imread(out)
    assert drawn is not None and drawn.shape == (96, 96, 3)
    assert not np.array_equal(drawn, cv2.imread(image))   # something was drawn over the image
    if task == 'det':
        assert summary['instances'] > 0 and all(0 <= label < 4 for label in summary['labels'])
    else:
        assert set(summary['labels']) <= set(range(5))


def test_infer_refuses_a_missing_checkpoint(tmp_path, shapes):
    image = str(shapes[0] / 'a' / 'images' / 'validation' / '000000.jpg')
    with pytest.raises(FileNotFoundError, match='nothing.pth'):
        infer.infer(image, DET_DEMO, str(tmp_path / 'nothing.pth'))


# ---------------------------------------------------------------------------------------------- pictures
@pytest.fixture(scope='module')
def tiny_det(tmp_path_factory):
    return tiny_config(tmp_path_factory.mktemp('tiny'), DET_DEMO, 'tiny_det.py')


@pytest.mark.slow
def test_erf_png_and_mass_fractions(tmp_path, tiny_det):
    out = str(tmp_path / 'erf.png')
    erf = visualize_erf.main([tiny_det, '--stage', '2', '--num-images', '2', '--size', '64', '--out', out])
    assert erf.shape == (64, 64) and (erf >= 0).all() and erf.sum() > 0
    assert cv2.imread(out) is not None
    fractions = erf_lib.mass_square_fractions(erf)
    assert fractions == sorted(fractions) and 0 < fractions[0] <= fractions[-1] <= 1
    scaled = erf_lib.log_scaled(erf)
    assert scaled.max() == pytest.approx(1.0) and scaled.min() >= 0


def test_erf_mass_fractions_of_a_point_and_of_a_flat_map():
    point = np.zeros((33, 33))
    point[16, 16] = 1.
    assert erf_lib.mass_square_fractions(point, (0.5, 0.99)) == [1 / 33, 1 / 33]
    flat = erf_lib.mass_square_fractions(np.ones((33, 33)), (0.99,))
    assert flat == [1.0]


def test_erf_loads_the_backbone_of_a_whole_model_checkpoint(tmp_path, tiny_det):
    checkpoint = str(tmp_path / 'det.pth')
    demo.save_untrained(tiny_det, checkpoint, seed=3)
    state = torch.load(checkpoint, weights_only=True)['state_dict']
    backbone = erf_lib.build_backbone(tiny_det, checkpoint)
    assert torch.equal(backbone.state_dict()['patch_embed1.0.weight'], state['backbone.patch_embed1.0.weight'])


def test_erf_rejects_a_bad_stage(tiny_det):
    with pytest.raises(ValueError, match='--stage 7'):
        visualize_erf.main([tiny_det, '--stage', '7'])


@pytest.mark.slow
def test_kernels_are_softmax_weights_placed_on_their_window(tmp_path, tiny_det):
    out = str(tmp_path / 'kernels.png')
    small, large = visualize_kernels.main([tiny_det, '--block', 'sub_blocks3.0', '--pixel', '0', '63',
                                          '--size', '64', '--out', out])
    assert cv2.imread(out) is not None
    assert small.shape == (2, 5, 5) and large.shape == (2, 7, 7)   # 2 groups = 2 x sub_num_heads[0]
    np.testing.assert_allclose(small.sum(axis=(1, 2)), 1, atol=1e-5)
    np.testing.assert_allclose(large.sum(axis=(1, 2)), 1, atol=1e-5)
    # the top-right pixel's clamped 7x7 window is the map's top-right corner
    canvas = visualize_kernels.window_on_map(large[0], (8, 8), 0, 7)
    assert np.array_equal(canvas[:7, 1:], large[0]) and canvas[7].sum() == 0 and canvas[:, 0].sum() == 0


def test_kernels_reject_an_unknown_block(tiny_det):
    with pytest.raises(ValueError, match='sub_blocks9.0'):
        visualize_kernels.main([tiny_det, '--block', 'sub_blocks9.0', '--size', '64'])


def test_demo_reads_the_metrics_mmengine_logged(tmp_path):
    run = tmp_path / 'test' / '20250101_000000'
    run.mkdir(parents=True)
    (run / '20250101_000000.json').write_text(json.dumps({'coco/bbox_mAP_50': 0.7}))
    (tmp_path / 'test' / '20240101_000000').mkdir()   # an older run is ignored
    assert demo.test_metrics(str(tmp_path / 'test')) == {'coco/bbox_mAP_50': 0.7}


# ---------------------------------------------------------------------------------------------- make demo
@pytest.mark.integration
def test_make_demo_runs_every_phase_at_reduced_size(tmp_path, capsys):
    """tools/demo.py end to end, as `make demo` runs it, on 4 + 2 images with the tiny arch and 1 epoch, training
    in 2 processes (DDP over gloo); the training phase must exit 0 (issue #33)."""
    data = tmp_path / 'data'
    shapes_data.make_demo_data(str(data), num_train=4, num_val=2, size=96)
    config = tiny_config(tmp_path, DET_DEMO, 'tiny_det.py')
    wd = tmp_path / 'demo'
    summary = demo.main(['--config', config, '--data', str(data), '--work-dir', str(wd), '--epochs', '1',
                         '--train-processes', '2'])
    for name in ('untrained', 'trained'):
        assert set(summary[name]) == set(report.AP_KEYS)
        assert all(0 <= v <= 1 for v in summary[name].values())
    for picture in ('curves.png', 'predictions.png', 'erf_untrained.png', 'erf_trained.png', 'kernels_trained.png'):
        assert cv2.imread(str(wd / picture)) is not None, picture
    assert json.loads((wd / 'summary.json').read_text())['trained'] == summary['trained']
    # training started from the very weights the untrained evaluation scored
    train_log = (wd / 'logs' / 'train.log').read_text()
    assert f"Load checkpoint from {wd / 'untrained.pth'}" in train_log and 'Epoch(train) [1][1/1]' in train_log
    assert 'GPU number: 2' in train_log and 'terminate called' not in train_log   # 2 processes, ended cleanly
    assert 'Epoch(test)' in (wd / 'logs' / 'untrained_test.log').read_text()
    # the console: one line per phase and the table, none of the tools' own output
    shown = capsys.readouterr().out
    lines = shown.splitlines()
    assert len(lines) < 25, shown
    for label, progress in (('untrained', '1/1 batches'), ('train', '1/1 iterations'), ('trained', '1/1 batches'),
                            ('pictures', '3/3 steps')):
        assert any(line.startswith(label) and progress in line for line in lines), (label, shown)
    assert 'untrained   trained' in shown and 'Config:' not in shown and 'loss_rpn_cls' not in shown
    assert shown.count('centred square holding 20%') == 2   # the ERF spread, untrained and trained
    row = next(line for line in lines if line.startswith('bbox AP50'))
    assert row.split()[2:] == [f"{summary['untrained']['coco/bbox_mAP_50']:.3f}",
                               f"{summary['trained']['coco/bbox_mAP_50']:.3f}"]


def test_demo_trains_in_processes_as_dist_train_does():
    assert demo.train_command(1) == ['tools/train.py']
    cmd = demo.train_command(2)
    assert cmd[:3] == ['-m', 'mmoverlock.cli.launch', '--nproc_per_node=2']
    assert cmd[-3:] == ['tools/train.py', '--launcher', 'pytorch'] and '--master_addr=127.0.0.1' in cmd
    port = int(next(a for a in cmd if a.startswith('--master_port=')).split('=')[1])
    assert 1024 <= port <= 65535


def test_demo_rejects_zero_epochs(tmp_path):
    with pytest.raises(ValueError, match='--epochs 0'):
        demo.main(['--epochs', '0', '--work-dir', str(tmp_path)])


@pytest.mark.parametrize('options, message', [
    (['--epochs', '0'], 'tools/demo.py: error: --epochs 0: need at least 1'),
    (['--train-processes', '0'], 'tools/demo.py: error: --train-processes 0: need at least 1'),
    (['--config', 'configs/demo/nothing.py'],
     'tools/demo.py: error: --config configs/demo/nothing.py: no such file; the demo detector is '
     'configs/demo/cascade_overlock_demo_shapes.py')])
def test_demo_command_line_mistakes_end_in_one_line(tmp_path, options, message):
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'demo.py'), '--work-dir', str(tmp_path)]
                          + options, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == message, proc.stderr
