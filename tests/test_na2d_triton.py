"""The fused Triton kernels of ``na2d_av`` against the reference gather.

With a CUDA device they run compiled on the GPU; without one, under Triton's CPU interpreter, which
``tests/conftest.py`` switches on before triton is first imported. The interpreter runs every program as numpy
calls (seconds per call), so the shapes are small; it does not detect out-of-bounds accesses, hence the
guard-band tests: inputs and outputs are views into larger buffers whose margins hold NaN, which any stray
read would carry into the results and any stray write would overwrite. Triton is expected here: without it
this module fails to import (it does not fall back to the CPU kernels).
"""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

CUDA = torch.cuda.is_available()
if not CUDA and os.environ.get('TRITON_INTERPRET') != '1':
    pytest.skip('the Triton kernels need a CUDA device or TRITON_INTERPRET=1 (set by tests/conftest.py before '
                'triton is imported)', allow_module_level=True)

import triton  # noqa: E402,F401  (expected here: a missing triton is an error, not a skip)

from mmoverlock.ops import (na2d_av_channels_first, na2d_av_device_kernels, na2d_av_reference,  # noqa: E402
                            na2d_triton, selfcheck, triton_common, triton_na2d_av)

from .conftest import load_tool  # noqa: E402
from .test_ops import CopiesOf, layouts  # noqa: E402

DEVICE = 'cuda' if CUDA else 'cpu'
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# (B, G, C, H, W, k): several k; H or W equal to k (every window clamped); C not a power of two; a batch and
# several groups; a C wider than one channel block (MAX_BLOCK_C = 32) for the looped grad_attn path.
CASES = [
    (2, 2, 3, 7, 9, 3),
    (1, 2, 5, 5, 8, 5),
    (1, 1, 3, 7, 7, 7),
    (1, 1, 70, 6, 5, 3),
]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def reference(attn, value, k):
    """na2d_av_reference in the channels-first layout."""
    out = na2d_av_reference(attn.permute(0, 1, 3, 4, 2), value.permute(0, 1, 3, 4, 2), k)
    return out.permute(0, 1, 4, 2, 3)


def make(case, dtype, device=DEVICE):
    b, g, c, h, w, k = case
    attn = torch.randn(b, g, k * k, h, w, dtype=dtype).softmax(2).to(device)
    value = torch.randn(b, g, c, h, w, dtype=dtype).to(device)
    return attn, value, k


def grads(fn, attn, value, k, grad_out):
    attn = attn.detach().requires_grad_()
    value = value.detach().requires_grad_()
    out = fn(attn, value, k)
    return (out, *torch.autograd.grad(out, (attn, value), grad_out))


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('case', CASES)
def test_forward_and_gradients_match_reference(case, dtype):
    attn, value, k = make(case, dtype)
    grad_out = torch.randn(value.shape, dtype=dtype, device=DEVICE)
    expected = grads(reference, attn, value, k, grad_out)
    got = grads(triton_na2d_av, attn, value, k, grad_out)
    for name, g, e in zip(('out', 'grad_attn', 'grad_value'), got, expected):
        assert g.dtype == dtype and g.shape == e.shape, name
        torch.testing.assert_close(g, e, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype], msg=name)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_fp32(dtype):
    """fp16 / bf16 in and out, the sums in fp32: within the input rounding of the fp64 result."""
    attn, value, k = make(CASES[0], torch.float64)
    grad_out = torch.randn(value.shape, dtype=torch.float64, device=DEVICE)
    expected = grads(reference, attn, value, k, grad_out)
    got = grads(triton_na2d_av, attn.to(dtype), value.to(dtype), k, grad_out.to(dtype))
    eps = torch.finfo(dtype).eps
    for name, g, e in zip(('out', 'grad_attn', 'grad_value'), got, expected):
        assert g.dtype == dtype, name
        # each term rounded once on input, once on output: a few eps of the summed magnitudes
        torch.testing.assert_close(g.double(), e, rtol=8 * eps, atol=8 * eps * e.abs().max().item(), msg=name)


def test_gradcheck_fast_mode_float64():
    b, g, c, h, w, k = 1, 2, 2, 4, 5, 3
    attn = torch.rand(b, g, k * k, h, w, dtype=torch.float64, device=DEVICE, requires_grad=True)
    value = torch.randn(b, g, c, h, w, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, v: triton_na2d_av(a, v, k), (attn, value), fast_mode=True)


def test_channel_half_views_of_one_map(monkeypatch):
    """ContMix passes the two channel halves of one (B, 2, G, C, H, W) map: strided views. The launchers hand
    the views themselves (pointer and strides) to the kernels and copy nothing of the map (recorded with the
    kernels replaced: the interpreter's own launch copies every argument to and from numpy); the kernels'
    results equal the reference on the contiguous copy."""
    b, g, c, h, w, k = 2, 2, 3, 6, 7, 5
    x = torch.randn(b, 2, g, c, h, w, dtype=torch.float64, device=DEVICE)
    attn = torch.randn(b, g, k * k, h, w, dtype=torch.float64, device=DEVICE).softmax(2)
    grad_out = torch.randn(b, g, c, h, w, dtype=torch.float64, device=DEVICE)
    for half in (x[:, 0], x[:, 1]):
        assert not half.is_contiguous()
        for g_, e in zip(grads(triton_na2d_av, attn, half, k, grad_out),
                         grads(reference, attn, half.contiguous(), k, grad_out)):
            torch.testing.assert_close(g_, e, rtol=1e-12, atol=1e-12)
    passed = []

    class RecordingKernel:
        def __getitem__(self, grid):
            return lambda *args, **meta: passed.extend(
                (t.data_ptr(), t.stride()) for t in args if isinstance(t, torch.Tensor))

    for name in na2d_triton.KERNELS:
        monkeypatch.setitem(na2d_triton.KERNELS, name, RecordingKernel())
        monkeypatch.setitem(na2d_triton.TUNED_KERNELS, name, RecordingKernel())
    half = x[:, 1]
    with CopiesOf(x) as copies:
        na2d_triton.na2d_av_forward(attn, half, k)
        na2d_triton.na2d_av_backward(grad_out, attn, half, k)
    assert copies.ops == []
    assert passed.count((half.data_ptr(), half.stride())) == 2        # forward and grad_attn read the view


def _guarded(shape, margin, dtype, fill=float('nan')):
    """A view of ``shape`` inside a buffer ``margin`` larger on both sides of every axis, margins = fill."""
    buffer = torch.full([s + 2 * m for s, m in zip(shape, margin)], fill, dtype=dtype, device=DEVICE)
    view = buffer[tuple(slice(m, m + s) for s, m in zip(shape, margin))]
    return buffer, view


def _margins(buffer, margin):
    inside = torch.zeros(buffer.shape, dtype=torch.bool, device=buffer.device)
    inside[tuple(slice(m, s - m) for s, m in zip(buffer.shape, margin))] = True
    return buffer[~inside]


@pytest.mark.parametrize('case', [(1, 2, 3, 5, 9, 5), (2, 1, 5, 8, 7, 3)])
def test_guard_bands(case):
    """Inputs read from, and outputs written into, views inside NaN-filled buffers: no read outside the
    views (the results stay finite and right) and no write outside them (the margins stay NaN)."""
    from mmoverlock.ops import na2d_triton
    b, g, c, h, w, k = case
    margin = (1, 1, 2, 3, 4)
    attn_ref, value_ref, _ = make(case, torch.float64)
    grad_out_ref = torch.randn(value_ref.shape, dtype=torch.float64, device=DEVICE)
    inputs = {}
    for name, t in (('attn', attn_ref), ('value', value_ref), ('grad_out', grad_out_ref)):
        _, view = _guarded(t.shape, margin, torch.float64)
        view.copy_(t)
        inputs[name] = view
    outputs = {name: _guarded(t.shape, margin, torch.float64)
               for name, t in (('out', value_ref), ('grad_attn', attn_ref), ('grad_value', value_ref))}
    na2d_triton.na2d_av_forward(inputs['attn'], inputs['value'], k, out=outputs['out'][1])
    na2d_triton.na2d_av_backward(inputs['grad_out'], inputs['attn'], inputs['value'], k,
                                 grad_attn=outputs['grad_attn'][1], grad_value=outputs['grad_value'][1])
    expected = dict(zip(('out', 'grad_attn', 'grad_value'),
                        grads(reference, attn_ref, value_ref, k, grad_out_ref)))
    for name, (buffer, view) in outputs.items():
        torch.testing.assert_close(view, expected[name], rtol=1e-12, atol=1e-12, msg=name)
        assert _margins(buffer, margin).isnan().all(), f'{name}: a write outside the output view'


class Calls:
    """Records the calls of a wrapped function."""

    def __init__(self, fn):
        self.fn, self.count = fn, 0

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self.fn(*args, **kwargs)


def test_registered_op_kernels_use_triton(monkeypatch):
    """The op's CUDA kernels (forward and backward) run the Triton launchers: called here on this device's
    tensors (under the interpreter on CPU) they call them and equal the reference. (The first-use check, which
    calls the launchers too, is off here: tests/test_kernel_selfcheck.py.)"""
    monkeypatch.setenv(selfcheck.ENV_VAR, '0')
    forward = Calls(na2d_triton.na2d_av_forward)
    backward = Calls(na2d_triton.na2d_av_backward)
    monkeypatch.setattr(na2d_triton, 'na2d_av_forward', forward)
    monkeypatch.setattr(na2d_triton, 'na2d_av_backward', backward)
    attn, value, k = make(CASES[0], torch.float64)
    grad_out = torch.randn(value.shape, dtype=torch.float64, device=DEVICE)
    expected = grads(reference, attn, value, k, grad_out)
    torch.testing.assert_close(na2d_av_device_kernels()[0](attn, value, k), expected[0], rtol=1e-12, atol=1e-12)
    grad_attn, grad_value = na2d_av_device_kernels()[1](grad_out, attn, value, k, True, False)
    torch.testing.assert_close(grad_attn, expected[1], rtol=1e-12, atol=1e-12)
    assert grad_value.numel() == 0          # not asked for
    assert (forward.count, backward.count) == (1, 1)


@pytest.mark.skipif(not CUDA, reason='needs a CUDA device')
def test_op_on_cuda_dispatches_to_triton_and_matches_cpu(monkeypatch):
    monkeypatch.setenv(selfcheck.ENV_VAR, '0')          # the first-use check calls the launchers too
    forward = Calls(na2d_triton.na2d_av_forward)
    backward = Calls(na2d_triton.na2d_av_backward)
    monkeypatch.setattr(na2d_triton, 'na2d_av_forward', forward)
    monkeypatch.setattr(na2d_triton, 'na2d_av_backward', backward)
    attn, value, k = make((2, 4, 16, 40, 48, 13), torch.float32, device='cpu')
    grad_out = torch.randn(value.shape)
    expected = grads(na2d_av_channels_first, attn, value, k, grad_out)
    got = grads(na2d_av_channels_first, attn.cuda(), value.cuda(), k, grad_out.cuda())
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.cpu(), e, rtol=1e-4, atol=1e-5)
    assert (forward.count, backward.count) == (1, 1)


@pytest.mark.skipif(not CUDA, reason='needs a CUDA device')
def test_op_runs_on_the_last_visible_device():
    """Tensors on the last visible GPU while GPU 0 is current: the launches follow the tensors (without the
    device guard Triton would launch on GPU 0 with another GPU's pointers)."""
    device = torch.device('cuda', torch.cuda.device_count() - 1)
    attn, value, k = make((1, 2, 16, 20, 24, 7), torch.float32, device='cpu')
    grad_out = torch.randn(value.shape)
    expected = grads(na2d_av_channels_first, attn, value, k, grad_out)
    with torch.cuda.device(0):
        got = grads(na2d_av_channels_first, attn.to(device), value.to(device), k, grad_out.to(device))
        torch.cuda.synchronize(device)
    for g, e in zip(got, expected):
        assert g.device == device
        torch.testing.assert_close(g.cpu(), e, rtol=1e-4, atol=1e-5)


def test_every_launch_runs_under_the_tensors_device_guard(monkeypatch):
    """On CPU, with fake tensors on cuda:1 and the kernels replaced by recorders: the op's CUDA kernels make
    cuda:1 current around every launch (forward, grad_attn, grad_value) and restore it after. (Fake tensors
    cannot be compared: the first-use check is off.)"""
    monkeypatch.setenv(selfcheck.ENV_VAR, '0')
    events = []

    class RecordingGuard:
        def __init__(self, device):
            self.device = torch.device(device)

        def __enter__(self):
            events.append(('enter', self.device))

        def __exit__(self, *exc):
            events.append(('exit', self.device))

    class RecordingKernel:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **meta: events.append(('launch', self.name, args[0].device))

    monkeypatch.setattr(torch.cuda, 'device', RecordingGuard)
    for name in na2d_triton.KERNELS:
        monkeypatch.setitem(na2d_triton.KERNELS, name, RecordingKernel(name))
        monkeypatch.setitem(na2d_triton.TUNED_KERNELS, name, RecordingKernel(name))
    cuda1 = torch.device('cuda', 1)
    with FakeTensorMode():
        attn = torch.empty(1, 2, 9, 7, 8, device=cuda1)
        value = torch.empty(1, 2, 3, 7, 8, device=cuda1)
        out = na2d_av_device_kernels()[0](attn, value, 3)
        na2d_av_device_kernels()[1](torch.empty_like(out), attn, value, 3, True, True)
    assert events == [('enter', cuda1), ('launch', 'forward', cuda1), ('exit', cuda1),
                      ('enter', cuda1), ('launch', 'grad_attn', cuda1), ('launch', 'grad_value', cuda1),
                      ('exit', cuda1)]


# Real OverLoCK shapes with the GPU's tiling forced: several pixel tiles that cross rows and borders, a tile
# that ends inside the map, and (first case) more than one channel block. OverLoCK-T stage 3 at 224x224
# (C16, 14x14, k13) and stage 4 at 800x1333 (C16, 25x42, k7: interior grad_value tiles and border ones),
# one group of each (groups are independent programs).
FORCED_TILING = [
    ((1, 1, 16, 14, 14, 13), 8, dict(forward=dict(BLOCK_P=128), grad_attn=dict(BLOCK_P=128),
                                     grad_value=dict(BLOCK_H=8, BLOCK_W=16))),
    ((1, 1, 16, 25, 42, 7), 16, dict(forward=dict(BLOCK_P=128), grad_attn=dict(BLOCK_P=128),
                                     grad_value=dict(BLOCK_H=8, BLOCK_W=16))),
]


@pytest.mark.parametrize('case,max_block_c,tiles', FORCED_TILING)
def test_gpu_tiling_at_overlock_shapes(case, max_block_c, tiles, monkeypatch):
    monkeypatch.setattr(na2d_triton, 'MAX_BLOCK_C', max_block_c)
    b, g, c, h, w, k = case
    attn, value, _ = make(case, torch.float64)
    grad_out = torch.randn(value.shape, dtype=torch.float64, device=DEVICE)
    assert triton.cdiv(h * w, tiles['forward']['BLOCK_P']) > 1 and w < tiles['forward']['BLOCK_P']
    assert (h * w) % tiles['forward']['BLOCK_P'] != 0                      # the last tile ends inside the map
    assert triton.cdiv(h, tiles['grad_value']['BLOCK_H']) * triton.cdiv(w, tiles['grad_value']['BLOCK_W']) > 1
    out = na2d_triton.na2d_av_forward(attn, value, k, tiles=tiles['forward'])
    grad_attn, grad_value = na2d_triton.na2d_av_backward(grad_out, attn, value, k, tiles=tiles)
    for name, got, expected in zip(('out', 'grad_attn', 'grad_value'), (out, grad_attn, grad_value),
                                   grads(reference, attn, value, k, grad_out)):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=name)


def test_interpreter_runs_one_fixed_configuration(monkeypatch):
    """Under the interpreter no kernel is autotuned: every launch is the plain kernel with INTERPRETER_TILES
    (clamped to the map)."""
    if CUDA:
        pytest.skip('a CUDA device is present: the kernels are autotuned')
    assert na2d_triton.INTERPRET and all(t is None for t in na2d_triton.TUNED_KERNELS.values())
    metas = []

    class RecordingKernel:
        def __getitem__(self, grid):
            return lambda *args, **meta: metas.append(meta)

    for name in na2d_triton.KERNELS:
        monkeypatch.setitem(na2d_triton.KERNELS, name, RecordingKernel())
    attn, value, k = make((1, 1, 3, 50, 84, 3), torch.float32)
    na2d_triton.na2d_av_forward(attn, value, k)
    na2d_triton.na2d_av_backward(torch.empty_like(value), attn, value, k)
    assert metas == [dict(BLOCK_P=1024), dict(BLOCK_P=1024), dict(BLOCK_H=32, BLOCK_W=32)]


@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'channel_half', 'transposed_hw'])
def test_opcheck_triton_op(layout):
    """torch.library.opcheck of ``mmoverlock::na2d_av_triton`` (schema, fake tensor, autograd registration,
    AOT dispatch with dynamic shapes) on each input layout ContMix or a user may pass."""
    attn, value = layouts(layout, (1, 2, 2, 5, 6, 3), device=DEVICE)
    result = torch.library.opcheck(torch.ops.mmoverlock.na2d_av_triton.default, (attn, value, 3))
    assert set(result.values()) == {'SUCCESS'}, result


def test_mixed_dtypes_follow_the_one_rule():
    """triton_na2d_av promotes mixed dtypes as na2d_av_channels_first does; the raw op raises the same
    one-line error as the CPU op."""
    attn, value, k = make(CASES[0], torch.float32)
    value16 = value.to(torch.bfloat16)
    out = triton_na2d_av(attn, value16, k)
    assert out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out, reference(attn, value16.float(), k), rtol=1e-5, atol=1e-5)
    message = 'attn is torch.float32 and value is torch.bfloat16; the op takes one dtype'
    with pytest.raises(ValueError, match=message):
        torch.ops.mmoverlock.na2d_av_triton(attn, value16, k)
    with pytest.raises(ValueError, match=message):
        na2d_av_device_kernels()[0](attn, value16, k)


def test_errors_are_one_line(monkeypatch):
    attn, value, k = make(CASES[0], torch.float32)
    with pytest.raises(ValueError, match='attn has 9 taps, expected kernel_size\\*\\*2 = 25'):
        triton_na2d_av(attn, value, 5)
    with pytest.raises(ValueError, match='dtype torch.int32 is not supported'):
        na2d_triton.na2d_av_forward(attn.int(), value.int(), k)
    with pytest.raises(ValueError, match='must share device and dtype'):
        na2d_triton.na2d_av_forward(attn, value.double(), k)
    if not CUDA:
        monkeypatch.setattr(na2d_triton, 'INTERPRET', False)
        with pytest.raises(RuntimeError, match='CPU tensors need Triton\'s interpreter: set TRITON_INTERPRET=1'):
            triton_na2d_av(attn, value, k)


# Compiles every autotuning configuration of the three kernels for an H100 / H200 (sm_90) in a fresh
# interpreter (the interpreter mode of this one replaces @triton.jit), with the integer arguments specialised
# as Triton's launcher does (unit strides), at k = 13 and both channel blocks OverLoCK uses (16, and
# MAX_BLOCK_C = 32), for fp32, bf16 and fp64 (fp16 compiles as bf16 does); ptxas's own report (-v, which
# Triton passes) gives the registers and the spilled bytes.
COMPILE_FOR_HOPPER = r"""
import contextlib, io, json, re, time
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mmoverlock.ops import na2d_triton as m

triton.knobs.nvidia.dump_ptxas_log = True
UNIT_STRIDES = {'sa_w', 'sv_w', 'so_w', 'sg_w'}
CONFIGS = {'forward': m.FORWARD_CONFIGS, 'grad_attn': m.GRAD_ATTN_CONFIGS, 'grad_value': m.GRAD_VALUE_CONFIGS}
result = dict(tuning={name: dict(key=tuned.keys, configs=len(tuned.configs))
                      for name, tuned in m.TUNED_KERNELS.items()}, kernels={})
for pointer, acc in (('fp32', tl.float32), ('bf16', tl.float32), ('fp64', tl.float64)):
    for block_c in (16, m.MAX_BLOCK_C):
        for name, kernel in m.KERNELS.items():
            for index, config in enumerate(CONFIGS[name]):
                names = list(kernel.arg_names)
                constexprs = dict(K=13, BLOCK_C=block_c, ACC=acc, **config.kwargs)
                if name == 'grad_attn':
                    constexprs['NUM_C_BLOCKS'] = 1
                constexprs.update({n: 1 for n in names if n in UNIT_STRIDES})
                signature = {n: 'constexpr' if n in constexprs else ('*' + pointer if n.endswith('_ptr') else 'i32')
                             for n in names}
                source = ASTSource(fn=kernel, signature=signature,
                                   constexprs={(names.index(k), ): v for k, v in constexprs.items()})
                log = io.StringIO()
                start = time.perf_counter()
                with contextlib.redirect_stdout(log):
                    compiled = triton.compile(source, target=GPUTarget('cuda', 90, 32), options=dict(
                        num_warps=config.num_warps, num_stages=config.num_stages))
                layouts = [line for line in compiled.asm['ttgir'].splitlines() if line.startswith('#blocked')]
                text = log.getvalue()
                result['kernels'][f'{name} {index} {pointer} C{block_c}'] = dict(
                    cubin=len(compiled.asm['cubin']), layout=layouts[0], seconds=time.perf_counter() - start,
                    spilled=[int(a) + int(b) for a, b in re.findall(
                        r'(\d+) bytes spill stores, (\d+) bytes spill loads', text)],
                    registers=[int(r) for r in re.findall(r'Used (\d+) registers', text)])
print(json.dumps(result))
"""


def test_kernels_compile_for_hopper_without_spills(tmp_path):
    """The pinned Triton compiles every autotuning configuration of the three kernels to sm_90 machine code
    (no GPU needed) without register spills, lays a warp's 32 threads along the pixels of a tile (coalesced
    reads of a channel's row), and autotunes on k, C and the map-size class with 4 + 3 + 3 configurations."""
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env['TRITON_CACHE_DIR'] = str(tmp_path)            # a fresh cache: ptxas runs, and reports, every time
    proc = subprocess.run([sys.executable, '-c', COMPILE_FOR_HOPPER], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result['tuning'] == {'forward': dict(key=['K', 'C', 'PIXEL_CLASS'], configs=4),
                                'grad_attn': dict(key=['K', 'C', 'PIXEL_CLASS'], configs=3),
                                'grad_value': dict(key=['K', 'C', 'PIXEL_CLASS'], configs=3)}
    assert len(result['kernels']) == 10 * 3 * 2
    for name, kernel in result['kernels'].items():
        assert kernel['cubin'] > 1000, name
        assert 'threadsPerWarp = [32, 1]' in kernel['layout'], (name, kernel['layout'])
        assert len(kernel['spilled']) == 1 and kernel['registers'], (name, kernel)
        assert kernel['spilled'] == [0], (name, kernel)


def test_host_integer_helpers_match_triton():
    for n in range(1, 300):              # sizes of a map, of channels: >= 1
        assert triton_common.next_power_of_2(n) == triton.next_power_of_2(n), n
        for d in (1, 7, 16, 64):
            assert triton_common.cdiv(n, d) == triton.cdiv(n, d), (n, d)


def test_host_time_benchmark_runs_the_launch_path():
    """tools/analysis/benchmark_op_overhead.py times every layer; its CUDA kernel bodies reach the Triton launches
    (mocked and counted: one kernel forward, grad_attn and grad_value backward) and the kernels are left as they
    were; the op's own layers are the op's time minus the kernel's."""
    kernels = dict(na2d_triton.KERNELS), dict(na2d_triton.TUNED_KERNELS)
    rows = load_tool('analysis/benchmark_op_overhead').measure(calls=20, repeats=1)
    assert [r['call'] for r in rows] == [
        'aten mul (baseline)', 'CPU kernel, forward', 'CPU kernel, forward + backward', 'op, forward',
        'op, forward + backward', 'CUDA kernel body, forward (mocked launch)',
        'CUDA kernel body, backward (mocked launch)', 'op layers, forward (op - kernel)',
        'op layers, forward + backward (op - kernel)']
    by_call = {r['call']: r for r in rows}
    assert by_call['CUDA kernel body, forward (mocked launch)']['launches'] == 1
    assert by_call['CUDA kernel body, backward (mocked launch)']['launches'] == 2
    assert by_call['op layers, forward (op - kernel)']['us'] == pytest.approx(
        by_call['op, forward']['us'] - by_call['CPU kernel, forward']['us'])
    assert (na2d_triton.KERNELS, na2d_triton.TUNED_KERNELS) == kernels
