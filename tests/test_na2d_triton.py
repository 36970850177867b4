"""The fused Triton kernels of ``na2d_av`` against the reference gather.

With a CUDA device they run compiled on the GPU; without one, under Triton's CPU interpreter, which
``tests/conftest.py`` switches on before triton is first imported. The interpreter runs every program as numpy calls (seconds per call), so the shapes are tiny;
it does not detect out-of-bounds accesses, hence the guard-band tests: inputs and outputs are views into
larger buffers whose margins hold NaN, which any stray read would carry into the results and any stray
write would overwrite.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA and os.environ.get('TRITON_INTERPRET') != '1':
    pytest.skip('the Triton kernels need a CUDA device or TRITON_INTERPRET=1 (set by tests/conftest.py before '
                'triton is imported)', allow_module_level=True)

from mmoverlock.ops import na2d, na2d_av_reference, triton_na2d_av  # noqa: E402

DEVICE = 'cuda' if CUDA else 'cpu'
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# (B, G, C, H, W, k): several k; H or W equal to k (every window clamped); C not a power of two; a batch and
# several groups; a C wider than one channel block (64) for the looped grad_attn path.
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


def test_channel_half_views_of_one_map():
    """ContMix passes the two channel halves of one (B, 2, G, C, H, W) map: strided views, not copies."""
    b, g, c, h, w, k = 2, 2, 3, 6, 7, 5
    x = torch.randn(b, 2, g, c, h, w, dtype=torch.float64, device=DEVICE)
    attn = torch.randn(b, g, k * k, h, w, dtype=torch.float64, device=DEVICE).softmax(2)
    grad_out = torch.randn(b, g, c, h, w, dtype=torch.float64, device=DEVICE)
    for half in (x[:, 0], x[:, 1]):
        assert not half.is_contiguous()
        for g_, e in zip(grads(triton_na2d_av, attn, half, k, grad_out),
                         grads(reference, attn, half.contiguous(), k, grad_out)):
            torch.testing.assert_close(g_, e, rtol=1e-12, atol=1e-12)


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


def test_registered_op_kernels_use_triton():
    """The op's CUDA kernels (forward and backward) are the Triton ones: called here on this device's
    tensors (under the interpreter on CPU) they equal the reference."""
    attn, value, k = make(CASES[0], torch.float64)
    grad_out = torch.randn(value.shape, dtype=torch.float64, device=DEVICE)
    expected = grads(reference, attn, value, k, grad_out)
    torch.testing.assert_close(na2d._na2d_av_cuda(attn, value, k), expected[0], rtol=1e-12, atol=1e-12)
    grad_attn, grad_value = na2d._na2d_av_backward_cuda(grad_out, attn, value, k, True, False)
    torch.testing.assert_close(grad_attn, expected[1], rtol=1e-12, atol=1e-12)
    assert grad_value.numel() == 0          # not asked for


@pytest.mark.skipif(not CUDA, reason='needs a CUDA device')
def test_op_on_cuda_dispatches_to_triton_and_matches_cpu():
    attn, value, k = make((2, 4, 16, 40, 48, 13), torch.float32, device='cpu')
    grad_out = torch.randn(value.shape)
    expected = grads(na2d.na2d_av_channels_first, attn, value, k, grad_out)
    got = grads(na2d.na2d_av_channels_first, attn.cuda(), value.cuda(), k, grad_out.cuda())
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.cpu(), e, rtol=1e-4, atol=1e-5)


def test_errors_are_one_line(monkeypatch):
    from mmoverlock.ops import na2d_triton
    attn, value, k = make(CASES[0], torch.float32)
    with pytest.raises(ValueError, match='must share device and dtype'):
        triton_na2d_av(attn, value.double(), k)
    with pytest.raises(ValueError, match='attn has 9 taps, expected kernel_size\\*\\*2 = 25'):
        triton_na2d_av(attn, value, 5)
    with pytest.raises(ValueError, match='dtype torch.int32 is not supported'):
        na2d_triton.na2d_av_forward(attn.int(), value.int(), k)
    if not CUDA:
        monkeypatch.setattr(na2d_triton, 'INTERPRET', False)
        with pytest.raises(RuntimeError, match='CPU tensors need Triton\'s interpreter: set TRITON_INTERPRET=1'):
            triton_na2d_av(attn, value, k)


# Compiles the kernels for an H100 / H200 (sm_90) in a fresh interpreter (the interpreter mode of this one
# replaces @triton.jit), with the integer arguments specialised as Triton's launcher does (unit strides).
COMPILE_FOR_HOPPER = r'''
import json
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mmoverlock.ops import na2d_triton as m

UNIT_STRIDES = {'sa_w', 'sv_w', 'so_w', 'sg_w'}
KERNELS = {'forward': (m._na2d_av_forward_kernel, {}), 'grad_attn': (m._na2d_av_grad_attn_kernel,
           {'NUM_C_BLOCKS': 1}), 'grad_value': (m._na2d_av_grad_value_kernel, {})}
result = {}
for pointer, acc in (('fp32', tl.float32), ('bf16', tl.float32), ('fp16', tl.float32), ('fp64', tl.float64)):
    for name, (kernel, extra) in KERNELS.items():
        names = list(kernel.arg_names)
        constexprs = dict(K=13, BLOCK_P=128, BLOCK_C=16, ACC=acc, **extra)
        constexprs.update({n: 1 for n in names if n in UNIT_STRIDES})
        signature = {n: 'constexpr' if n in constexprs else ('*' + pointer if n.endswith('_ptr') else 'i32')
                     for n in names}
        source = ASTSource(fn=kernel, signature=signature,
                           constexprs={(names.index(k), ): v for k, v in constexprs.items()})
        compiled = triton.compile(source, target=GPUTarget('cuda', 90, 32))
        layouts = [line for line in compiled.asm['ttgir'].splitlines() if line.startswith('#blocked')]
        result[f'{name} {pointer}'] = dict(cubin=len(compiled.asm['cubin']), layout=layouts[0])
print(json.dumps(result))
'''


def test_kernels_compile_for_hopper():
    """The pinned Triton compiles the three kernels to sm_90 machine code (no GPU needed) for every dtype the
    op takes, and lays a warp's 32 threads along the pixels of a tile (coalesced reads of a channel's row)."""
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    proc = subprocess.run([sys.executable, '-c', COMPILE_FOR_HOPPER], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result) == 12
    for name, kernel in result.items():
        assert kernel['cubin'] > 1000, name
        assert 'threadsPerWarp = [32, 1]' in kernel['layout'], (name, kernel['layout'])
