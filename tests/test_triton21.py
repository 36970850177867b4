"""The fused kernels on Triton 2.1 (torch 2.1's), without a GPU: the compatibility lane (``make test-compat``).

**Compiled for sm_80 and sm_90.** A fresh interpreter drives the ops' own launchers (``na2d_av_forward`` /
``na2d_av_backward`` through ``triton.autotune``, the depthwise launchers with their GPU tiles) on CPU tensors
standing in for CUDA ones, for fp32, fp16, bf16 and fp64. Triton 2.1's JIT runner is told the device is GPU 0
(its device and stream queries answered in-process) and its ``JITFunction.cache_hook`` records each kernel it
would compile -- signature, constexprs, the specialisation Triton derives from the arguments (16-byte alignment,
unit strides), ``num_warps`` / ``num_stages`` -- and answers that nothing is to be compiled or launched; the
autotuner's benchmark is replaced by one recorded run per configuration. So every configuration the autotuner
can pick is recorded, as Triton 2.1 would compile it for these launches; each is then compiled with
``triton.compile(..., cc=80)`` and ``cc=90``, to PTX and a cubin by Triton's bundled ptxas.

*The driver.* Triton 2.1's ``compile`` also builds the kernel's launcher (a C extension, with the system's C
compiler) and links it with ``-lcuda``, in the directories ``ldconfig -p`` lists (``triton/common/build.py``,
``libcuda_dirs``); then it imports it, which resolves the three driver functions the launcher calls
(``cuLaunchKernel``, ``cuPointerGetAttribute``, ``cuGetErrorString``). Without a driver the test supplies both:
a stub ``libcuda.so`` defining those three functions (compiled from :data:`STUB_LIBCUDA` with gcc into a tmp
dir; nothing is launched through it) and an ``ldconfig`` on ``PATH`` that lists it; ``LD_LIBRARY_PATH`` lets
the import find it. A GPU machine's driver provides both.

*Registers and spills.* ``CompiledKernel.n_regs`` / ``n_spills`` come from the driver (``cuFuncGetAttribute``
when the cubin is loaded on a GPU); here the same figures come from ptxas's own report (``-v``: registers, spill
stores + loads in bytes), run on the PTX Triton made. The test prints them per kernel (``pytest -s``); it fails
on a compile error, not on spills.

*Cost.* 144 compiles (the 10 configurations of the three na2d kernels + the looped grad_attn's 3, and 5 depthwise
specialisations, x 4 dtypes x 2 archs), one core each: about 45 s of CPU time, measured as 1.5 min of wall time
on this project's 2-core machine while other jobs ran (6 min under a load average of 17). Nothing is cached
between runs (a fresh ``TRITON_CACHE_DIR``), so every compile is real; fewer would leave a configuration or a
dtype that the autotuner can pick uncompiled.

**Numbers under Triton 2.1's interpreter.** None: it cannot run these kernels on CPU.
:func:`test_triton21_interpreter_cannot_run_the_kernels` shows why, construct by construct; the numbers of the
same kernel source are checked under Triton 3's interpreter in the main lane (``tests/test_na2d_triton.py``,
``tests/test_depthwise_triton.py``), and on the GPU every fused kernel checks its own numbers on first use
(``mmoverlock.ops.selfcheck``, ``tests/test_kernel_selfcheck.py``).
"""
import json
import os
import subprocess
import sys

import pytest

from mmoverlock.utils import compat

VERSION = compat.triton_version()
if VERSION is None or compat.parse_version(VERSION)[:1] != (2, ):
    pytest.skip(f"Triton 2.x's compiler and interpreter (the compatibility lane); this is triton {VERSION}, whose "
                f'kernels tests/test_na2d_triton.py and tests/test_depthwise_triton.py check', allow_module_level=True)

import torch  # noqa: E402
import triton  # noqa: E402

from .conftest import ROOT  # noqa: E402

#: the driver functions Triton 2.1's launcher calls; nothing is launched in the test
STUB_LIBCUDA = r'''
typedef int CUresult;
CUresult cuGetErrorString(CUresult error, const char **text) { *text = "stub libcuda (no driver)"; return 0; }
CUresult cuLaunchKernel(void) { return 100; }          /* CUDA_ERROR_NO_DEVICE */
CUresult cuPointerGetAttribute(void) { return 100; }
'''

COMPILE = r'''
import json, os, re, subprocess, sys, tempfile, time
import torch
import triton
import triton.runtime.autotuner as autotuner
import triton.runtime.jit as jit
from triton.common.backend import path_to_ptxas

# No GPU: the JIT runner's device queries answer GPU 0; Triton's cache hook records what would be compiled and,
# answering True, skips compiling and launching it; the autotuner's benchmark runs each configuration once.
jit.get_current_device = lambda: 0
jit.set_current_device = lambda device: None
jit.get_cuda_stream = lambda device=None: 0
jit.JITFunction._conclude_device_type = lambda self, device_types, pinned: 'cuda'
RECORDED, BENCH = {}, []


def record(key, repr, fn, compile, is_manual_warmup, already_compiled):
    RECORDED.setdefault(compile['key'], (fn.name, compile))
    return True


def bench(fn, warmup, rep, quantiles):
    BENCH.append((warmup, rep))
    fn()
    return [float(len(BENCH))] * 3


jit.JITFunction.cache_hook = record
autotuner.do_bench = bench
from mmoverlock.ops import depthwise_triton, na2d_triton  # noqa: E402  (after the patches: the kernels' runners)
from mmoverlock.ops import triton_common  # noqa: E402

assert not na2d_triton.INTERPRET and all(t is not None for t in na2d_triton.TUNED_KERNELS.values())
check = triton_common.check_kernel_tensors          # CPU tensors stand in for CUDA ones
na2d_triton.check_kernel_tensors = depthwise_triton.check_kernel_tensors = (
    lambda op, name, first, others, interpret: check(op, name, first, others, True))
KERNELS = {k.fn.__name__: k for k in (*na2d_triton.KERNELS.values(), *depthwise_triton.KERNELS.values())}
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16, 'fp64': torch.float64}
for dtype_name, dtype in DTYPES.items():
    for tuned in na2d_triton.TUNED_KERNELS.values():
        tuned.cache.clear()         # Triton 2.x keys the tuning without the dtypes: measure every dtype afresh
    # na2d_av: OverLoCK-T stage 3 of an 800x1333 batch (C16, 50x84, k13); C40 (two channel blocks) for grad_attn
    attn, value = torch.randn(1, 2, 169, 50, 84).to(dtype), torch.randn(1, 2, 16, 50, 84).to(dtype)
    na2d_triton.na2d_av_forward(attn, value, 13)
    na2d_triton.na2d_av_backward(value, attn, value, 13)
    attn, value = torch.randn(1, 1, 49, 25, 42).to(dtype), torch.randn(1, 1, 40, 25, 42).to(dtype)
    na2d_triton.na2d_av_backward(value, attn, value, 7, value_grad=False)
    # depthwise: k17 NCHW with a bias, 9x9 dilation 2 channels-last; forward, input and weight gradient
    for k, d, layout, bias in ((17, 1, torch.contiguous_format, True), (9, 2, torch.channels_last, False)):
        x = torch.randn(2, 64, 56, 56).to(dtype).contiguous(memory_format=layout)
        weight = torch.randn(64, 1, k, k).to(dtype)
        depthwise_triton.depthwise_forward(x, weight, torch.randn(64).to(dtype) if bias else None, d)
        depthwise_triton.depthwise_input_grad(x, weight, d, like=x)
        depthwise_triton.depthwise_weight_grad(x, x, k, d)
ptxas, _ = path_to_ptxas()
rows, start = [], time.perf_counter()
for arch in (80, 90):
    for name, kwargs in RECORDED.values():
        kwargs = {k: v for k, v in kwargs.items() if k not in ('key', 'device')}
        compiled = triton.compile(KERNELS[name], cc=arch, **kwargs)
        with tempfile.NamedTemporaryFile('w', suffix='.ptx', delete=False) as f:
            f.write(compiled.asm['ptx'])
        report = subprocess.run([ptxas, f'-arch=sm_{arch}a' if arch == 90 else f'-arch=sm_{arch}', '-v', f.name,
                                 '-o', os.devnull], capture_output=True, text=True, check=True).stderr
        os.unlink(f.name)
        pointer = next(t for i, t in sorted(kwargs['signature'].items()) if t.startswith('*'))
        constants = {KERNELS[name].arg_names[i]: v for i, v in kwargs['constants'].items()
                     if KERNELS[name].arg_names[i].isupper() and KERNELS[name].arg_names[i] != 'ACC'}
        rows.append(dict(kernel=name, arch=arch, dtype=pointer[1:], constants=constants, num_warps=kwargs['num_warps'],
                         num_stages=kwargs['num_stages'], cubin=len(compiled.asm['cubin']),
                         registers=[int(v) for v in re.findall(r'Used (\d+) registers', report)],
                         spilled=[int(a) + int(b) for a, b in re.findall(
                             r'(\d+) bytes spill stores, (\d+) bytes spill loads', report)]))
print(json.dumps(dict(rows=rows, bench=sorted(set(BENCH)), seconds=time.perf_counter() - start)))
'''


@pytest.fixture(scope='module')
def compiled(tmp_path_factory):
    """The recorded launches compiled for sm_80 and sm_90 in a fresh interpreter: its rows (module docstring)."""
    tmp = tmp_path_factory.mktemp('triton21')
    (tmp / 'stub.c').write_text(STUB_LIBCUDA)
    subprocess.run(['gcc', '-shared', '-fPIC', str(tmp / 'stub.c'), '-o', str(tmp / 'libcuda.so')], check=True)
    (tmp / 'bin').mkdir()
    ldconfig = tmp / 'bin' / 'ldconfig'
    ldconfig.write_text(f'#!/bin/sh\necho "\tlibcuda.so (libc6,x86-64) => {tmp / "libcuda.so"}"\n')
    ldconfig.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env.update(PATH=f"{tmp / 'bin'}{os.pathsep}{env['PATH']}", TRITON_CACHE_DIR=str(tmp / 'cache'),
               LD_LIBRARY_PATH=os.pathsep.join(p for p in (str(tmp), env.get('LD_LIBRARY_PATH')) if p))
    proc = subprocess.run([sys.executable, '-c', COMPILE], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_kernel_configuration_and_dtype_compiles_for_sm80_and_sm90(compiled):
    """Every autotuning configuration of the three na2d_av kernels (and the looped grad_attn of C > 32), the
    depthwise kernels of both layouts, each in fp32 / fp16 / bf16 / fp64, compile for sm_80 and sm_90; the
    autotuner measured each configuration with the 5 ms / 25 ms budget (``compat.triton_autotune``)."""
    from mmoverlock.ops import na2d_triton
    rows = compiled['rows']
    print(f"\nTriton {triton.__version__}: {len(rows)} compiles in {compiled['seconds']:.0f} s")
    for r in rows:
        print(f"sm_{r['arch']} {r['kernel']} {r['dtype']} {r['constants']} warps {r['num_warps']} stages "
              f"{r['num_stages']}: {r['registers']} registers, {r['spilled']} bytes spilled")
    assert compiled['bench'] == [[5, 25]]
    configs = {'_na2d_av_forward_kernel': na2d_triton.FORWARD_CONFIGS,
               '_na2d_av_grad_attn_kernel': na2d_triton.GRAD_ATTN_CONFIGS,
               '_na2d_av_grad_value_kernel': na2d_triton.GRAD_VALUE_CONFIGS}
    for arch in (80, 90):
        for dtype in ('fp32', 'fp16', 'bf16', 'fp64'):
            mine = [r for r in rows if r['arch'] == arch and r['dtype'] == dtype]
            for name, kernel_configs in configs.items():
                got = {(tuple(sorted((k, v) for k, v in r['constants'].items() if k.startswith('BLOCK_')
                                     and k != 'BLOCK_C')), r['num_warps'], r['num_stages'])
                       for r in mine if r['kernel'] == name and r['constants'].get('NUM_C_BLOCKS', 1) == 1}
                want = {(tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages) for c in kernel_configs}
                assert got == want, (arch, dtype, name)
            looped = [r for r in mine if r['constants'].get('NUM_C_BLOCKS', 1) == 2]
            assert len(looped) == len(na2d_triton.GRAD_ATTN_CONFIGS), (arch, dtype)
            depthwise = [r for r in mine if r['kernel'].startswith('_dw_')]
            assert {r['kernel'] for r in depthwise} == {'_dw_conv_kernel', '_dw_weight_grad_kernel'}
            assert len(depthwise) >= 5, (arch, dtype, depthwise)    # the forward of channels-last is its input grad
    for r in rows:
        assert r['cubin'] > 1000 and len(r['registers']) == 1 and 0 < r['registers'][0] <= 255, r
        assert len(r['spilled']) == 1, r


def test_triton21_interpreter_cannot_run_the_kernels():
    """Triton 2.1's interpreter, ``triton.jit(interpret=True)`` (``triton/interpreter/``): a grid of Python calls
    of the kernel body with ``tl`` swapped for a proxy over torch tensors. It cannot run the kernels on CPU, nor
    would it run them on a GPU:

    * every tensor it makes is on CUDA (``device="cuda"``: program ids, ``tl.arange``, ``tl.zeros``, the pointers
      it wraps) and its loads assert CUDA pointers -- without a GPU the first pointer fails;
    * ``tl.zeros`` takes no float64 (``Unsupported dtype fp64``: the fp64 accumulator of gradcheck);
    * constexpr arithmetic (``K // 2``, ``DIL * (K - 1)``, ``NUM_C_BLOCKS * BLOCK_C``): its constexpr wrapper has
      no arithmetic operators;
    * ``x.to(tl.float32)`` hands a Triton dtype to ``torch.Tensor.to``; ``ptr.dtype.element_ty`` reads a torch
      dtype (the interpreter's pointers are int64 tensors);
    * a ``@triton.jit`` helper called from the kernel (``clamped_start``) runs as a grid of its own and returns
      nothing.

    Each item is shown here on Triton 2.1 itself; where all fail the compile test stands for it."""
    import triton.language as tl
    from triton.interpreter import tl_lang
    from triton.interpreter.interpreter import GridSelector

    from mmoverlock.ops import na2d_triton

    kernel = triton.jit(na2d_triton.KERNELS['forward'].fn, interpret=True)
    assert isinstance(kernel, GridSelector)
    attn, value = torch.randn(1, 1, 9, 4, 4), torch.randn(1, 1, 2, 4, 4)
    out = torch.empty_like(value)
    with pytest.raises((RuntimeError, AssertionError)) as err:         # a CPU-only torch build: AssertionError
        kernel[(1, 1, 1)](attn, value, out, 1, 2, 4, 4, 16, *attn.stride(), *value.stride(), *out.stride(),
                          K=3, BLOCK_C=2, ACC=tl.float32, BLOCK_P=16)
    assert 'NVIDIA driver' in str(err.value) or 'CUDA' in str(err.value), err.value
    proxy = tl_lang.TritonLangProxy(None, None)
    with pytest.raises(TypeError, match='Unsupported dtype fp64'):
        proxy.zeros([tl_lang.debugger_constexpr(4)], tl.float64)
    with pytest.raises(TypeError):
        tl_lang.debugger_constexpr(13) // 2
    with pytest.raises(TypeError):
        tl_lang.WrappedTensor(torch.zeros(2)).to(tl.float32)
    assert tl_lang.WrappedTensor(torch.zeros(1, dtype=torch.int64)).dtype == torch.int64      # no element_ty
    helper = triton.jit(na2d_triton.clamped_start.fn, interpret=True)
    assert isinstance(helper, GridSelector)                       # called in a kernel: a grid of one, returns None
