"""na2d_av: every implementation against a brute-force loop, gradients, memory, errors."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from mmoverlock.ops import (FORWARD_DENSE_MAX_RATIO, NA2D_CPU_PATHS, na2d_av, na2d_av_channels_first,
                            na2d_av_cpu_kernels, na2d_av_reference, na2d_av_unfold, uses_windows)
from mmoverlock.ops.na2d_cpu import taps_forward

from .conftest import needs_fake_impl, needs_opcheck

# (B, G, C, H, W, k): the tap loop (H*W > 4k^2), the dense operator (small maps), the per-window matmuls
# (at most 4 distinct windows: a map of exactly k, one of k + 1).
TAP_CASE = (2, 2, 3, 9, 11, 3)
DENSE_CASE = (1, 2, 3, 6, 7, 5)
EXACT_CASE = (1, 1, 2, 5, 5, 5)
WINDOWS_CASE = (2, 2, 3, 8, 8, 7)
GRADCHECK_TAP_CASE = (1, 1, 2, 9, 9, 3)   # small enough for float64 gradcheck, still the tap loop
# the forward's dense threshold is higher than the backward's: dense forward, tap-loop backward
MIXED_CASE = (1, 2, 3, 7, 8, 3)


def brute_force(attn, value, k):
    """The NATTEN 0.17 definition, one pixel and one tap at a time (NATTEN layout)."""
    b, g, h, w, c = value.shape
    out = torch.zeros_like(value)
    for i in range(h):
        for j in range(w):
            si, sj = min(max(i - k // 2, 0), h - k), min(max(j - k // 2, 0), w - k)
            for a in range(k):
                for bb in range(k):
                    out[:, :, i, j] += attn[:, :, i, j, a * k + bb, None] * value[:, :, si + a, sj + bb]
    return out


def make(case, dtype=torch.float64, requires_grad=False):
    b, g, c, h, w, k = case
    attn = torch.randn(b, g, h, w, k * k, dtype=dtype).softmax(-1).requires_grad_(requires_grad)
    value = torch.randn(b, g, h, w, c, dtype=dtype, requires_grad=requires_grad)
    return attn, value, k


def channels_first(attn, value):
    return attn.permute(0, 1, 4, 2, 3).contiguous(), value.permute(0, 1, 4, 2, 3).contiguous()


@pytest.mark.parametrize('case', [TAP_CASE, DENSE_CASE, EXACT_CASE, WINDOWS_CASE])
def test_all_variants_equal_brute_force(case):
    attn, value, k = make(case)
    expected = brute_force(attn, value, k)
    for fn in (na2d_av, na2d_av_unfold, na2d_av_reference):
        torch.testing.assert_close(fn(attn, value, k), expected, rtol=1e-12, atol=1e-12)
    attn_cf, value_cf = channels_first(attn, value)
    torch.testing.assert_close(na2d_av_channels_first(attn_cf, value_cf, k),
                               expected.permute(0, 1, 4, 2, 3), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('case,path,backward_path', [
    (TAP_CASE, 'taps', 'taps'), (GRADCHECK_TAP_CASE, 'taps', 'taps'), (DENSE_CASE, 'dense', 'dense'),
    (MIXED_CASE, 'dense', 'taps'), (EXACT_CASE, 'windows', 'windows'), (WINDOWS_CASE, 'windows', 'windows')])
def test_each_case_runs_the_kernel_claimed(case, path, backward_path, monkeypatch):
    """The registered op (its autograd node) runs, on CPU, exactly the forward and backward kernel of the
    path each case stands for -- recorded as they run -- and equals brute force; the traced (export) loop
    equals it too."""
    ran = []
    for name, kernels in list(NA2D_CPU_PATHS.items()):
        def spy(kernel, label):
            def run(*args, **kwargs):
                ran.append(label)
                return kernel(*args, **kwargs)
            return run
        monkeypatch.setitem(NA2D_CPU_PATHS, name, (spy(kernels[0], f'{name} forward'),
                                                   spy(kernels[1], f'{name} backward')))
    attn, value, k = make(case, requires_grad=True)
    expected = brute_force(attn, value, k)
    attn_cf, value_cf = (t.detach().requires_grad_() for t in channels_first(attn, value))
    out = na2d_av_channels_first(attn_cf, value_cf, k)
    assert 'mmoverlock_na2d_av' in type(out.grad_fn).__name__
    assert ran == [f'{path} forward']
    out.backward(torch.ones_like(out))
    assert ran == [f'{path} forward', f'{backward_path} backward']
    torch.testing.assert_close(out, expected.permute(0, 1, 4, 2, 3), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(taps_forward(attn_cf, value_cf, k), out)     # the loop ONNX export writes
    brute_force(attn, value, k).backward(torch.ones_like(expected))
    torch.testing.assert_close(attn_cf.grad, attn.grad.permute(0, 1, 4, 2, 3), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(value_cf.grad, value.grad.permute(0, 1, 4, 2, 3), rtol=1e-12, atol=1e-12)


def test_registered_op_and_its_backward():
    """torch.ops.mmoverlock.na2d_av with its schema; the backward op computes only what is asked for."""
    attn, value = channels_first(*make(TAP_CASE)[:2])
    k = TAP_CASE[-1]
    assert 'mmoverlock::na2d_av(Tensor attn, Tensor value, SymInt kernel_size) -> Tensor' in str(
        torch.ops.mmoverlock.na2d_av.default._schema)
    grad = torch.randn(value.shape, dtype=value.dtype)
    grad_attn, grad_value = torch.ops.mmoverlock.na2d_av_backward(grad, attn, value, k, True, False)
    assert grad_attn.shape == attn.shape and grad_value.numel() == 0
    ref_attn = attn.permute(0, 1, 3, 4, 2).detach().requires_grad_()
    out = na2d_av_reference(ref_attn, value.permute(0, 1, 3, 4, 2), k)
    expected = torch.autograd.grad(out, ref_attn, grad.permute(0, 1, 3, 4, 2))[0].permute(0, 1, 4, 2, 3)
    torch.testing.assert_close(grad_attn, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('case', [GRADCHECK_TAP_CASE, DENSE_CASE, WINDOWS_CASE])
def test_gradcheck_float64(case):
    attn, value, k = make(case, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, v: na2d_av(a, v, k), (attn, value))


@pytest.mark.parametrize('case', [TAP_CASE, DENSE_CASE, WINDOWS_CASE])
def test_gradients_match_reference(case):
    attn, value, k = make(case, dtype=torch.float32, requires_grad=True)
    grad = torch.randn(value.shape)
    ours = torch.autograd.grad(na2d_av(attn, value, k), (attn, value), grad)
    ref = torch.autograd.grad(na2d_av_reference(attn, value, k), (attn, value), grad)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


class CopiesOf(TorchDispatchMode):
    """Records every op that copies a tensor sharing ``source``'s memory (clone, copy_ from it, _to_copy):
    what ``.contiguous()``, ``.reshape`` of a non-viewable layout or ``.to`` would add."""

    COPIES = {'aten::clone': 0, 'aten::_to_copy': 0, 'aten::copy_': 1}   # op -> index of the copied argument

    def __init__(self, source: torch.Tensor):
        super().__init__()
        self.storage = source.untyped_storage().data_ptr()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        index = self.COPIES.get(func._schema.name)
        if (index is not None and isinstance(args[index], torch.Tensor)
                and args[index].untyped_storage().data_ptr() == self.storage):
            self.ops.append(func._schema.name)
        return func(*args, **(kwargs or {}))


def test_channel_half_views_need_no_copy():
    """ContMix passes channel halves of one map (non-contiguous views): the tap loop (large maps), forward and
    backward, reads them in place -- no copy of the map -- and the results are unchanged."""
    b, g, c, h, w, k = TAP_CASE
    x = torch.randn(b, 2, g, c, h, w, dtype=torch.float64)
    attn = torch.randn(b, g, k * k, h, w, dtype=torch.float64).softmax(2)
    with CopiesOf(x) as copies:                     # the mode detects a copy when there is one
        x[:, 1].contiguous()
    assert copies.ops == ['aten::clone']
    half = x[:, 1]
    grad = torch.randn(half.shape, dtype=torch.float64)
    cpu_forward, cpu_backward = na2d_av_cpu_kernels()
    with CopiesOf(x) as copies:                     # the op's CPU kernels (the op hides its inner calls)
        out = cpu_forward(attn, half, k)
        grads = cpu_backward(grad, attn, half, k, True, True)
    assert copies.ops == []
    torch.testing.assert_close(out, na2d_av_channels_first(attn, half.contiguous(), k))
    expected = cpu_backward(grad, attn, half.contiguous(), k, True, True)
    for got, exp in zip(grads, expected):
        torch.testing.assert_close(got, exp)


def layouts(layout, case, device='cpu', dtype=torch.float64):
    """attn (B, G, k*k, H, W) and value (B, G, C, H, W), requiring grad, in one of the layouts the op takes:
    contiguous; channels-last (the NATTEN layout permuted, as na2d_av passes it); value the second channel half
    of a (B, G, 2C, H, W) map (a strided view, as ContMix's halves); H and W strides transposed."""
    b, g, c, h, w, k = case
    attn = torch.randn(b, g, k * k, h, w, dtype=dtype, device=device).softmax(2)
    value = torch.randn(b, g, c, h, w, dtype=dtype, device=device)
    if layout == 'channels_last':
        attn, value = (t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3) for t in (attn, value))
    elif layout == 'channel_half':
        value = torch.cat([torch.randn_like(value), value], 2)[:, :, c:]
    elif layout == 'transposed_hw':
        attn, value = (t.transpose(-1, -2).contiguous().transpose(-1, -2) for t in (attn, value))
    else:
        assert layout == 'contiguous', layout
    assert value.is_contiguous() == (layout == 'contiguous')
    return attn.requires_grad_(), value.requires_grad_()


@needs_opcheck
@pytest.mark.parametrize('case', [TAP_CASE, DENSE_CASE, WINDOWS_CASE], ids=['taps', 'dense', 'windows'])
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'channel_half', 'transposed_hw'])
def test_opcheck(case, layout):
    """torch.library.opcheck (schema, fake tensor, autograd registration, AOT dispatch with dynamic shapes)
    passes for every CPU path and input layout."""
    attn, value = layouts(layout, case)
    result = torch.library.opcheck(torch.ops.mmoverlock.na2d_av.default, (attn, value, case[-1]))
    assert set(result.values()) == {'SUCCESS'}, result


@pytest.mark.parametrize('case', [TAP_CASE, DENSE_CASE, WINDOWS_CASE], ids=['taps', 'dense', 'windows'])
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'channel_half', 'transposed_hw'])
def test_contiguous_outputs(case, layout):
    """For every CPU path and input layout the output and both gradients are contiguous."""
    attn, value = layouts(layout, case)
    k = case[-1]
    out = na2d_av_channels_first(attn, value, k)
    grads = torch.autograd.grad(out, (attn, value), torch.randn(out.shape, dtype=out.dtype))
    assert out.is_contiguous() and all(g.is_contiguous() for g in grads)   # (what the op returns, not .grad)


def test_mixed_dtypes_one_rule_on_every_path():
    """The public functions promote mixed dtypes to the wider one (as autocast's promote policy); the op
    itself -- CPU kernel and backward (the fake implementation: the next test) -- raises one one-line error
    naming both dtypes; a non-float dtype is refused the same way."""
    for case in (TAP_CASE, DENSE_CASE, WINDOWS_CASE):
        attn, value, k = make(case, dtype=torch.float32)
        attn_cf, value_cf = channels_first(attn, value)
        value16 = value_cf.to(torch.bfloat16)
        out = na2d_av_channels_first(attn_cf, value16, k)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, na2d_av_channels_first(attn_cf, value16.float(), k))
        assert na2d_av(attn, value.to(torch.bfloat16), k).dtype == torch.float32
        assert na2d_av_reference(attn, value.to(torch.bfloat16), k).dtype == torch.float32
        message = 'attn is torch.float32 and value is torch.bfloat16; the op takes one dtype'
        with pytest.raises(ValueError, match=message):
            torch.ops.mmoverlock.na2d_av(attn_cf, value16, k)
        with pytest.raises(ValueError, match=message):
            torch.ops.mmoverlock.na2d_av_backward(value16, attn_cf, value16, k, True, True)
    with pytest.raises(ValueError, match='dtype torch.int64 is not supported; use float16, bfloat16'):
        na2d_av_channels_first(attn_cf.long(), value_cf.long(), k)


@needs_fake_impl
def test_fake_implementation_refuses_mixed_dtypes():
    """The fake implementation (what torch.compile and CUDA graphs see) raises the kernels' one-line error."""
    message = 'attn is torch.float32 and value is torch.bfloat16; the op takes one dtype'
    for case in (TAP_CASE, DENSE_CASE, WINDOWS_CASE):
        attn, value, k = make(case, dtype=torch.float32)
        attn_cf, value16 = channels_first(attn, value.to(torch.bfloat16))
        with FakeTensorMode() as mode, pytest.raises(ValueError, match=message):
            torch.ops.mmoverlock.na2d_av(mode.from_tensor(attn_cf), mode.from_tensor(value16), k)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out, )):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize('case', [(1, 2, 8, 30, 32, 7), (2, 2, 16, 10, 12, 7), (2, 2, 16, 14, 14, 13)])
def test_memory_nothing_of_size_c_k2_hw(case):
    """No tensor of the forward+backward is larger than attn/value (tap loop) or than H*W / k^2 (at most
    FORWARD_DENSE_MAX_RATIO) times attn (dense), while the unfold baseline materialises C*k*k*H*W elements."""
    b, g, c, h, w, k = case
    attn, value = channels_first(*make(case, dtype=torch.float32)[:2])
    attn.requires_grad_()
    value.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = na2d_av_channels_first(attn, value, k)     # the op: saves attn and value only
    out.backward(torch.ones_like(out))
    cpu_forward, cpu_backward = na2d_av_cpu_kernels()
    with LargestTensor() as mode:                        # its CPU kernels (the op hides their inner tensors)
        out = cpu_forward(attn.detach(), value.detach(), k)
        cpu_backward(torch.ones_like(out), attn.detach(), value.detach(), k, True, True)
    unfolded = b * g * c * k * k * h * w
    dense = not uses_windows(h, w, k) and h * w <= FORWARD_DENSE_MAX_RATIO * k * k   # the forward's rule
    # the dense matrices, B*G*(H*W)^2, are H*W / k^2 (<= FORWARD_DENSE_MAX_RATIO) times attn
    bound = max(attn.numel(), value.numel()) * (h * w / (k * k) if dense else 1)
    assert mode.largest <= bound < unfolded / 2
    assert max(saved) <= bound
    with LargestTensor() as mode:
        na2d_av_unfold(attn.detach().permute(0, 1, 3, 4, 2), value.detach().permute(0, 1, 3, 4, 2), k)
    assert mode.largest >= unfolded


@pytest.mark.parametrize('attn_shape,value_shape,k,match', [
    ((1, 1, 9, 9, 9), (1, 1, 9, 9), 3, '5-D'),
    ((1, 1, 9, 9, 8), (1, 1, 9, 9, 4), 3, 'attn has 8 taps, expected kernel_size\\*\\*2 = 9'),
    ((2, 1, 9, 9, 9), (1, 1, 9, 9, 4), 3, 'disagree in batch'),
    ((1, 1, 4, 9, 25), (1, 1, 4, 9, 4), 5, 'feature map 4x9 is smaller than kernel_size=5'),
    ((1, 1, 9, 9, 16), (1, 1, 9, 9, 4), 4, 'kernel_size=4 must be a positive odd integer'),
])
def test_bad_input_errors(attn_shape, value_shape, k, match):
    for fn in (na2d_av, na2d_av_unfold, na2d_av_reference):
        with pytest.raises(ValueError, match=match):
            fn(torch.rand(attn_shape), torch.rand(value_shape), k)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('case', [TAP_CASE, DENSE_CASE, (2, 4, 16, 40, 48, 13)])
def test_cuda_matches_cpu(case):
    attn, value, k = make(case, dtype=torch.float32, requires_grad=True)
    grad = torch.randn(value.shape)
    ref_out = na2d_av_reference(attn, value, k)
    ref_grads = torch.autograd.grad(ref_out, (attn, value), grad)
    attn_gpu = attn.detach().cuda().requires_grad_()
    value_gpu = value.detach().cuda().requires_grad_()
    out = na2d_av(attn_gpu, value_gpu, k)
    grads = torch.autograd.grad(out, (attn_gpu, value_gpu), grad.cuda())
    torch.testing.assert_close(out.cpu(), ref_out, rtol=1e-4, atol=1e-5)
    for g_gpu, g_ref in zip(grads, ref_grads):
        torch.testing.assert_close(g_gpu.cpu(), g_ref, rtol=1e-4, atol=1e-5)


@needs_fake_impl
def test_torch_compile_sees_one_node_and_saves_only_the_inputs():
    """torch.compile (fullgraph) captures the op as one forward node and its backward as one node; the
    tensors saved between them are attn and value, nothing of size k*k*C*H*W."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    graphs = {}

    def capture(name):
        def compiler(gm, example_inputs):
            graphs[name] = gm
            return make_boxed_func(gm.forward)
        return compiler

    b, g, c, h, w, k = TAP_CASE
    attn, value = channels_first(*make(TAP_CASE, dtype=torch.float32)[:2])
    attn.requires_grad_()
    value.requires_grad_()
    grad = torch.randn(value.shape)
    torch._dynamo.reset()
    fn = torch.compile(lambda a, v: na2d_av_channels_first(a, v, k), fullgraph=True,
                       backend=aot_autograd(fw_compiler=capture('forward'), bw_compiler=capture('backward')))
    out = fn(attn, value)
    got = torch.autograd.grad(out, (attn, value), grad)
    expected = torch.autograd.grad(na2d_av_channels_first(attn, value, k), (attn, value), grad)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e)

    def calls(gm):
        return [n.target for n in gm.graph.nodes if n.op == 'call_function']
    assert calls(graphs['forward']).count(torch.ops.mmoverlock.na2d_av.default) == 1
    assert calls(graphs['backward']).count(torch.ops.mmoverlock.na2d_av_backward.default) == 1
    outputs = next(n for n in graphs['forward'].graph.nodes if n.op == 'output').args[0]
    saved = [n.meta['val'].numel() for n in outputs[1:] if hasattr(n, 'meta') and 'val' in n.meta]
    assert saved and max(saved) <= max(attn.numel(), value.numel()) < b * g * c * k * k * h * w
