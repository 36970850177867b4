"""tools/analysis/gpu_check.py runs its non-Triton rows on a CPU (``--device cpu``) and prints one table."""
import importlib.util
import os.path as osp

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_gpu_check():
    spec = importlib.util.spec_from_file_location('gpu_check', osp.join(ROOT, 'tools', 'analysis', 'gpu_check.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_feature_sizes_follow_the_strided_convs():
    gpu_check = load_gpu_check()
    assert [gpu_check.feature_size(800, s) for s in (4, 8, 16, 32)] == [200, 100, 50, 25]
    assert [gpu_check.feature_size(1333, s) for s in (4, 8, 16, 32)] == [334, 167, 84, 42]


CPU_ARGS = ['--device', 'cpu', '--image', '224', '224', '--batch', '1', '--dtypes', 'fp32', '--warmup', '0',
            '--repeats', '1']


def test_gpu_check_cpu_rows(capsys):
    gpu_check = load_gpu_check()
    rows = gpu_check.main(CPU_ARGS + ['--rows', 'a', 'b', 'd'])
    table = capsys.readouterr().out
    assert table.count('\n| a |') == len([r for r in rows if r['row'] == 'a'])
    by_row = {key: [r for r in rows if r['row'] == key] for key in 'abd'}
    # a: four Focus-Net shapes x five implementations; Triton needs CUDA, the others are timed
    assert len(by_row['a']) == 4 * 5
    for r in by_row['a']:
        if r['impl'] == 'triton':
            assert r['note'] == 'needs CUDA' and 'ms' not in r
        else:
            assert r['ms'] > 0 and r['peak_mib'] is None, r
    assert {r['case'].split(':')[0] for r in by_row['a']} == {'OverLoCK-T stage 3', 'OverLoCK-T stage 4',
                                                              'OverLoCK-S stage 3', 'OverLoCK-S stage 4'}
    # b: ConvNeXt-T and OverLoCK-T training steps in fp32 (AMP needs CUDA), the ratio in OverLoCK's note
    fp32 = [r for r in by_row['b'] if r['dtype'] == 'fp32']
    assert [r['impl'].split(' (')[0] for r in fp32] == ['ConvNeXt-T', 'OverLoCK-T'] and all(r['ms'] > 0 for r in fp32)
    assert 'the time of ConvNeXt-T' in fp32[1]['note']
    assert all(r['note'] == 'AMP needs CUDA' for r in by_row['b'] if r['dtype'] != 'fp32')
    # d: the op and the backbone give bitwise-equal gradients twice
    assert [r['note'] for r in by_row['d']] == ['bitwise equal', 'bitwise equal']


def test_gpu_check_detector_row():
    """Row c: one training iteration of the shipped Cascade Mask R-CNN OverLoCK-T on random data (mmdet and
    mmcv's ops are installed here); ~30 s on one CPU thread, most of it the three 4conv1fc RoI heads."""
    rows = load_gpu_check().main(CPU_ARGS + ['--rows', 'c'])
    assert len(rows) == 1 and rows[0]['ms'] > 0 and 'note' not in rows[0], rows


def test_gpu_check_refuses_cuda_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip('a CUDA device is present')
    with pytest.raises(SystemExit):
        load_gpu_check().main(['--device', 'cuda'])
    assert 'no CUDA device here; use --device cpu' in capsys.readouterr().err
