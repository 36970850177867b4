"""mmoverlock.ops.depthwise (the CPU paths of the DilatedReparamBlock's depthwise convs) against F.conv2d
autograd: outputs and all three gradients, every path, and the block itself."""
import copy
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmoverlock.models.layers import DILATED_BRANCHES, DepthwiseConv2d, DilatedReparamBlock
from mmoverlock.ops import choose_paths, depthwise_conv2d, fft_weight_grad
from mmoverlock.ops.depthwise_cpu import DepthwiseConv2dPaths, merge_phases, split_phases
from mmoverlock.ops.selection import ringed_kernel_size
from mmoverlock.utils import compat

from .conftest import needs_opcheck


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
    got = _run(lambda x_, w_, b_: DepthwiseConv2dPaths.apply(x_, w_, b_, d, *paths), x, w, b, gy)
    for r, g_ in zip(ref, got):
        assert g_.shape == r.shape and g_.dtype == r.dtype
        assert _rel(g_, r) < 1e-12, (_rel(g_, r), shape, k, d, paths)


@pytest.mark.parametrize('shape,k,d', CASES)
@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('bias', [False, True])
def test_public_fp32(shape, k, d, channels_last, bias):
    """depthwise_conv2d in fp32 vs F.conv2d in fp64: within 1e-5 relative (of the max), like fp32 conv."""
    x, w, b, gy = _inputs(shape, k, torch.float32, channels_last, bias, seed=1)
    ref = _run(lambda x_, w_, b_: _ref(x_, w_, b_, d),
               *(t.double() if t is not None else None for t in (x, w, b, gy)))
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
    s = split_phases(x, d)
    assert s.shape == (2 * d * d, 3, -(-11 // d), -(-7 // d))
    assert torch.equal(merge_phases(s, d, 2, 11, 7, torch.contiguous_format), x)


@pytest.mark.parametrize('paths', FORCED)
@pytest.mark.parametrize('k,d,bias', [(3, 1, True), (5, 2, False), (3, 3, True), (7, 1, False)])
def test_gradcheck(paths, k, d, bias):
    """torch.autograd.gradcheck (fp64) through each forced path combination."""
    torch.manual_seed(4)
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, k, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True) if bias else None
    fn = lambda x_, w_, b_=None: DepthwiseConv2dPaths.apply(x_, w_, b_, d, *paths)  # noqa: E731
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


def _conv_kernel_sizes(fn):
    """The kernel sizes of the aten convolutions ``fn()`` runs (forward and backward), and its result."""
    from torch.utils._python_dispatch import TorchDispatchMode
    sizes = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.convolution_backward):
                weight = args[1] if func.overloadpacket is torch.ops.aten.convolution else args[2]
                sizes.append(weight.shape[-1])
            return func(*args, **(kwargs or {}))

    with Record():
        out = fn()
    return sizes, out


def test_k13_forward_runs_ringed_to_15_on_channels_last_cpu_maps():
    """oneDNN's NHWC depthwise forward is slower at k=13 than at k=15: the forward without gradients, and the
    CPU paths' forward, run the kernel ringed by zeros to 15x15 -- the same output; NCHW maps, dilated kernels
    and autograd through PyTorch's conv keep k=13."""
    x, w, b, gy = _inputs((2, 8, 14, 14), 13, torch.float32, True, True)
    assert ringed_kernel_size(x, 13, 1) == 15
    assert ringed_kernel_size(x.contiguous(), 13, 1) == 13
    assert ringed_kernel_size(x, 13, 2) == 13
    assert ringed_kernel_size(x, 15, 1) == 15 and ringed_kernel_size(x, 7, 1) == 7
    with torch.no_grad():
        sizes, y = _conv_kernel_sizes(lambda: depthwise_conv2d(x, w, b))
        assert sizes == [15] and y.is_contiguous(memory_format=torch.channels_last)
        assert _rel(y, _ref(x, w, b, 1)) < 1e-6
        sizes, y = _conv_kernel_sizes(lambda: depthwise_conv2d(x.contiguous(), w, b))
        assert sizes == [13]
        with torch.autocast('cpu', dtype=torch.bfloat16):          # bf16 under autocast: ringed, same values
            sizes, y = _conv_kernel_sizes(lambda: depthwise_conv2d(x, w, b))
            ref = _ref(x, w, b, 1)
        assert sizes == [15] and y.dtype == torch.bfloat16
        assert _rel(y.float(), ref.float()) < 1e-2
    # training (fp32): the CPU paths' forward is ringed, their backward computes the k=13 gradients
    xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
    sizes, y = _conv_kernel_sizes(lambda: depthwise_conv2d(xr, wr, b))
    assert sizes == [15]
    y.backward(gy)
    xe, we = x.detach().requires_grad_(), w.detach().requires_grad_()
    _ref(xe, we, b, 1).backward(gy)
    assert _rel(xr.grad, xe.grad) < 1e-5 and _rel(wr.grad, we.grad) < 1e-4
    # autograd through PyTorch's conv (bf16 weights that require grad): k=13, its ringed backward is slower
    xb, wb = x.bfloat16().requires_grad_(), w.bfloat16().requires_grad_()
    sizes, _ = _conv_kernel_sizes(lambda: depthwise_conv2d(xb, wb, None))
    assert sizes == [13]


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


# ------------------------------------------------------------------------------------------ the op and the choice
from mmoverlock.ops import depthwise_op, selection  # noqa: E402


def test_bad_choice_is_one_line():
    with pytest.raises(ValueError, match=r"choice='fast' is not one of \('auto', 'torch', 'triton'\)"):
        depthwise_conv2d(torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3), None, 1, 'fast')


@pytest.mark.parametrize('k,d,channels_last,bias', [(17, 1, True, True), (9, 2, False, False), (3, 1, True, True)])
def test_registered_op_cpu_kernels_and_autograd(k, d, channels_last, bias):
    """torch.ops.mmoverlock.depthwise_conv2d on CPU (its default kernels: the CPU paths) with autograd
    through mmoverlock::depthwise_conv2d_backward equals F.conv2d in fp64; memory format kept."""
    x, w, b, gy = _inputs((2, 3, 11, 10), k, torch.float64, channels_last, bias)
    ref = _run(lambda x_, w_, b_: _ref(x_, w_, b_, d), x, w, b, gy)
    got = _run(lambda x_, w_, b_: torch.ops.mmoverlock.depthwise_conv2d(x_, w_, b_, d, 'auto'), x, w, b, gy)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert got[0].is_contiguous(memory_format=fmt) and got[1].is_contiguous(memory_format=fmt)
    for r, g_ in zip(ref, got):
        assert _rel(g_, r) < 1e-12


@needs_opcheck
def test_opcheck():
    """torch.library.opcheck: schema, fake implementation (what torch.compile sees), autograd registration
    and AOT dispatch of the op, channels-last and contiguous, with and without bias."""
    for channels_last, bias in ((True, True), (False, False)):
        x, w, b, _ = _inputs((2, 3, 7, 6), 5, torch.float64, channels_last, bias)
        x.requires_grad_()
        w.requires_grad_()
        torch.library.opcheck(torch.ops.mmoverlock.depthwise_conv2d.default, (x, w, b, 2, 'auto'))


def test_torch_flop_counter_counts_the_op_as_its_conv():
    """torch.utils.flop_counter counts the op's forward as F.conv2d of the same shapes (2 FLOPs per
    multiply-add), and its backward as two such convs (input and weight gradient)."""
    from torch.utils.flop_counter import FlopCounterMode
    depthwise_op.register_flop_formulas()
    x = torch.randn(2, 3, 9, 8, requires_grad=True)
    w = torch.randn(3, 1, 7, 7, requires_grad=True)
    conv = 2 * (2 * 3 * 9 * 8 * 7 * 7)
    for fn in (lambda: torch.ops.mmoverlock.depthwise_conv2d(x, w, None, 2, 'auto'), lambda: _ref(x, w, None, 2)):
        with torch.no_grad(), FlopCounterMode(display=False) as mode:
            fn()
        assert mode.get_total_flops() == conv
    with FlopCounterMode(display=False) as mode:
        torch.ops.mmoverlock.depthwise_conv2d(x, w, None, 2, 'auto').sum().backward()
    assert mode.get_total_flops() == 3 * conv


def test_tracing_records_a_conv_and_mmengine_counts_it():
    """TorchScript tracing (mmengine's FLOP counter, get_flops.py) records the depthwise convs as
    aten::_convolution, which the counter charges k*k multiply-adds per output element: the conv's count."""
    from mmengine.analysis import FlopAnalyzer

    from mmoverlock.models.layers import ResDWConv
    model = nn.Sequential(DepthwiseConv2d(4, 7), DepthwiseConv2d(4, 3, dilation=2), ResDWConv(4)).eval()
    x = torch.randn(1, 4, 10, 12)
    graph = str(torch.jit.trace(model, (x, )).inlined_graph)
    assert 'mmoverlock::' not in graph and graph.count('aten::_convolution') == 3
    assert FlopAnalyzer(model, (x, )).total() == 4 * 10 * 12 * (7 * 7 + 3 * 3 + 3 * 3)


def test_onnx_export_writes_conv(tmp_path):
    """Under ONNX export the depthwise convs (dilated, deployed with bias, ResDWConv) are plain Conv nodes."""
    onnx = pytest.importorskip('onnx')
    from mmoverlock.models.layers import ResDWConv
    model = nn.Sequential(DepthwiseConv2d(4, 3, dilation=3), DepthwiseConv2d(4, 7, bias=True), ResDWConv(4)).eval()
    out = str(tmp_path / 'dw.onnx')
    torch.onnx.export(model, (torch.randn(1, 4, 12, 12), ), out, opset_version=17, **compat.onnx_export_kwargs())
    graph = onnx.load(out).graph
    convs = [n for n in graph.node if n.op_type == 'Conv']
    assert len(convs) == 3 and all(n.domain in ('', 'ai.onnx') for n in graph.node), \
        [(n.op_type, n.domain) for n in graph.node]
    groups = [next(a.i for a in n.attribute if a.name == 'group') for n in convs]
    dilations = [list(next(a.ints for a in n.attribute if a.name == 'dilations')) for n in convs]
    assert groups == [4, 4, 4] and dilations == [[3, 3], [1, 1], [1, 1]]


def test_pick_keeps_pytorch_unless_clearly_faster():
    assert selection.pick({'torch': 10., 'triton': 9.6, 'fft': 9.7}) == 'torch'        # within MIN_GAIN = 5 %
    assert selection.pick({'torch': 10., 'triton': 9.4, 'fft': 9.7}) == 'triton'
    assert selection.pick({'torch': 10., 'triton': 4., 'fft': 3.}) == 'fft'
    assert selection.pick({'torch': 1., 'triton': 4.}) == 'torch'
    assert selection.pick({'torch': 10., 'triton': 8.}, min_gain=0.25) == 'torch'
    with pytest.raises(ValueError, match=r"the timings \['fft', 'triton'\] lack the baseline 'torch'"):
        selection.pick({'triton': 1., 'fft': 2.})


@pytest.fixture
def injected(monkeypatch):
    """Injected timings for select(): {name: ms}; records what was timed; ``select``: selection.select with this
    timer; fresh cache, tuning flags off."""
    state = dict(times={}, timed=[])

    def timer(name, fn, device):
        state['timed'].append(name)
        return state['times'][name]
    state['timer'] = timer
    state['select'] = lambda *args: selection.select(*args, timer=timer)
    monkeypatch.setattr(torch.backends.cudnn, 'deterministic', False)
    selection.clear_choices()
    yield state
    selection.clear_choices()


def _candidates(calls, names=('torch', 'triton', 'fft')):
    return {n: (lambda n=n: calls.append(n)) for n in names}


def test_select_measures_once_per_key_and_caches(injected):
    calls = []
    injected['times'] = {'torch': 5., 'triton': 2., 'fft': 3.}
    key = ('weight_grad', 'cpu', 'float32', 'contiguous', 2, 64, 208, 336, 17, 1, False)
    assert injected['select'](key, _candidates(calls), 'auto', torch.device('cpu')) == 'triton'
    assert sorted(injected['timed']) == ['fft', 'torch', 'triton']
    assert sorted(calls) == ['fft', 'torch', 'triton']            # one untimed run each (Triton compiles there)
    injected['times'] = {'torch': 1., 'triton': 9., 'fft': 9.}   # not measured again: the cache answers
    assert injected['select'](key, _candidates(calls), 'auto', torch.device('cpu')) == 'triton'
    assert len(injected['timed']) == 3 and selection.chosen() == {key: 'triton'}
    other = key[:-2] + (2, False)                                 # another dilation: measured
    assert injected['select'](other, _candidates(calls), 'auto', torch.device('cpu')) == 'torch'
    assert len(injected['timed']) == 6 and selection.chosen()[other] == 'torch'
    selection.clear_choices()
    assert selection.chosen() == {}


def test_select_fixed_and_deterministic_choices_measure_nothing(injected, monkeypatch):
    calls = []
    injected['times'] = {'torch': 5., 'triton': 1., 'fft': 1.}
    key = ('forward', 'cpu', 'float32', 'contiguous', 1, 8, 16, 16, 7, 1, True)
    assert injected['select'](key, _candidates(calls), 'torch', torch.device('cpu')) == 'torch'
    assert injected['select'](key, _candidates(calls), 'triton', torch.device('cpu')) == 'triton'
    monkeypatch.setattr(torch.backends.cudnn, 'deterministic', True)
    assert selection.deterministic_requested()
    assert injected['select'](key, _candidates(calls), 'auto', torch.device('cpu')) == 'torch'
    assert injected['select'](key, _candidates(calls), 'triton', torch.device('cpu')) == 'triton'
    monkeypatch.setattr(torch.backends.cudnn, 'deterministic', False)
    torch.use_deterministic_algorithms(True)
    try:
        assert selection.deterministic_requested()
        assert injected['select'](key, _candidates(calls), 'auto', torch.device('cpu')) == 'torch'
    finally:
        torch.use_deterministic_algorithms(False)
    assert not selection.deterministic_requested()
    assert injected['timed'] == [] and calls == [] and selection.chosen() == {}
    with pytest.raises(RuntimeError, match=r"choice='triton' is not available here \(candidates: \['fft', "
                                           r"'torch'\]\); pip install triton"):
        injected['select'](key, _candidates(calls, ('torch', 'fft')), 'triton', torch.device('cpu'))


def test_select_leaves_out_a_failing_alternative(injected):
    injected['times'] = {'torch': 5., 'triton': 1., 'fft': 3.}

    def oom():
        raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')
    candidates = dict(_candidates([]), triton=oom)
    key = ('weight_grad', 'cpu', 'bfloat16', 'channels_last', 2, 64, 208, 336, 17, 1, False)
    with pytest.warns(UserWarning, match="candidate 'triton' failed .*OutOfMemoryError: CUDA out of memory"):
        assert injected['select'](key, candidates, 'auto', torch.device('cpu')) == 'fft'
    with pytest.raises(torch.cuda.OutOfMemoryError):                   # PyTorch's own failure is the user's
        injected['select'](key[:-2] + (3, False), dict(candidates, torch=oom), 'auto', torch.device('cpu'))


def test_choice_key_buckets_sizes():
    x = torch.randn(2, 8, 200, 334)
    key = selection.choice_key
    assert key('forward', x, 17, 1) == ('forward', 'cpu', 'float32', 'contiguous', 2, 8, 208, 336, 17, 1, False)
    assert key('forward', torch.randn(2, 8, 193, 321), 17, 1) == key('forward', x, 17, 1)
    assert key('forward', x.contiguous(memory_format=torch.channels_last), 17, 1)[3] == 'channels_last'
    assert key('forward', x.bfloat16(), 17, 1)[2] == 'bfloat16'
    assert key('forward', x, 17, 1) != key('forward', torch.randn(2, 8, 200, 337), 17, 1)


@pytest.mark.parametrize('winner', ['torch', 'fft'])
def test_cuda_kernels_without_triton_candidates(injected, monkeypatch, winner):
    """The op's CUDA kernels, run on CPU tensors with Triton left out: the weight gradient by PyTorch or the
    FFT as the injected timings say; equal to F.conv2d either way."""
    monkeypatch.setattr(depthwise_op, 'triton_for', lambda x: None)
    injected['times'] = {'torch': 5., 'fft': 1. if winner == 'fft' else 9.}
    x, w, b, gy = _inputs((2, 3, 12, 11), 13, torch.float64, True, True)
    ref = _run(lambda x_, w_, b_: _ref(x_, w_, b_, 1), x, w, b, gy)
    y = depthwise_op.cuda_forward(x, w, b, 1, 'auto', timer=injected['timer'])
    gx, gw, gb = depthwise_op.cuda_backward(gy, x, w, 1, 'auto', True, True, True, timer=injected['timer'])
    for r, g_ in zip(ref, (y, gx, gw, gb)):
        assert _rel(g_, r) < 1e-12
    assert sorted(selection.chosen().values()) == sorted(['torch', 'torch', winner])
    gx_only = depthwise_op.cuda_backward(gy, x, w, 1, 'torch', True, False, False)
    assert gx_only[1].numel() == 0 and gx_only[2].numel() == 0 and _rel(gx_only[0], ref[1]) < 1e-12


def test_backbone_depthwise_convs_go_through_the_op(monkeypatch):
    """Every DepthwiseConv2d / ResDWConv of the backbone calls depthwise_conv2d with the backbone's
    depthwise_choice (also after switch_to_deploy)."""
    from mmoverlock.models import layers
    from mmoverlock.models.backbones.overlock import OverLoCK
    arch = dict(depth=[1, 1, 1, 1], sub_depth=[1, 1], embed_dim=[8, 16, 32, 48], kernel_size=[7, 5, 5, 5],
                mlp_ratio=[2, 2, 2, 2], sub_num_heads=[1, 1], sub_mlp_ratio=[2, 2])
    with pytest.raises(ValueError, match=r"depthwise_choice='cudnn' is not one of \('auto', 'torch', 'triton'\)"):
        OverLoCK(arch, depthwise_choice='cudnn')
    model = OverLoCK(arch, depthwise_choice='torch').eval()
    convs = [m for m in model.modules() if isinstance(m, (layers.DepthwiseConv2d, layers.ResDWConv))]
    assert len(convs) > 20 and {m.choice for m in convs} == {'torch'}
    plain_depthwise = [name for name, m in model.named_modules()
                       if type(m) is torch.nn.Conv2d and m.groups > 1 and m.groups == m.in_channels]
    assert plain_depthwise == []
    calls = []
    real = layers.depthwise_conv2d

    def spy(x, weight, bias=None, dilation=1, choice='auto'):
        calls.append(choice)
        return real(x, weight, bias, dilation, choice)
    monkeypatch.setattr(layers, 'depthwise_conv2d', spy)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert len(calls) == len(convs) and set(calls) == {'torch'}
    model.switch_to_deploy()
    deployed = [m for m in model.modules() if isinstance(m, (layers.DepthwiseConv2d, layers.ResDWConv))]
    assert {m.choice for m in deployed} == {'torch'}
    assert layers.set_depthwise_choice(model, 'auto') == len(deployed)


def test_cuda_autocast_casts_as_conv2d_does():
    """Under CUDA autocast the op's inputs are cast as F.conv2d's are: floating tensors other than fp64 to
    the autocast dtype; fp64 and None kept."""
    x, w = torch.randn(1, 2, 4, 4), torch.randn(2, 1, 3, 3, dtype=torch.float64)
    cast_x, cast_w, cast_b = depthwise_op.autocast_cuda(x, w, None)
    assert cast_x.dtype == compat.autocast_dtype('cuda') and cast_w.dtype == torch.float64 and cast_b is None


def test_plain_conv_where_every_pass_runs_pytorch(injected, monkeypatch):
    """depthwise_conv2d skips the op (calls F.conv2d) for 'torch', for 'auto' in deterministic runs, and for
    'auto' once the three passes of the key chose 'torch'; not while one pass is unmeasured or chose another."""
    x = torch.randn(2, 8, 30, 40)
    assert depthwise_op.plain_conv(x, 7, 2, False, 'torch')
    assert not depthwise_op.plain_conv(x, 7, 2, False, 'triton')
    assert not depthwise_op.plain_conv(x, 7, 2, False, 'auto')                       # nothing chosen yet
    injected['times'] = {'torch': 1., 'triton': 2., 'fft': 3.}
    for name in ('forward', 'input_grad'):
        injected['select'](selection.choice_key(name, x, 7, 2), _candidates([]), 'auto', x.device)
    assert not depthwise_op.plain_conv(x, 7, 2, False, 'auto')              # weight gradient not measured
    injected['select'](selection.choice_key('weight_grad', x, 7, 2), _candidates([]), 'auto', x.device)
    assert depthwise_op.plain_conv(x, 7, 2, False, 'auto')
    assert not depthwise_op.plain_conv(x, 7, 2, True, 'auto')               # the forward with bias: not measured
    injected['times'] = {'torch': 5., 'triton': 2., 'fft': 3.}
    forward_key = selection.choice_key('forward', x, 7, 2, True)
    assert injected['select'](forward_key, _candidates([]), 'auto', x.device) == 'triton'
    assert not depthwise_op.plain_conv(x, 7, 2, True, 'auto')
    monkeypatch.setattr(torch.backends.cudnn, 'deterministic', True)
    assert depthwise_op.plain_conv(x, 7, 2, True, 'auto') and not depthwise_op.plain_conv(x, 7, 2, True, 'triton')
