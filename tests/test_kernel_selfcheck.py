"""The first-use check of the fused Triton kernels (``mmoverlock.ops.selfcheck``), on CPU, in both lanes.

The ops' CUDA kernels (``na2d_op.cuda_forward`` and its backward, ``depthwise_op.cuda_forward`` and its backward)
are called directly on CPU tensors, the functions the dispatcher calls for CUDA ones. The Triton launchers are
replaced by stand-ins: a *wrong kernel* (an index bug: the attention taps transposed; the weight gradient of the
flipped kernel), a right one (the op's CPU algorithm) or one that raises (a launcher that cannot be built). The
stand-ins run on CPU in both lanes (Triton 2.1's interpreter cannot run the real kernels on CPU:
tests/test_triton21.py); the real kernels are checked under Triton 3's interpreter in the main lane (last test).
"""
import warnings

import pytest
import torch
import torch.nn.functional as F

from mmoverlock.ops import (depthwise_cpu, depthwise_op, na2d_av_reference, na2d_cpu, na2d_op, reference,
                            selection, selfcheck)
from mmoverlock.utils import compat

INTERPRETER = compat.triton_interpreter_active()


@pytest.fixture
def fresh(monkeypatch):
    """No check run yet, the check on, the Triton modules loaded (Triton >= 2.1 in both lanes)."""
    monkeypatch.delenv(selfcheck.ENV_VAR, raising=False)
    for cache in (na2d_op.triton_kernels, na2d_op.warn_no_triton, depthwise_op.triton_kernels):
        cache.cache_clear()
    selfcheck.clear()
    selection.clear_choices()
    assert na2d_op.triton_kernels() is not None and depthwise_op.triton_kernels() is not None
    yield
    selfcheck.clear()
    selection.clear_choices()


class Counted:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def _transposed_taps(attn, value, kernel_size, out=None, tiles=None):
    """A wrong na2d_av forward: tap (a, b) read as (b, a)."""
    b, g, _, h, w = attn.shape
    swapped = attn.reshape(b, g, kernel_size, kernel_size, h, w).transpose(2, 3).reshape(attn.shape)
    return na2d_cpu.forward(swapped.contiguous(), value, kernel_size)


def _cpu_forward(attn, value, kernel_size, out=None, tiles=None):
    return na2d_cpu.forward(attn, value, kernel_size)


def _cpu_backward(grad_out, attn, value, kernel_size, attn_grad=True, value_grad=True, grad_attn=None,
                  grad_value=None, tiles=None):
    return na2d_cpu.backward(grad_out, attn, value, kernel_size, attn_grad, value_grad)


def _inject_na2d(monkeypatch, forward, backward=_cpu_backward):
    kernels = na2d_op.triton_kernels()
    forward, backward = Counted(forward), Counted(backward)
    monkeypatch.setattr(kernels, 'na2d_av_forward', forward)
    monkeypatch.setattr(kernels, 'na2d_av_backward', backward)
    return forward, backward


def _problem(dtype=torch.float32):
    generator = torch.Generator().manual_seed(1)
    attn = torch.randn(2, 2, 9, 7, 8, generator=generator, dtype=torch.float64).softmax(2).to(dtype)
    value = torch.randn(2, 2, 3, 7, 8, generator=generator, dtype=torch.float64).to(dtype)
    want = na2d_av_reference(attn.permute(0, 1, 3, 4, 2), value.permute(0, 1, 3, 4, 2), 3).permute(0, 1, 4, 2, 3)
    return attn, value, want


def _caught(fn):
    """fn's result and the messages of the UserWarnings it gave (the fallback warnings are UserWarnings; the
    interpreter's own numpy deprecations are not)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        result = fn()
    return result, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_a_wrong_kernel_is_caught_and_the_cpu_kernels_run(fresh, monkeypatch):
    """The injected wrong forward fails the check (its error, far above fp32's tolerance, in one warning naming
    kernel, dtype and device); every later call, forward and backward, runs the CPU kernels and is right, and
    the wrong kernel is not called again."""
    forward, backward = _inject_na2d(monkeypatch, _transposed_taps)
    attn, value, want = _problem()
    out, messages = _caught(lambda: na2d_op.cuda_forward(attn, value, 3))
    torch.testing.assert_close(out, want)
    assert len(messages) == 1 and '\n' not in messages[0], messages
    assert messages[0].startswith('mmoverlock: the fused Triton kernels of na2d_av failed their first-use check in '
                                  'float32 on cpu (max relative error ')
    assert messages[0].endswith('> tolerance 1e-05); na2d_av runs its CPU kernels on cpu from now on')
    [result] = selfcheck.results()
    assert (result.kernel, result.dtype, result.device, result.passed) == ('na2d_av', 'float32', 'cpu', False)
    assert result.error > 0.1 and result.ms > 0 and f'{result.error:.3g}' in messages[0]
    calls = forward.calls
    assert calls == len(na2d_op.triton_kernels().check_tiles())           # every checked tile configuration
    grad_out = torch.randn_like(value)
    (grads, again), messages = _caught(lambda: (na2d_op.cuda_backward(grad_out, attn, value, 3, True, True),
                                                na2d_op.cuda_forward(attn, value, 3)))
    assert messages == [] and (forward.calls, backward.calls) == (calls, calls)
    torch.testing.assert_close(again, want)
    expected = na2d_cpu.backward(grad_out, attn, value, 3, True, True)
    for got, exp in zip(grads, expected):
        torch.testing.assert_close(got, exp)
    # the device is distrusted whatever the dtype: float64 is not checked, it runs the CPU kernels too
    torch.testing.assert_close(na2d_op.cuda_forward(attn.double(), value.double(), 3), want.double())
    assert forward.calls == calls and len(selfcheck.results()) == 1


def test_reference_gradients_are_the_gathers_autograd():
    """The check's reference (its gradients by their definitions: it runs below autograd) equals the reference
    gather and its autograd, at a map with clamped borders and interior pixels."""
    attn = torch.randn(2, 2, 25, 9, 11, dtype=torch.float64).softmax(2).requires_grad_()
    value = torch.randn(2, 2, 3, 9, 11, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 2, 3, 9, 11, dtype=torch.float64)
    out = na2d_av_reference(attn.permute(0, 1, 3, 4, 2), value.permute(0, 1, 3, 4, 2), 5).permute(0, 1, 4, 2, 3)
    expected = [out, *torch.autograd.grad(out, (attn, value), grad_out)]
    with torch.no_grad():
        got = reference.na2d_av_reference_with_gradients(attn, value, grad_out, 5)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_right_kernels_pass_and_are_used(fresh, monkeypatch):
    """Right kernels (the op's CPU algorithm standing in) pass in bf16 -- the check run as the dispatcher runs
    the op's CUDA kernel, below autograd -- and the op then runs them; the check runs once per dtype."""
    forward, backward = _inject_na2d(monkeypatch, _cpu_forward)
    attn, value, want = _problem(torch.bfloat16)

    def below_autograd():
        with torch._C._AutoDispatchBelowAutograd():
            return na2d_op.cuda_forward(attn, value, 3)
    out, messages = _caught(below_autograd)
    assert messages == []
    torch.testing.assert_close(out, want, rtol=0, atol=0.02)          # the stand-in sums in bf16
    rounds = len(na2d_op.triton_kernels().check_tiles())
    assert (forward.calls, backward.calls) == (rounds + 1, rounds)           # the check's rounds, then the call
    [result] = selfcheck.results()
    assert result.passed and result.dtype == 'bfloat16' and result.error <= result.tolerance == selfcheck.TOLERANCE[
        torch.bfloat16]
    na2d_op.cuda_backward(torch.ones_like(value), attn, value, 3, True, True)
    assert backward.calls == rounds + 1 and len(selfcheck.results()) == 1    # checked once per dtype


def test_a_kernel_that_raises_is_a_failed_check(fresh, monkeypatch):
    """A launcher that cannot be built (or a kernel that cannot compile) raises inside the check: the op warns
    with the exception's first line and runs the CPU kernels."""
    def broken(*args, **kwargs):
        raise RuntimeError('Triton Error [CUDA]: invalid device context\nsecond line')
    _inject_na2d(monkeypatch, broken)
    attn, value, want = _problem()
    out, messages = _caught(lambda: na2d_op.cuda_forward(attn, value, 3))
    torch.testing.assert_close(out, want)
    assert messages == ['mmoverlock: the fused Triton kernels of na2d_av failed their first-use check in float32 on '
                        'cpu (RuntimeError: Triton Error [CUDA]: invalid device context); na2d_av runs its CPU '
                        'kernels on cpu from now on']


def test_turned_off_the_kernels_run_unchecked(fresh, monkeypatch):
    """MMOVERLOCK_KERNEL_CHECK=0: nothing is checked, the (here wrong) kernels are trusted as they are."""
    monkeypatch.setenv(selfcheck.ENV_VAR, '0')
    forward, _ = _inject_na2d(monkeypatch, _transposed_taps)
    attn, value, want = _problem()
    out, messages = _caught(lambda: na2d_op.cuda_forward(attn, value, 3))
    assert messages == [] and forward.calls == 1 and selfcheck.results() == []
    torch.testing.assert_close(out, _transposed_taps(attn, value, 3))
    assert not torch.allclose(out, want)


def _flipped_weight_grad(x, grad_out, kernel_size, dilation=1, out=None):
    """A wrong depthwise weight gradient: the kernel flipped."""
    pad = dilation * (kernel_size - 1) // 2
    weight = torch.zeros(x.shape[1], 1, kernel_size, kernel_size, dtype=x.dtype)
    grad = depthwise_cpu.conv_backward(grad_out, x, weight, pad, dilation, [False, True, False])[1]
    return grad.flip(-2, -1)


def test_depthwise_wrong_kernel_falls_back_to_pytorch(fresh, monkeypatch):
    """The Triton candidate with a wrong weight gradient: its check fails (one warning), the fixed choice
    'triton' then runs PyTorch's conv and 'auto' no longer offers Triton; the results equal F.conv2d's."""
    kernels = depthwise_op.triton_kernels()
    monkeypatch.setattr(kernels, 'INTERPRET', True)          # the stand-ins run on CPU tensors in both lanes
    monkeypatch.setattr(kernels, 'depthwise_forward', lambda x, w, b=None, d=1, out=None: F.conv2d(
        x, w, b, 1, d * (w.shape[-1] - 1) // 2, d, x.shape[1]))
    monkeypatch.setattr(kernels, 'depthwise_input_grad', lambda g, w, d=1, like=None, out=None: (
        depthwise_cpu.conv_backward(g, g if like is None else like, w, d * (w.shape[-1] - 1) // 2, d,
                                    [True, False, False])[0]))
    wrong = Counted(_flipped_weight_grad)
    monkeypatch.setattr(kernels, 'depthwise_weight_grad', wrong)
    generator = torch.Generator().manual_seed(2)
    x, weight, bias = (torch.randn(*shape, generator=generator) for shape in ((2, 4, 8, 9), (4, 1, 3, 3), (4, )))

    def below_autograd():
        with torch._C._AutoDispatchBelowAutograd():
            return depthwise_op.cuda_forward(x, weight, bias, 2, 'triton')
    y, messages = _caught(below_autograd)
    assert len(messages) == 1 and messages[0].startswith(
        'mmoverlock: the fused Triton kernels of depthwise_conv2d failed their first-use check in float32 on cpu '
        '(max relative error ') and messages[0].endswith(
        "; depthwise_conv2d runs PyTorch's conv (and the FFT weight gradient) on cpu from now on"), messages
    torch.testing.assert_close(y, F.conv2d(x, weight, bias, 1, 2, 2, 4))
    grad_out = torch.randn_like(y)
    grads, messages = _caught(lambda: depthwise_op.cuda_backward(grad_out, x, weight, 2, 'triton', True, True, True))
    expected = depthwise_cpu.conv_backward(grad_out, x, weight, 2, 2, [True, True, True])
    for got, exp in zip(grads, expected):
        torch.testing.assert_close(got, exp)
    assert messages == [] and wrong.calls == 1
    assert set(depthwise_op.forward_candidates(x, weight, bias, 2)) == {'torch'}
    assert set(depthwise_op.weight_grad_candidates(grad_out, x, weight, 2)) == {'torch', 'fft'}


@pytest.mark.skipif(not INTERPRETER, reason="the real kernels run on CPU only under Triton >= 3.0's interpreter "
                                            "(Triton 2.1's cannot run them: tests/test_triton21.py)")
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_the_real_kernels_pass_their_check(fresh, dtype):
    """The fused kernels themselves, under the interpreter: both ops' checks pass in fp32 and bf16, within the
    dtype's tolerance, and the ops then run them."""
    attn, value, want = _problem(dtype)
    out, messages = _caught(lambda: na2d_op.cuda_forward(attn, value, 3))
    x = torch.randn(1, 3, 6, 7, dtype=dtype)
    weight = torch.randn(3, 1, 3, 3, dtype=dtype)
    y, more = _caught(lambda: depthwise_op.cuda_forward(x, weight, None, 1, 'triton'))
    assert messages + more == []
    results = {r.kernel: r for r in selfcheck.results()}
    assert sorted(results) == ['depthwise_conv2d', 'na2d_av']
    for result in results.values():
        assert result.passed and result.dtype == str(dtype)[6:] and 0 <= result.error <= result.tolerance, result
    torch.testing.assert_close(out.double(), want.double(), rtol=0, atol=4 * torch.finfo(dtype).eps)
