"""mmoverlock.ops.depthwise (the CPU paths of the DilatedReparamBlock's depthwise convs) against F.conv2d
autograd: outputs and all three gradients, every path, and the block itself."""
import copy
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmoverlock.models.layers import DILATED_BRANCHES, DepthwiseConv2d, DilatedReparamBlock
from mmoverlock.ops.depthwise import (_DepthwiseConv2d, _merge_phases, _split_phases, choose_paths,
                                      depthwise_conv2d, fft_weight_grad)


def _ref(x, w, b, d):
    k = w.shape[-1]
    return F.conv2d(x, w, b, 1, d * (k - 1) // 2, d, x.shape[1])


def _inputs(shape, k, dtype, channels_last, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = torch.randn(c, 1, k, k, generator=g, dtype=dtype) / k
    bs = torch.randn(c, generator=g, dtype=dtype) if bias else None
    gy = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    return x, wt, bs, gy


def _run(fn, x, w, b, gy):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    y = fn(x, w, b)
    grads = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], gy)
    return (y,) + tuple(grads)


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


# (shape, k, dilation): OverLoCK-like shapes scaled down, odd sizes, maps smaller than the kernel.
CASES = [
    ((2, 4, 12, 12), 3, 1), ((2, 4, 12, 12), 5, 1), ((2, 4, 12, 12), 11, 1), ((1, 3, 9, 13), 13, 1),
    ((2, 4, 16, 16), 17, 1), ((2, 3, 7, 7), 7, 1), ((2, 4, 13, 11), 5, 2), ((2, 4, 15, 16), 9, 2),
    ((1, 4, 14, 10), 3, 4), ((2, 3, 11, 12), 3, 5), ((2, 3, 17, 9), 3, 7), ((1, 2, 5, 6), 7, 2),
    ((1, 2, 4, 3), 3, 3), ((2, 5, 1, 6), 5, 1), ((2, 5, 6, 1), 5, 2),
]
# (forward, input grad, weight grad) path triples; 'poly' is a no-op for dilation 1.
FORCED = [('torch', 'torch', 'torch'), ('torch', 'torch', 'fft'), ('poly', 'poly', 'poly'),
          ('poly', 'poly', 'fft'), ('poly', 'torch', 'torch'), ('torch', 'poly', 'poly')]


@pytest.mark.parametrize('shape,k,d', CASES)
@pytest.mark.parametrize('paths', FORCED)
@pytest.mark.parametrize('channels_last,bias', [(False, False), (True, True)])
def test_forced_paths_fp64(shape, k, d, paths, channels_last, bias):
    """Every path combination equals F.conv2d in fp64 (outputs and all three gradients)."""
    x, w, b, gy = _inputs(shape, k, torch.float64, channels_last, bias)
    ref = _run(lambda x_, w_, b_: _ref(x_, w_, b_, d), x, w, b, gy)
    got = _run(lambda x_, w_, b_: _DepthwiseConv2d.apply(x_, w_, b_, d, *paths), x, w, b, gy)
    for r, g_ in zip(ref, got):
        assert g_.shape == r.shape and g_.dtype == r.dtype
        assert _rel(g_, r) < 1e-12, (_rel(g_, r), shape, k, d, paths)


@pytest.mark.parametrize('shape,k,d', CASES)
@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('bias', [False, True])
def test_public_fp32(shape, k, d, channels_last, bias):
    """depthwise_conv2d in fp32 vs F.conv2d in fp64: within 1e-5 relative (of the max), like fp32 conv."""
    x, w, b, gy = _inputs(shape, k, torch.float32, channels_last, bias, seed=1)
    ref = _run(lambda x_, w_, b_: _ref(x_, w_, b_, d), *(t.double() if t is not None else None
                                                       for t in (x, w, b, gy)))
    got = _run(lambda x_, w_, b_: depthwise_conv2d(x_, w_, b_, d), x, w, b, gy)
    for r, g_ in zip(ref, got):
        assert g_.dtype == torch.float32
        assert _rel(g_, r) < 1e-5, (_rel(g_, r), shape, k, d)


@pytest.mark.parametrize('k,d', [(17, 1), (15, 1), (13, 1), (9, 2), (7, 2), (5, 2), (3, 5), (3, 4)])
def test_fp32_realistic_map(k, d):
    """A 2x8x56x56 channels-last map (stage-1 size, fewer channels): fp32 error vs an fp64 reference
    is no larger than a few times PyTorch's own fp32 error."""
    x, w, b, gy = _inputs((2, 8, 56, 56), k, torch.float32, True, True, seed=2)
    x64 = [t.double() for t in (x, w, b, gy)]
    ref = _run(lambda x_, w_, b_: _ref(x_, w_, b_, d), *x64)
    torch32 = _run(lambda x_, w_, b_: _ref(x_, w_, b_, d), x, w, b, gy)
    got = _run(lambda x_, w_, b_: depthwise_conv2d(x_, w_, b_, d), x, w, b, gy)
    for r, t32, g_ in zip(ref, torch32, got):
        assert _rel(g_, r) < max(1e-5, 4 * _rel(t32, r)), (_rel(g_, r), _rel(t32, r))


@pytest.mark.parametrize('n,c,h,w,k,d', [(2, 3, 9, 8, 5, 3), (1, 2, 4, 7, 9, 1), (3, 2, 6, 6, 3, 2),
                                         (1, 1, 3, 3, 7, 3), (2, 2, 10, 10, 17, 1)])
def test_fft_weight_grad_direct(n, c, h, w, k, d):
    """fft_weight_grad alone vs aten's convolution_backward weight gradient in fp64."""
    x, wt, _, gy = _inputs((n, c, h, w), k, torch.float64, False, False, seed=3)
    pad = d * (k - 1) // 2
    ref = torch.ops.aten.convolution_backward(gy, x, wt, None, [1, 1], [pad, pad], [d, d], False,
                                              [0, 0], c, [False, True, False])[1]
    got = fft_weight_grad(x, gy, k, d)
    assert got.shape == (c, 1, k, k)
    assert _rel(got, ref) < 1e-12


@pytest.mark.parametrize('d', [2, 3, 5])
def test_phase_split_roundtrip(d):
    x = torch.randn(2, 3, 11, 7)
    s = _split_phases(x, d)
    assert s.shape == (2 * d * d, 3, -(-11 // d), -(-7 // d))
    assert torch.equal(_merge_phases(s, d, 2, 11, 7, torch.contiguous_format), x)


@pytest.mark.parametrize('paths', FORCED)
@pytest.mark.parametrize('k,d,bias', [(3, 1, True), (5, 2, False), (3, 3, True), (7, 1, False)])
def test_gradcheck(paths, k, d, bias):
    """torch.autograd.gradcheck (fp64) through each forced path combination."""
    torch.manual_seed(4)
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, k, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True) if bias else None
    fn = lambda x_, w_, b_=None: _DepthwiseConv2d.apply(x_, w_, b_, d, *paths)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b) if bias else (x, w))


def test_channels_last_output_kept():
    for k, d in [(17, 1), (9, 2), (3, 1)]:
        x = torch.randn(2, 4, 12, 12).contiguous(memory_format=torch.channels_last).requires_grad_()
        w = torch.randn(4, 1, k, k, requires_grad=True)
        y = depthwise_conv2d(x, w, None, d)
        assert y.is_contiguous(memory_format=torch.channels_last) == \
            _ref(x, w, None, d).is_contiguous(memory_format=torch.channels_last)
        (gx,) = torch.autograd.grad(y.sum(), [x])
        assert gx.shape == x.shape


@pytest.mark.parametrize('k,d', [(11, 1), (3, 5), (5, 2)])
def test_partial_requires_grad(k, d):
    """Only some inputs need grads (frozen weight, frozen input, non-leaf weight)."""
    x, w, b, gy = _inputs((2, 3, 10, 10), k, torch.float64, True, True)
    for rx, rw, rb in itertools.product([False, True], repeat=3):
        if not (rx or rw or rb):
            continue
        xs, ws, bs = x.clone().requires_grad_(rx), w.clone().requires_grad_(rw), b.clone().requires_grad_(rb)
        wi = ws * 1.0                                                  # non-leaf, like ResDWConv
        y = depthwise_conv2d(xs, wi, bs, d)
        y.backward(gy)
        xr, wr, br = x.clone().requires_grad_(rx), w.clone().requires_grad_(rw), b.clone().requires_grad_(rb)
        _ref(xr, wr * 1.0, br, d).backward(gy)
        for a, r in ((xs, xr), (ws, wr), (bs, br)):
            assert (a.grad is None) == (r.grad is None)
            if a.grad is not None:
                assert _rel(a.grad, r.grad) < 1e-12


def test_fallbacks_are_plain_conv():
    x = torch.randn(1, 4, 9, 9)
    w = torch.randn(4, 1, 11, 11)
    with torch.no_grad():                                  # no grad and no polyphase: F.conv2d itself
        assert torch.equal(depthwise_conv2d(x, w, None, 1), _ref(x, w, None, 1))
    t = ('torch',) * 3
    assert choose_paths(x.bfloat16(), 17, 1) == t
    assert choose_paths(x.half(), 9, 2) == t
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert choose_paths(x, 17, 1) == t
    assert choose_paths(x, 17, 1) == ('torch', 'torch', 'fft')
    assert choose_paths(x.double(), 13, 1) == ('torch', 'torch', 'fft')
    assert choose_paths(x, 9, 1) == ('torch', 'torch', 'fft')
    assert choose_paths(x, 7, 1) == t
    assert choose_paths(x, 3, 1) == t
    assert choose_paths(x, 9, 2) == ('poly', 'poly', 'fft')
    assert choose_paths(x, 7, 2) == ('poly', 'poly', 'poly')
    assert choose_paths(x, 3, 7) == ('poly', 'poly', 'poly')
    assert choose_paths(x, 3, 4) == ('torch', 'poly', 'poly')
    assert choose_paths(x, 5, 2) == ('torch', 'poly', 'poly')
    with torch.no_grad():                                  # dilated, padding <= 4, no grad: F.conv2d
        assert torch.equal(depthwise_conv2d(x, w[..., :3, :3], None, 4), _ref(x, w[..., :3, :3], None, 4))


def test_bad_arguments():
    x = torch.randn(1, 4, 9, 9)
    with pytest.raises(ValueError):
        depthwise_conv2d(x, torch.randn(4, 1, 4, 4))
    with pytest.raises(ValueError):
        depthwise_conv2d(x, torch.randn(2, 1, 3, 3))
    with pytest.raises(ValueError):
        depthwise_conv2d(x, torch.randn(4, 1, 3, 3), None, 0)


@pytest.mark.parametrize('kernel_size', sorted(DILATED_BRANCHES))
def test_dilated_reparam_block_equals_plain_convs(kernel_size):
    """The train-form block (lk_origin and every dilated branch through DepthwiseConv2d) gives the outputs and
    parameter gradients of the same block computed with nn.Conv2d, and re-parameterises the same way."""
    torch.manual_seed(5)
    block = DilatedReparamBlock(6, kernel_size).double().train()
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    plain = copy.deepcopy(block)
    for name, m in list(plain.named_modules()):
        if isinstance(m, DepthwiseConv2d):
            m.forward = lambda x, m=m: nn.Conv2d.forward(m, x)
    x = torch.randn(2, 6, 23, 19, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 6, 23, 19, dtype=torch.float64)
    outputs = []
    for model in (block, plain):
        xi = x.detach().requires_grad_()
        out = model(xi)
        grads = torch.autograd.grad(out, [xi] + list(model.parameters()), grad)
        outputs.append([out] + list(grads))
    for got, expected in zip(*outputs):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    block.eval()
    with torch.no_grad():
        expected = block(x)
        block.switch_to_deploy()
        assert isinstance(block.lk_origin, DepthwiseConv2d) and block.deployed
        torch.testing.assert_close(block(x), expected, rtol=1e-10, atol=1e-10)
