"""The version shims of mmoverlock.utils.compat and what they promise on the oldest supported stack (torch 2.1,
Triton 2.1: ``make test-compat``) and on the main one: the ops' registration, the Triton fallback, checkpoint
loading without an allow-list, the autocast / compile queries."""
import os
import os.path as osp
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

from mmoverlock.checkpoint.io import read_checkpoint
from mmoverlock.ops import depthwise_op, na2d_av_reference, na2d_op, triton_na2d_av
from mmoverlock.utils import compat

from .conftest import ROOT
from .test_ops import make

#: each test lane's environment in this checkout -> the lock file that pins its torch
LANE_LOCKS = {'.venv': 'cpu-core.txt', '.venv-compat': 'compat-core.txt'}


def locked_torch(lock: str) -> tuple:
    """The torch version ``requirements/lock/<lock>`` pins."""
    with open(osp.join(ROOT, 'requirements', 'lock', lock)) as f:
        pins = re.findall(r'^torch==([\w.+]+)$', f.read(), re.M)
    assert len(pins) == 1, f'requirements/lock/{lock} pins torch {len(pins)} times'
    return compat.parse_version(pins[0])


def test_the_lane_runs_the_torch_it_claims():
    """Run by one of this checkout's lanes (``make test``: ``.venv``, ``make test-compat``: ``.venv-compat``),
    the tests use the torch that lane's lock file pins; ``make test-compat`` also names it in
    MMOVERLOCK_EXPECT_TORCH (e.g. 2.1), which must be the lock's and the running torch's."""
    expected = os.environ.get('MMOVERLOCK_EXPECT_TORCH')
    lane = next((venv for venv in LANE_LOCKS if osp.realpath(sys.prefix) == osp.realpath(osp.join(ROOT, venv))),
                None)
    if lane is None and not expected:
        pytest.skip(f'run by {sys.prefix}, not by a lane of this checkout ({", ".join(LANE_LOCKS)}), and without '
                    f'MMOVERLOCK_EXPECT_TORCH: no lane claims a torch here')
    if lane is not None:
        locked = locked_torch(LANE_LOCKS[lane])
        assert compat.TORCH_VERSION == locked, (f'{lane} runs torch {torch.__version__}; '
                                                f'requirements/lock/{LANE_LOCKS[lane]} pins {locked}')
    if expected:
        assert compat.TORCH_VERSION[:2] == compat.parse_version(expected)[:2], torch.__version__
        if lane is not None:
            assert compat.parse_version(expected)[:2] == locked_torch(LANE_LOCKS[lane])[:2], expected


@pytest.mark.parametrize('text,version', [('2.1.2+cu121', (2, 1, 2)), ('2.13.0+cpu', (2, 13, 0)),
                                          ('3.0.0', (3, 0, 0)), ('2.6.0a0+git1234', (2, 6, 0)),
                                          ('3.1.0rc1', (3, 1, 0))])
def test_parse_version(text, version):
    assert compat.parse_version(text) == version


def test_registration_follows_the_torch_version():
    """torch >= 2.4 registers autograd and the fake implementation with torch.library; 2.1 autograd through
    an autograd.Function and no fake implementation."""
    assert compat.HAS_REGISTER_AUTOGRAD == (compat.TORCH_VERSION >= (2, 4))
    assert compat.HAS_SAFE_GLOBALS == (compat.TORCH_VERSION >= (2, 4))
    if compat.TORCH_VERSION >= (2, 4):
        assert compat.FAKE_REGISTRATION == 'register_fake'
    elif compat.TORCH_VERSION[:2] == (2, 1):
        assert compat.FAKE_REGISTRATION is None


@pytest.mark.parametrize('op', ['na2d_av', 'depthwise_conv2d'])
def test_ops_differentiate_on_this_torch(op):
    """Through the registered ops (torch.library autograd, or the autograd.Function on torch < 2.4): the
    gradients of the op equal those of the reference in fp64."""
    if op == 'na2d_av':
        attn, value, _ = make((1, 2, 3, 9, 8, 5), requires_grad=True)
        ours = torch.ops.mmoverlock.na2d_av(attn.permute(0, 1, 4, 2, 3), value.permute(0, 1, 4, 2, 3), 5)
        ours = ours.permute(0, 1, 3, 4, 2)
        ref = na2d_av_reference(attn, value, 5)
        inputs = (attn, value)
    else:
        x = torch.randn(2, 4, 9, 9, dtype=torch.float64, requires_grad=True)
        w = torch.randn(4, 1, 5, 5, dtype=torch.float64, requires_grad=True)
        b = torch.randn(4, dtype=torch.float64, requires_grad=True)
        ours = torch.ops.mmoverlock.depthwise_conv2d(x, w, b, 2, 'auto')
        ref = torch.nn.functional.conv2d(x, w, b, 1, 4, 2, 4)
        inputs = (x, w, b)
    grad = torch.randn_like(ref)
    ours_grads = torch.autograd.grad(ours, inputs, grad)
    ref_grads = torch.autograd.grad(ref, inputs, grad)
    torch.testing.assert_close(ours, ref)
    for got, want in zip(ours_grads, ref_grads):
        torch.testing.assert_close(got, want)


def test_triton_unusable_names_the_version_needed():
    assert compat.triton_unusable('na2d_av', '3.6.0') is None
    assert compat.triton_unusable('na2d_av', '2.1.0') is None
    reason = compat.triton_unusable('na2d_av', '2.0.0')
    assert reason == ('na2d_av: triton 2.0.0 is installed; the fused kernels need triton >= 2.1 '
                      '(torch >= 2.1 brings it)')


def test_triton_interpreter_is_triton_3s(monkeypatch):
    """TRITON_INTERPRET=1 runs the kernels on CPU tensors with Triton >= 3.0 only (Triton 2.1 ignores it)."""
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    assert compat.triton_interpreter_active('3.6.0') and not compat.triton_interpreter_active('2.1.0')
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    assert not compat.triton_interpreter_active('3.6.0')


def test_this_lane_runs_the_fused_kernels():
    """Both lanes' Triton (2.1 with torch 2.1, 3.x on the main lane) runs the fused kernels: the ops load them
    without a fallback warning, autotuned on a GPU with the 5 ms / 25 ms budget in the installed Triton's
    spelling (``compat.triton_autotune``)."""
    for cache in (na2d_op.triton_kernels, na2d_op.warn_no_triton, depthwise_op.triton_kernels):
        cache.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert compat.triton_unusable('na2d_av') is None
        kernels = na2d_op.triton_kernels()
        assert kernels is not None and depthwise_op.triton_kernels() is not None
    if os.environ.get('MMOVERLOCK_EXPECT_TORCH') == '2.1':
        assert compat.parse_version(compat.triton_version())[:2] == (2, 1) and not kernels.INTERPRET
    tuned = compat.triton_autotune(kernels.FORWARD_CONFIGS, ['K', 'C'])(kernels.KERNELS['forward'])
    assert tuned.configs == kernels.FORWARD_CONFIGS
    if compat.parse_version(compat.triton_version()) < (3, ):
        assert (tuned.warmup, tuned.rep) == (5, 25)
        assert tuned.key_idx == [tuned.arg_names.index('K'), tuned.arg_names.index('C')]
    else:
        assert tuned.keys == ['K', 'C']
        calls = []
        import triton.testing
        original = triton.testing.do_bench
        try:
            triton.testing.do_bench = lambda fn, **kwargs: calls.append(kwargs) or 1.
            tuned.do_bench(lambda: None)
        finally:
            triton.testing.do_bench = original
        assert calls == [dict(warmup=5, rep=25, quantiles=None)]


def test_grad_scaler_and_fused_adamw_on_this_torch():
    """gpu_check's training step on every torch: a disabled scaler on CPU passes the loss through; torch 2.1 has
    no CPU scaler (a one-line error if one is asked for) and no fused AdamW on CPU."""
    scaler = compat.grad_scaler('cpu', enabled=False)
    loss = torch.tensor(2.)
    assert scaler.scale(loss) is loss and not scaler.is_enabled()
    assert compat.fused_adamw_supported('cuda')
    assert compat.fused_adamw_supported('cpu') == (compat.TORCH_VERSION >= (2, 4))
    if compat.TORCH_VERSION < (2, 3):
        with pytest.raises(ValueError, match=r"torch 2\.1.* has no gradient scaler for 'cpu'"):
            compat.grad_scaler('cpu')


@pytest.fixture
def old_triton(monkeypatch):
    """Triton 2.0 as the ops see it (a patched version string: both lanes' Triton would otherwise be used). The
    ops' cached choices are reset."""
    caches = (na2d_op.triton_kernels, na2d_op.warn_no_triton, depthwise_op.triton_kernels)
    monkeypatch.setattr(compat, 'triton_version', lambda: '2.0.0')
    for cache in caches:
        cache.cache_clear()
    yield compat.triton_version()
    for cache in caches:
        cache.cache_clear()


def test_old_triton_falls_back_to_the_cpu_kernels_once(old_triton):
    """With Triton < 2.1 the CUDA kernel of na2d_av runs the CPU-algorithm kernels (called here directly, on
    CPU tensors: the function the dispatcher calls for CUDA ones) after one one-line warning naming the
    version; depthwise_conv2d keeps PyTorch's conv and the FFT weight gradient as candidates."""
    attn, value, _ = make((1, 2, 3, 9, 8, 5))
    want = na2d_av_reference(attn, value, 5).permute(0, 1, 4, 2, 3)
    attn, value = attn.permute(0, 1, 4, 2, 3).contiguous(), value.permute(0, 1, 4, 2, 3).contiguous()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for _ in range(3):
            torch.testing.assert_close(na2d_op.cuda_forward(attn, value, 5), want)
        grads = na2d_op.cuda_backward(torch.ones_like(value), attn, value, 5, True, True)
    assert [g.shape for g in grads] == [attn.shape, value.shape]
    messages = [str(w.message) for w in caught]
    assert messages == [f'na2d_av: triton {old_triton} is installed; the fused kernels need triton >= 2.1 (torch '
                        f'>= 2.1 brings it); na2d_av runs its CPU kernels on CUDA (slow)'], messages
    with pytest.raises(RuntimeError, match=rf'^na2d_av_triton: triton {old_triton} is installed; .*>= 2\.1'):
        triton_na2d_av(attn, value, 5)
    x, w = torch.randn(1, 4, 8, 8), torch.randn(4, 1, 3, 3)
    with pytest.warns(UserWarning, match=rf'depthwise_conv2d: triton {old_triton} is installed'):
        assert set(depthwise_op.weight_grad_candidates(torch.ones_like(x), x, w, 1)) == {'torch', 'fft'}
    assert set(depthwise_op.forward_candidates(x, w, None, 1)) == {'torch'}


def test_plain_state_dict_loads_safely(tmp_path):
    """A state dict of tensors (nested dicts, numbers, strings) loads with weights_only on every torch."""
    path = str(tmp_path / 'plain.pth')
    state = {'state_dict': {'w': torch.randn(3)}, 'meta': {'epoch': 3, 'note': 'x'}}
    torch.save(state, path)
    got = read_checkpoint(path)
    torch.testing.assert_close(got['state_dict']['w'], state['state_dict']['w'])
    assert got['meta'] == state['meta']


def test_mmengine_checkpoint_loads_with_the_allow_list(tmp_path):
    """mmengine's HistoryBuffer and numpy meta load on every torch: through torch's allow-list (>= 2.4) or the
    restricted unpickler with the same list (older torch, whose weights_only has no allow-list)."""
    path = str(tmp_path / 'mmengine.pth')
    buffer = HistoryBuffer()
    buffer.update(1.5)
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': {'seed': np.int64(3), 'arr': np.arange(3)},
                'message_hub': {'log_scalars': {'loss': buffer}}}, path)
    got = read_checkpoint(path)
    assert got['message_hub']['log_scalars']['loss'].mean() == 1.5
    assert got['meta']['seed'] == 3 and got['meta']['arr'].tolist() == [0, 1, 2]
    assert compat.safe_load_kwargs([])['weights_only'] == compat.HAS_SAFE_GLOBALS


class ArbitraryCode:
    """A class outside the allow-list whose unpickling would run code (create ``path``)."""

    def __init__(self, path):
        self.path = Path(path)

    def __reduce__(self):
        return Path.touch, (self.path, )


@pytest.mark.parametrize('nested', [False, True])
def test_objects_outside_the_allow_list_are_refused(tmp_path, nested):
    """A pickled callable outside the allow-list is refused in one line on every torch, before it runs."""
    path, marker = str(tmp_path / 'evil.pth'), tmp_path / 'code_ran'
    payload = ArbitraryCode(marker)
    torch.save({'state_dict': {'w': torch.ones(1)}, 'x': payload} if nested else payload, path)
    with pytest.raises(ValueError, match=r"evil\.pth' holds objects outside the allow-list .*GLOBAL") as err:
        read_checkpoint(path)
    assert '\n' not in str(err.value) and not marker.exists()


def test_autocast_and_compile_queries():
    """The per-device autocast queries and the compile flag, whatever torch spells them."""
    assert not compat.is_autocast_enabled('cpu') and not compat.is_compiling()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert compat.is_autocast_enabled('cpu') and not compat.is_autocast_enabled('cuda')
        assert compat.autocast_dtype('cpu') == torch.bfloat16
