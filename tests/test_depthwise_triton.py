"""The Triton kernels of the depthwise conv (``mmoverlock.ops.depthwise_triton``) against ``F.conv2d``.

With a CUDA device they run compiled on the GPU; without one, under Triton's CPU interpreter, which
``tests/conftest.py`` switches on before triton is first imported (so the kernels are tested in ``make
test`` on any machine; a missing triton fails here, it does not skip). The interpreter runs every program as
numpy calls, so the maps are tiny; ``GPU_TILING`` runs the GPU's tile sizes (many programs, chunked
weight-gradient reductions) instead of the interpreter's one-tile programs. The interpreter does not detect
out-of-bounds accesses, hence the guard-band test: inputs and outputs are views into larger buffers whose
margins hold NaN, which any stray read would carry into the results and any stray write would overwrite.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available()
DEVICE = 'cuda' if CUDA else 'cpu'
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


from mmoverlock.ops import (depthwise_device_kernels, depthwise_op, selection,  # noqa: E402
                            triton_depthwise_conv2d)


def kernels():
    from mmoverlock.ops import depthwise_triton
    return depthwise_triton


def reference(x, w, b, d):
    return F.conv2d(x, w, b, 1, d * (w.shape[-1] - 1) // 2, d, x.shape[1])


def make(shape, k, dtype, channels_last=False, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(c, 1, k, k, generator=g, dtype=torch.float64) / k
    bs = torch.randn(c, generator=g, dtype=torch.float64) if bias else None
    gy = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    to = dict(dtype=dtype, device=DEVICE)
    x = x.to(**to)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, wt.to(**to), None if bs is None else bs.to(**to), gy.to(**to)


def run(fn, x, w, b, gy):
    """(y, grad_x, grad_w[, grad_b]) of fn(x, w, b) for the output gradient gy."""
    leaves = [t.detach().requires_grad_() for t in (x, w, b) if t is not None]
    y = fn(*leaves, None) if b is None else fn(*leaves)
    return (y, *torch.autograd.grad(y, leaves, gy))


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


# (shape, k, dilation, channels_last, bias): k in {3, 7, 13, 17}; the release's dilated branches (5, 1),
# (7, 1), (9, 2), (7, 2), (3, 3), (3, 4), (3, 5), (3, 7); odd sizes; maps smaller than the kernel's span.
CASES = [
    ((2, 3, 9, 11), 3, 1, False, True),
    ((1, 4, 8, 7), 7, 1, True, False),
    ((2, 2, 13, 12), 13, 1, False, True),
    ((1, 3, 10, 9), 17, 1, True, True),        # 10x9 < 17
    ((1, 3, 11, 10), 9, 2, False, False),
    ((2, 2, 9, 13), 7, 2, True, True),
    ((1, 3, 8, 7), 5, 1, False, True),
    ((1, 2, 7, 9), 3, 3, True, False),
    ((2, 2, 9, 8), 3, 4, False, True),
    ((1, 3, 6, 11), 3, 5, True, True),
    ((1, 2, 5, 6), 3, 7, False, True),         # span 15 > 6
]
IDS = [f'{"x".join(map(str, s))}-k{k}-d{d}{"-cl" if cl else ""}{"-bias" if b else ""}' for s, k, d, cl, b in CASES]


@pytest.mark.parametrize('shape,k,d,channels_last,bias', CASES, ids=IDS)
def test_fp64_equals_conv2d(shape, k, d, channels_last, bias):
    """Output and all gradients equal F.conv2d's in fp64 to 1e-10 (relative to the largest value)."""
    x, w, b, gy = make(shape, k, torch.float64, channels_last, bias)
    expected = run(lambda *a: reference(*a, d), x, w, b, gy)
    got = run(lambda *a: triton_depthwise_conv2d(*a, d), x, w, b, gy)
    assert got[0].is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert got[1].is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for name, g, e in zip(('y', 'grad_x', 'grad_w', 'grad_b'), got, expected):
        assert g.dtype == torch.float64 and g.shape == e.shape, name
        assert rel(g, e) < 1e-10, (name, rel(g, e))


@pytest.mark.parametrize('case', [CASES[3], CASES[4], CASES[9]], ids=[IDS[3], IDS[4], IDS[9]])
def test_fp32_within_conv2d_rounding(case):
    """fp32 in, fp32 accumulation: within 1e-5 (relative to the largest value) of the fp64 result."""
    shape, k, d, channels_last, bias = case
    x, w, b, gy = make(shape, k, torch.float32, channels_last, bias, seed=1)
    expected = run(lambda *a: reference(*a, d), *(t.double() if t is not None else None for t in (x, w, b, gy)))
    got = run(lambda *a: triton_depthwise_conv2d(*a, d), x, w, b, gy)
    for name, g, e in zip(('y', 'grad_x', 'grad_w', 'grad_b'), got, expected):
        assert g.dtype == torch.float32, name
        assert rel(g, e) < 1e-5, (name, rel(g, e))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_fp32(dtype):
    """bf16 / fp16 in and out, sums in fp32: each value within 2 eps of the dtype (relative to the largest
    value) of the fp64 result on the same (rounded) inputs -- one rounding of the output, none in the sum
    beyond fp32's."""
    x, w, b, gy = make((2, 3, 9, 10), 7, dtype, True, True, seed=2)
    expected = run(lambda *a: reference(*a, 2), *(t.double() for t in (x, w, b, gy)))
    got = run(lambda *a: triton_depthwise_conv2d(*a, 2), x, w, b, gy)
    eps = torch.finfo(dtype).eps
    for name, g, e in zip(('y', 'grad_x', 'grad_w', 'grad_b'), got, expected):
        assert g.dtype == dtype, name
        assert rel(g, e) < 2 * eps, (name, rel(g, e), eps)


@pytest.fixture
def gpu_tiling(monkeypatch):
    """The GPU's tiles under the interpreter, and weight-gradient chunks of several tiles."""
    monkeypatch.setattr(kernels(), 'GPU_TILING', True)
    monkeypatch.setattr(kernels(), 'GPU_WEIGHT_GRAD_PROGRAMS', 4)


def test_gpu_tiling_several_programs(gpu_tiling):
    """C=40 (two channel blocks of 32, the second partial), 12x13 maps (pixel tiles of 64: three, the last
    partial), batch 2; the weight gradient in chunks of several tiles. Equal to F.conv2d in fp64."""
    m = kernels()
    x, w, b, gy = make((2, 40, 12, 13), 5, torch.float64, False, True, seed=3)
    block_p, block_c = m.tile_config(40, 12 * 13)
    assert (block_p, block_c) == (64, 32)
    chunks, tiles = m.weight_grad_chunks(2 * 12 * 13, block_p, 2)
    assert chunks > 1 and tiles > 1, (chunks, tiles)
    expected = run(lambda *a: reference(*a, 2), x, w, b, gy)
    got = run(lambda *a: triton_depthwise_conv2d(*a, 2), x, w, b, gy)
    for name, g, e in zip(('y', 'grad_x', 'grad_w', 'grad_b'), got, expected):
        assert rel(g, e) < 1e-10, (name, rel(g, e))


def _guarded(shape, margin, fill=float('nan')):
    """A view of ``shape`` inside a buffer ``margin`` larger on both sides of every axis, margins = fill."""
    buffer = torch.full([s + 2 * m for s, m in zip(shape, margin)], fill, dtype=torch.float64, device=DEVICE)
    return buffer, buffer[tuple(slice(m, m + s) for s, m in zip(shape, margin))]


def _margins(buffer, margin):
    inside = torch.zeros(buffer.shape, dtype=torch.bool, device=buffer.device)
    inside[tuple(slice(m, s - m) for s, m in zip(buffer.shape, margin))] = True
    return buffer[~inside]


@pytest.mark.parametrize('k,d', [(7, 1), (3, 4)])
def test_guard_bands(gpu_tiling, k, d):
    """Inputs read from, and outputs written into, views inside NaN-filled buffers (GPU tiling: partial
    tiles and channel blocks): no read outside the views (results finite and right), no write outside
    them (margins stay NaN)."""
    m = kernels()
    shape, margin = (2, 35, 9, 10), (1, 2, 3, 4)
    x0, w0, b0, g0 = make(shape, k, torch.float64, False, True, seed=4)
    views = {}
    for name, t, mg in (('x', x0, margin), ('w', w0, (2, 1, 2, 3)), ('b', b0, (5, )), ('g', g0, margin)):
        _, view = _guarded(t.shape, mg)
        views[name] = view.copy_(t)
    outs = {name: _guarded(shape, margin) for name in ('y', 'grad_x')}
    m.depthwise_forward(views['x'], views['w'], views['b'], d, out=outs['y'][1])
    m.depthwise_input_grad(views['g'], views['w'], d, out=outs['grad_x'][1])
    grad_w = m.depthwise_weight_grad(views['x'], views['g'], k, d)
    expected = run(lambda *a: reference(*a, d), x0, w0, b0, g0)
    for name, got, e in (('y', outs['y'][1], expected[0]), ('grad_x', outs['grad_x'][1], expected[1]),
                         ('grad_w', grad_w, expected[2])):
        assert rel(got, e) < 1e-10, (name, rel(got, e))
    for name, (buffer, _) in outs.items():
        assert _margins(buffer, margin).isnan().all(), f'{name}: a write outside the output view'


def test_gradcheck_fp64():
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    w = torch.randn(2, 1, 3, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: triton_depthwise_conv2d(*a, 2), (x, w, b), fast_mode=True)


def test_backward_is_bitwise_deterministic(gpu_tiling):
    """Forward and backward twice with the GPU's tiling (the weight gradient reduced over several programs: per-chunk
    partial sums, then one torch.sum): every output and gradient bitwise equal."""
    m = kernels()
    assert m.weight_grad_chunks(2 * 9 * 10, m.tile_config(8, 9 * 10)[0], 1)[0] > 1      # several partial sums
    x, w, b, gy = make((2, 8, 9, 10), 3, torch.float32, True, True, seed=5)
    first = run(lambda *a: triton_depthwise_conv2d(*a, 2), x, w, b, gy)
    second = run(lambda *a: triton_depthwise_conv2d(*a, 2), x, w, b, gy)
    for name, one, two in zip(('y', 'grad_x', 'grad_w', 'grad_b'), first, second):
        assert torch.equal(one, two), name


def test_the_op_takes_the_triton_kernels_as_a_candidate_here():
    """On this machine (CUDA, or Triton's interpreter, which conftest turns on before triton's import) the op's
    Triton kernels pass their first-use check and are a candidate of every pass; the forward candidate runs them
    (a stub in their place is what the candidate calls)."""
    x, w, b, gy = make((1, 3, 6, 7), 3, torch.float32)
    assert depthwise_op.triton_for(x) is kernels()
    assert set(depthwise_op.forward_candidates(x, w, b, 1)) == {'torch', 'triton'}
    assert set(depthwise_op.input_grad_candidates(gy, x, w, 1)) == {'torch', 'triton'}
    assert set(depthwise_op.weight_grad_candidates(gy, x, w, 1)) == {'torch', 'triton', 'fft'}
    torch.testing.assert_close(depthwise_op.forward_candidates(x, w, b, 1)['triton'](), reference(x, w, b, 1))


def test_op_cuda_kernels_run_triton():
    """The registered op's CUDA kernels, called on this device's tensors (interpreter on CPU): the fixed
    choice 'triton', and 'auto' with timings that make Triton win, both equal F.conv2d in fp64."""
    x, w, b, gy = make((2, 3, 9, 10), 9, torch.float64, True, True, seed=6)
    expected = run(lambda *a: reference(*a, 2), x, w, b, gy)
    forward, backward = depthwise_device_kernels()
    y = forward(x, w, b, 2, 'triton')
    gx, gw, gb = backward(gy, x, w, 2, 'triton', True, True, True)
    for name, g, e in zip(('y', 'grad_x', 'grad_w', 'grad_b'), (y, gx, gw, gb), expected):
        assert rel(g, e) < 1e-10, (name, rel(g, e))
    assert y.is_contiguous(memory_format=torch.channels_last) and gx.is_contiguous(memory_format=torch.channels_last)


def test_auto_choice_takes_triton_when_it_measures_fastest():
    """'auto' with injected timings where Triton is fastest: every pass measured once per candidate, Triton
    chosen and cached, and the results equal F.conv2d."""
    times = {'torch': 10., 'triton': 4., 'fft': 6.}
    timed = []

    def timer(name, fn, device):
        timed.append(name)
        return times[name]
    selection.clear_choices()
    forward, backward = depthwise_device_kernels()
    x, w, b, gy = make((1, 3, 8, 9), 5, torch.float64, False, True, seed=7)
    expected = run(lambda *a: reference(*a, 1), x, w, b, gy)
    for _ in range(2):                          # the second call reads the cache
        y = forward(x, w, b, 1, 'auto', timer=timer)
        gx, gw, gb = backward(gy, x, w, 1, 'auto', True, True, True, timer=timer)
    for name, g, e in zip(('y', 'grad_x', 'grad_w', 'grad_b'), (y, gx, gw, gb), expected):
        assert rel(g, e) < 1e-10, (name, rel(g, e))
    assert sorted(timed) == ['fft', 'torch', 'torch', 'torch', 'triton', 'triton', 'triton']
    assert sorted(selection.chosen().values()) == ['triton'] * 3
    selection.clear_choices()


# Compiles the kernels for an H100 / H200 (sm_90) in a fresh interpreter (the interpreter mode of this one
# replaces @triton.jit), with the unit stride specialised as Triton's launcher does (NCHW: sx_w etc.; NHWC:
# sx_c), then runs the bundled ptxas with -v on the PTX and reads its spill counts.
COMPILE_FOR_HOPPER = r'''
import json, os, re, subprocess, sys, tempfile
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mmoverlock.ops import depthwise_triton as m

ptxas = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'ptxas')
KERNELS = m.KERNELS
LAYOUTS = {'nchw': {'sx_w', 'sy_w', 'sg_w', 'sw_w'}, 'nhwc': {'sx_c', 'sy_c', 'sg_c', 'sw_w'}}
result = {}
for pointer, acc, layouts in (('fp32', tl.float32, LAYOUTS), ('bf16', tl.float32, LAYOUTS),
                              ('fp16', tl.float32, {'nchw': LAYOUTS['nchw']}),
                              ('fp64', tl.float64, {'nchw': LAYOUTS['nchw']})):
    for layout, unit in layouts.items():
        for name, kernel in KERNELS.items():
            names = list(kernel.arg_names)
            constexprs = dict(K=17, DIL=1, BLOCK_P=64, BLOCK_C=32, ACC=acc)
            if name == 'conv':
                constexprs['HAS_BIAS'] = True
            constexprs.update({n: 1 for n in names if n in unit})
            signature = {n: 'constexpr' if n in constexprs else ('*' + pointer if n.endswith('_ptr') else 'i32')
                         for n in names}
            if name == 'weight_grad':
                signature['part_ptr'] = '*fp64' if pointer == 'fp64' else '*fp32'
            source = ASTSource(fn=kernel, signature=signature,
                               constexprs={(names.index(k), ): v for k, v in constexprs.items()})
            compiled = triton.compile(source, target=GPUTarget('cuda', 90, 32))
            with tempfile.NamedTemporaryFile('w', suffix='.ptx', delete=False) as f:
                f.write(compiled.asm['ptx'])
            info = subprocess.run([ptxas, '-arch=sm_90a', '-v', f.name, '-o', os.devnull], capture_output=True,
                                  text=True, check=True).stderr
            os.unlink(f.name)
            spills = [int(v) for v in re.findall(r'(\d+) bytes spill (?:stores|loads)', info)]
            regs = [int(v) for v in re.findall(r'Used (\d+) registers', info)]
            layout_line = [line for line in compiled.asm['ttgir'].splitlines() if line.startswith('#blocked')][0]
            result[f'{name} {pointer} {layout}'] = dict(cubin=len(compiled.asm['cubin']), spills=spills,
                                                        registers=regs, layout=layout_line)
print(json.dumps(result))
'''


def test_kernels_compile_for_hopper_without_spills():
    """The pinned Triton compiles both kernels (K=17, the GPU tile) to sm_90 machine code for every dtype,
    NCHW and channels-last specialisations, with no register spills (ptxas -v), and lays a warp's threads
    along the unit-stride axis: pixels for NCHW, channels for channels-last."""
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    proc = subprocess.run([sys.executable, '-c', COMPILE_FOR_HOPPER], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result) == 2 * (2 + 2 + 1 + 1)
    for name, kernel in result.items():
        assert kernel['cubin'] > 1000, name
        assert kernel['spills'] and not any(kernel['spills']), (name, kernel)
        assert kernel['registers'] and max(kernel['registers']) <= 255, (name, kernel)
        along = 'threadsPerWarp = [32, 1]' if name.endswith('nchw') else 'threadsPerWarp = [1, 32]'
        assert along in kernel['layout'], (name, kernel['layout'])


def test_errors_are_one_line(monkeypatch):
    m = kernels()
    x, w, b, _ = make((1, 3, 6, 6), 3, torch.float32)
    with pytest.raises(ValueError, match=r"must share device and dtype with x \(cpu, torch.float32\), got cpu, "
                                         r'torch.float64' if not CUDA else 'must share'):
        triton_depthwise_conv2d(x, w.double(), b)
    with pytest.raises(ValueError, match='dtype torch.int32 is not supported; use float16'):
        m.depthwise_forward(x.int(), w.int())
    with pytest.raises(ValueError, match=r'weight must be \(C, 1, k, k\) with odd k and C=3, got \(3, 1, 4, 4\)'):
        triton_depthwise_conv2d(x, torch.randn(3, 1, 4, 4, device=DEVICE))
    with pytest.raises(ValueError, match=r'out buffer \(1, 3, 6, 5\)'):
        m.depthwise_forward(x, w, b, out=torch.empty(1, 3, 6, 5, device=DEVICE))
    with pytest.raises(ValueError, match=r"grad_out \(1, 3, 6, 5\) must have the input's shape \(1, 3, 6, 6\)"):
        m.depthwise_weight_grad(x, torch.empty(1, 3, 6, 5, device=DEVICE), 3)
    if not CUDA:
        monkeypatch.setattr(m, 'INTERPRET', False)
        with pytest.raises(RuntimeError, match="CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1"):
            triton_depthwise_conv2d(x, w, b)
