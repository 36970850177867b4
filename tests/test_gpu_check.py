"""tools/analysis/gpu_check.py runs its non-Triton rows on a CPU (``--device cpu``) and prints one table; rows a, b
and d need no OpenMMLab package beyond mmengine (checked with mmcv, mmdet, mmseg, mmpretrain and pytest blocked
from import, as on a bare GPU machine)."""
import json
import math
import os
import os.path as osp
import shlex
import subprocess
import sys
import warnings

import pytest
import torch

from mmoverlock.analysis import gpu_check

from .conftest import ROOT, load_tool

#: what a bare GPU environment lacks (torch, triton, numpy and mmengine are there)
ABSENT = ('mmcv', 'mmdet', 'mmseg', 'mmpretrain', 'pytest')

# Runs a script as __main__ with some top-level packages made unimportable: argv = packages, script, args.
RUN_WITHOUT = r'''
import importlib.abc, runpy, sys
absent = set(sys.argv[1].split(','))


class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition('.')[0] in absent:
            raise ModuleNotFoundError(f'No module named {name!r} (blocked by the test)', name=name)
        return None


sys.meta_path.insert(0, Absent())
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def load_gpu_check():
    """The tool, a thin command line over :mod:`mmoverlock.analysis.gpu_check`."""
    return load_tool('analysis/gpu_check')


def run_without(absent, args, tmp_path):
    """gpu_check.py run in a fresh interpreter with ``absent`` unimportable; its rows (from --json)."""
    out = tmp_path / 'rows.json'
    script = osp.join(ROOT, 'tools', 'analysis', 'gpu_check.py')
    proc = subprocess.run([sys.executable, '-c', RUN_WITHOUT, ','.join(absent), script, *args, '--json', str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())['rows']


def documented_cpu_command():
    """The CPU command of docs/gpu.md, which the script's docstring gives too."""
    with open(osp.join(ROOT, 'docs', 'gpu.md')) as f:
        lines = [line for line in f if 'gpu_check.py --device cpu' in line]
    assert len(lines) == 1, lines
    command = lines[0].split('#')[0].strip()
    assert command in load_gpu_check().__doc__
    return shlex.split(command)[2:]


def test_feature_sizes_follow_the_strided_convs():
    assert [gpu_check.feature_size(800, s) for s in (4, 8, 16, 32)] == [200, 100, 50, 25]
    assert [gpu_check.feature_size(1333, s) for s in (4, 8, 16, 32)] == [334, 167, 84, 42]


def test_documented_cpu_run_without_openmmlab_packages(tmp_path):
    """The documented CPU command, with mmcv, mmdet, mmseg, mmpretrain and pytest unimportable: rows a, b and d
    run (ConvNeXt-T from torchvision), the op and the backbone give bitwise-equal results twice."""
    args = documented_cpu_command()
    assert args[:2] == ['--device', 'cpu'] and args[args.index('--rows') + 1:] == ['a', 'b', 'd']
    rows = run_without(ABSENT, args, tmp_path)
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
    # b: ConvNeXt-T (torchvision's: mmpretrain is absent) and OverLoCK-T training steps in fp32
    fp32 = [r for r in by_row['b'] if r['dtype'] == 'fp32']
    assert [r['impl'] for r in fp32] == ['ConvNeXt-T (torchvision)', 'OverLoCK-T (detection layout)']
    assert all(r['ms'] > 0 for r in fp32) and 'the time of ConvNeXt-T' in fp32[1]['note']
    assert all(r['note'] == 'AMP needs CUDA' for r in by_row['b'] if r['dtype'] != 'fp32')
    # d: the op and the backbone bitwise equal twice; nothing non-deterministic by design on a CPU
    assert [(r['note'], r['nondeterministic_by_design'], r['ok']) for r in by_row['d']] == [
        ('bitwise equal', [], True)] * 2


def test_convnext_row_skipped_with_its_reason_without_mmpretrain_and_torchvision(tmp_path):
    rows = run_without(ABSENT + ('torchvision', ), ['--device', 'cpu', '--rows', 'b'], tmp_path)
    convnext = [r for r in rows if r['impl'] == 'convnext_t']
    assert len(convnext) == 2 and all('ConvNeXt-T needs mmpretrain or torchvision' in r['note'] for r in convnext)
    assert [r['impl'] for r in rows if 'ms' in r] == ['OverLoCK-T (detection layout)']


def test_small_maps_are_skipped_with_the_reason(capsys):
    """At 128x160 the stride-16 and -32 maps (8x10, 4x5) are smaller than k = 13 and 7: row a says so; row d
    checks the op at a k x k map."""
    rows = gpu_check.main(['--device', 'cpu', '--image', '128', '160', '--rows', 'a'])
    assert [r['note'] for r in rows] == ['skipped: the 8x10 map is smaller than k=13 (use a larger --image)',
                                         'skipped: the 4x5 map is smaller than k=7 (use a larger --image)'] * 2
    op_row = gpu_check.determinism.rows(
        gpu_check.parse_args(['--device', 'cpu', '--image', '128', '160']), torch.device('cpu'))[0]
    assert op_row['case'] == 'na2d_av op, B1 G8 C16 13x13 k13' and op_row['note'] == 'bitwise equal'


def test_nondeterministic_ops_are_named_from_pytorchs_own_warnings():
    """What ``torch.use_deterministic_algorithms(True, warn_only=True)`` reports is collected by name (here two
    reports in PyTorch's wording, one repeated), and the setting is restored."""

    def backward_with_atomics():
        assert torch.are_deterministic_algorithms_enabled()
        for op in ('adaptive_avg_pool2d_backward_cuda', 'upsample_bilinear2d_backward_out_cuda',
                   'adaptive_avg_pool2d_backward_cuda'):
            warnings.warn(f"{op} does not have a deterministic implementation, but you set "
                          f"'torch.use_deterministic_algorithms(True, warn_only=True)'.")
    assert gpu_check.nondeterministic_ops(backward_with_atomics) == [
        'adaptive_avg_pool2d_backward_cuda', 'upsample_bilinear2d_backward_out_cuda']
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.slow
def test_gpu_check_detector_row():
    """Row c: one training iteration of the shipped Cascade Mask R-CNN OverLoCK-T on random data (mmdet and
    mmcv's ops are installed here; ~30 s on one CPU thread, most of it the three 4conv1fc RoI heads): the RPN's
    and all three cascade stages' box, class and mask losses, finite, and the backbone's weights moved."""
    rows = gpu_check.main(['--device', 'cpu', '--rows', 'c'])
    assert len(rows) == 1 and 'note' not in rows[0], rows
    stages = [f's{i}.{name}' for i in range(3) for name in ('loss_bbox', 'loss_cls', 'loss_mask')]
    assert rows[0]['loss_terms'] == sorted(['loss_rpn_bbox', 'loss_rpn_cls', *stages]), rows[0]['loss_terms']
    assert math.isfinite(rows[0]['loss']) and rows[0]['backbone_updated'] is True


def test_gpu_check_refuses_cuda_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip('a CUDA device is present')
    with pytest.raises(SystemExit):
        gpu_check.main(['--device', 'cuda'])
    assert 'no CUDA device here; use --device cpu' in capsys.readouterr().err


def test_a_failing_row_loses_no_finished_row(tmp_path, capsys, monkeypatch):
    """Rows are printed (and the JSON written) as each finishes: a row that raises becomes a 'failed' line,
    the rows before and after it are kept, and the run ends with a one-line non-zero exit."""

    def broken(args, device):
        raise RuntimeError('CUDA error: an illegal memory access was encountered\nmore lines')
    monkeypatch.setitem(gpu_check.ROWS, 'c', broken)
    monkeypatch.setitem(gpu_check.ROWS, 'a', lambda args, device: [dict(row='a', case='first', ms=1.5)])
    monkeypatch.setitem(gpu_check.ROWS, 'd', lambda args, device: [dict(row='d', case='last', note='ok')])
    out_json = tmp_path / 'rows.json'
    with pytest.raises(SystemExit, match=r'row\(s\) c failed'):
        gpu_check.main(['--device', 'cpu', '--rows', 'a', 'c', 'd', '--json', str(out_json)])
    lines = capsys.readouterr().out.splitlines()
    failed = '| c | - | - | - | - | - | failed: RuntimeError: CUDA error: an illegal memory access was encountered |'
    assert lines[-3:] == ['| a | first | - | - | 1.50 | - |  |', failed, '| d | last | - | - | - | - | ok |']
    assert [r['row'] for r in json.loads(out_json.read_text())['rows']] == ['a', 'c', 'd']


def test_training_step_runs_on_this_torch():
    """Row b's step -- AdamW, fused where the torch takes it on the device, and the gradient scaler of
    ``mmoverlock.utils.compat`` -- runs on every torch >= 2.1 (torch.amp.GradScaler arrived in 2.3): the
    parameters move."""
    model = torch.nn.Conv2d(3, 4, 3)
    before = model.weight.detach().clone()
    gpu_check.training_step(model, torch.randn(1, 3, 8, 8), amp=False)()
    assert not torch.equal(before, model.weight)


def test_self_check_row_reports_the_first_use_check():
    """Row f: under Triton 3's interpreter the fused kernels' first-use check runs on the CPU (passed, the error
    within the tolerance, its time); where no interpreter runs them (Triton 2.1) the row says what it needs."""
    from mmoverlock.ops import selfcheck
    from mmoverlock.utils import compat
    try:
        rows = gpu_check.main(['--device', 'cpu', '--rows', 'f'])
    finally:
        selfcheck.clear()
    kernels = [(r['case'].split(' first-use')[0], r['dtype']) for r in rows]
    assert kernels == [('na2d_av', 'fp32'), ('depthwise_conv2d', 'fp32')]
    for r in rows:
        if compat.triton_interpreter_active():
            assert r['ok'] and r['ms'] > 0 and r['note'].startswith('passed; error '), r
        else:
            assert r['note'] == "needs CUDA, or on a CPU Triton's interpreter (TRITON_INTERPRET=1, Triton >= 3.0)"
