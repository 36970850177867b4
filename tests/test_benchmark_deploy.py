"""tools/analysis/benchmark_deploy.py: the eager paths of ``--quick`` run for OverLoCK-T and ConvNeXt-T in one
process, each output agrees with fp32 eager within the path's tolerance, and the profile splits the time into op
classes; the ONNX Runtime runner on a small network (a full-size OverLoCK-T's ONNX Runtime session takes about
5 minutes to build on the 2-core CI machine; its export is tests/test_deploy.py's)."""
import math
import os.path as osp
import sys

import pytest
import torch
from torch import nn

from .conftest import ROOT


@pytest.fixture(scope='module')
def benchmark_deploy():
    sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis'))
    try:
        import benchmark_deploy
    finally:
        sys.path.pop(0)
    return benchmark_deploy


@pytest.mark.slow
def test_quick_eager_run_gives_ratios_outputs_within_tolerance_and_a_profile(benchmark_deploy, capsys):
    results = benchmark_deploy.main(['--quick', '--profile', '--threads', '1', '--paths', 'fp32', 'bf16'])
    out = capsys.readouterr().out
    assert 'avx512_bf16 ' in out and 'load average' in out
    assert [(r['threads'], r['path']) for r in results['rows']] == [(1, 'fp32'), (1, 'bf16')]
    for row in results['rows']:
        assert row['overlock_ms'] > 0 and row['convnext_ms'] > 0
        assert math.isclose(row['ratio'], row['overlock_ms'] / row['convnext_ms'])
    assert set(results['errors']) == {(m, p) for m in ('OverLoCK-T', 'ConvNeXt-T') for p in ('fp32', 'bf16')}
    for (name, path), error in results['errors'].items():
        assert error <= benchmark_deploy.TOLERANCE[path], (name, path, error)
    for (name, path), classes in results['profile'].items():
        assert set(classes) == set(benchmark_deploy.OP_CLASSES)
        assert classes['1x1 conv / matmul'] > 0 and classes['depthwise conv'] > 0
        if name.startswith('OverLoCK'):
            assert classes['aggregation'] > 0
        if path == 'bf16':
            assert classes['cast'] > 0
    assert set(results['profile']) == {(m, p) for m in ('OverLoCK-T', 'ConvNeXt-T') for p in ('fp32', 'bf16')}


def test_onnxruntime_runner_matches_eager(benchmark_deploy, tmp_path):
    pytest.importorskip('onnxruntime')
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 7, padding=3, groups=8)).eval()
    images = torch.randn(2, 3, 20, 24)
    with torch.no_grad():
        expected = net(images)
    for path in ('ort', 'ort-fixed'):
        run = benchmark_deploy.make_runner(path, net, images, threads=1, folder=str(tmp_path))
        out = benchmark_deploy.last_output(run())
        assert out.shape == expected.shape
        assert (out - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert sorted(p.name.rsplit('_', 1)[-1] for p in tmp_path.glob('*.onnx')) == ['ort-fixed.onnx', 'ort.onnx']
    eager = benchmark_deploy.make_runner('bf16', net, images, threads=1, folder=str(tmp_path))
    assert (eager().float() - expected).abs().max() <= benchmark_deploy.TOLERANCE['bf16'] * expected.abs().max()


@pytest.mark.parametrize('argv,message', [
    (['--threads', '0'], "--threads 0: must be a number >= 1 or 'all'"),
    (['--batch', '0'], '--batch 0: must be >= 1'),
    (['--warmup', '-1'], '--warmup -1: must be >= 0'),
])
def test_bad_arguments_end_in_one_line(benchmark_deploy, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        benchmark_deploy.parse_args(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)
