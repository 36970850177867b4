"""The one module that knows torch's and Triton's versions: every API mmoverlock uses that arrived after its floor
(torch 2.1, the newest torch with OpenMMLab's prebuilt mmcv 2.1.0 wheels; docs/compat.md) is reached through
here, with the older spelling or a stated fallback where the API is missing.

* ``torch.library.register_fake`` / ``register_autograd`` (torch 2.4): on older torch the fake implementation is
  registered with ``torch.library.impl_abstract`` (2.2, 2.3) or not at all (2.1: ``torch.compile`` then cannot
  trace through the op), and autograd is an ``autograd.Function`` registered as the op's ``Autograd`` kernel
  (:func:`register_autograd`): the same kernels, forward and backward, and the same Python API.
* ``torch.serialization.add_safe_globals`` (2.4): missing on older torch, whose ``weights_only=True`` has no
  allow-list (plain state dicts load, mmengine checkpoints with a ``HistoryBuffer`` or numpy ``meta`` do not).
  :func:`safe_load_kwargs` gives ``torch.load`` the same allow-list there through a restricted unpickler
  (Python's documented ``find_class`` restriction: torch's own weights-only types plus mmoverlock's list), so
  :func:`mmoverlock.checkpoint.io.read_checkpoint` reads the same checkpoints, and refuses the same, on every
  torch.
* ``torch.get_autocast_dtype`` / ``torch.is_autocast_enabled(device)`` (2.4), ``torch.compiler.is_compiling``
  (2.3) and ``torch.utils.flop_counter.register_flop_formula`` (2.2): the older spellings (per-device queries,
  dynamo's flag, the counter's module-level ``flop_mapping``); ``torch.onnx.export(dynamo=False)`` (the keyword
  arrived in 2.5 with the dynamo exporter; older torch has only the TorchScript exporter): :func:`onnx_export_kwargs`;
  torch 2.1's tracer hands out sizes as 0-d tensors: :func:`static_int`.
* ``torch.amp.GradScaler(device)`` (2.3): :func:`grad_scaler` (``torch.cuda.amp.GradScaler`` before);
  ``torch.optim.AdamW(fused=True)`` on CPU (2.4): :func:`fused_adamw_supported`.
* Triton: the kernels (``mmoverlock.ops.*_triton``) run on Triton >= 2.1 (:data:`TRITON_MIN_VERSION`; torch
  2.1's). :func:`triton_autotune` hands ``triton.autotune`` its benchmark budget as Triton 3 takes it
  (``do_bench=``) or as Triton 2 does (``warmup=`` / ``rep=``); Triton's CPU interpreter
  (``TRITON_INTERPRET=1``, CPU tensors) is Triton >= 3.0's (:func:`triton_interpreter_active`: Triton 2.1's
  interpreter, ``triton.jit(interpret=True)``, creates its tensors on CUDA and cannot run the kernels, see
  docs/compat.md). :func:`triton_unusable` says why an installed Triton cannot run the kernels (the ops then
  fall back to their CPU-algorithm kernels on the device).
"""
import codecs
import inspect
import os
import pickle
import re
import sys
import types
import warnings
from importlib import metadata
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import _compat_pickle
import torch

__all__ = ['TORCH_VERSION', 'TRITON_MIN_VERSION', 'HAS_REGISTER_AUTOGRAD', 'HAS_SAFE_GLOBALS', 'FAKE_REGISTRATION',
           'parse_version', 'register_fake', 'register_autograd', 'add_safe_globals', 'safe_load_kwargs',
           'autocast_dtype', 'is_autocast_enabled', 'is_compiling', 'register_flop_formula',
           'onnx_export_kwargs', 'static_int', 'grad_scaler', 'fused_adamw_supported', 'triton_version',
           'triton_unusable', 'triton_autotune', 'triton_interpreter_active', 'TRITON_INTERPRETER_MIN_VERSION']


def parse_version(text: str) -> Tuple[int, ...]:
    """'2.1.2+cu121' -> (2, 1, 2): the leading numeric release fields of a version string ('3.1.0rc1' ->
    (3, 1, 0))."""
    match = re.match(r'\d+(\.\d+)*', text)
    return tuple(int(part) for part in match.group(0).split('.')) if match else ()


#: torch's release, e.g. (2, 1, 2)
TORCH_VERSION = parse_version(torch.__version__)
#: the oldest Triton the kernels of mmoverlock.ops.*_triton run on (torch 2.1's; compiled for sm_80 / sm_90 with it
#: in ``make test-compat``: tests/test_triton21.py)
TRITON_MIN_VERSION = (2, 1)
#: the oldest Triton whose interpreter (``TRITON_INTERPRET=1``) runs the kernels on CPU tensors
TRITON_INTERPRETER_MIN_VERSION = (3, 0)
#: torch.library.register_autograd exists (torch >= 2.4); otherwise :func:`register_autograd` uses a Function
HAS_REGISTER_AUTOGRAD = hasattr(torch.library, 'register_autograd')
#: torch.serialization.add_safe_globals exists (torch >= 2.4)
HAS_SAFE_GLOBALS = hasattr(torch.serialization, 'add_safe_globals')
#: how fake (meta) implementations are registered: 'register_fake' (torch >= 2.4), 'impl_abstract' (2.2, 2.3)
#: or None (2.1: none, so torch.compile cannot trace through mmoverlock's ops)
FAKE_REGISTRATION = ('register_fake' if hasattr(torch.library, 'register_fake')
                     else 'impl_abstract' if hasattr(torch.library, 'impl_abstract') else None)


def register_fake(qualname: str, fn: Callable, lib: torch.library.Library) -> bool:
    """Register ``fn`` as the fake implementation of op ``qualname`` where torch can; False where it cannot
    (torch 2.1)."""
    if FAKE_REGISTRATION == 'register_fake':
        torch.library.register_fake(qualname, fn, lib=lib)
    elif FAKE_REGISTRATION == 'impl_abstract':
        torch.library.impl_abstract(qualname, fn, lib=lib)
    return FAKE_REGISTRATION is not None


def register_autograd(qualname: str, backward: Callable, setup_context: Callable,
                      lib: torch.library.Library) -> None:
    """``torch.library.register_autograd(qualname, backward, setup_context=..., lib=lib)``; on torch < 2.4 the
    same ``setup_context(ctx, inputs, output)`` and ``backward(ctx, *grads)`` in an ``autograd.Function``
    registered as the op's ``Autograd`` kernel (what torch 2.1's own custom ops do): its forward runs the op's
    device kernel below autograd."""
    if HAS_REGISTER_AUTOGRAD:
        torch.library.register_autograd(qualname, backward, setup_context=setup_context, lib=lib)
        return
    namespace, name = qualname.split('::')
    op = getattr(getattr(torch.ops, namespace), name).default

    def forward(ctx, *args):
        with torch._C._AutoDispatchBelowAutograd():
            output = op(*args)
        setup_context(ctx, args, output)
        return output

    function = type(f'{namespace}_{name}', (torch.autograd.Function,),     # grad_fn: <mmoverlock_na2d_avBackward>
                    {'forward': staticmethod(forward), 'backward': staticmethod(backward)})
    lib.impl(name, function.apply, 'Autograd')


def add_safe_globals(globals_list: list) -> bool:
    """Allow-list ``globals_list`` for ``torch.load(weights_only=True)`` where torch has an allow-list
    (>= 2.4); False where it has none."""
    if HAS_SAFE_GLOBALS:
        torch.serialization.add_safe_globals(globals_list)
    return HAS_SAFE_GLOBALS


def _global_name(entry) -> Tuple[str, Any]:
    """('module.qualname', object) of an allow-list entry: an object, or (object, 'the name pickles use')."""
    if isinstance(entry, tuple):
        return entry[1], entry[0]
    return f'{entry.__module__}.{entry.__qualname__}', entry


def _allow_list_pickle(globals_list: Sequence) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` whose unpickler resolves only torch's weights-only globals and
    ``globals_list``; any other global raises ``pickle.UnpicklingError('Unsupported global: GLOBAL ...')``, the
    refusal torch >= 2.4's weights-only unpickler gives. Every callable a pickle can run comes through
    ``find_class``, so restricting it is what keeps the load safe."""
    from torch._weights_only_unpickler import _get_allowed_globals
    allowed: Dict[str, Any] = dict(_get_allowed_globals())
    allowed['_codecs.encode'] = codecs.encode    # protocol-2 pickles of bytes (numpy arrays), as torch >= 2.4 allows
    allowed.update(_global_name(entry) for entry in globals_list)

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            # protocol-2 pickles (torch.save's) name Python 2 modules (__builtin__.getattr): pickle's own mapping
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            full = f'{module}.{name}'
            if full in allowed:
                return allowed[full]
            raise pickle.UnpicklingError(f'Unsupported global: GLOBAL {full} is not an allowed global')

    def load(file, **kwargs):
        return Unpickler(file, **kwargs).load()

    module = types.ModuleType('mmoverlock_allow_list_pickle')
    module.Unpickler, module.load = Unpickler, load
    return module


def safe_load_kwargs(globals_list: Sequence) -> dict:
    """The ``torch.load`` keywords of a safe load that also admits ``globals_list``: ``weights_only=True`` with
    the list added to torch's allow-list (torch >= 2.4, process-wide and idempotent), or on older torch a
    restricted ``pickle_module`` with the same allow-list (:func:`_allow_list_pickle`; torch refuses a
    ``pickle_module`` together with ``weights_only=True``)."""
    if add_safe_globals(list(globals_list)):
        return {'weights_only': True}
    return {'weights_only': False, 'pickle_module': _allow_list_pickle(globals_list)}


def autocast_dtype(device_type: str) -> torch.dtype:
    """``torch.get_autocast_dtype(device_type)``; the per-device getters before torch 2.4."""
    if hasattr(torch, 'get_autocast_dtype'):
        return torch.get_autocast_dtype(device_type)
    return torch.get_autocast_gpu_dtype() if device_type == 'cuda' else torch.get_autocast_cpu_dtype()


def is_autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``; the per-device queries before torch 2.4."""
    if TORCH_VERSION >= (2, 4):
        return torch.is_autocast_enabled(device_type)
    return torch.is_autocast_enabled() if device_type == 'cuda' else torch.is_autocast_cpu_enabled()


def is_compiling() -> bool:
    """``torch.compiler.is_compiling()``; before torch 2.3 dynamo's own flag (False while dynamo is not even
    imported, without importing it)."""
    is_compiling_fn = getattr(torch.compiler, 'is_compiling', None)
    if is_compiling_fn is not None:
        return is_compiling_fn()
    dynamo = sys.modules.get('torch._dynamo')
    return dynamo is not None and dynamo.is_compiling()


def register_flop_formula(op, formula: Callable) -> None:
    """Count ``op`` (an op overload packet) in ``torch.utils.flop_counter`` with ``formula(*shapes, out_shape=...)``:
    ``register_flop_formula`` where it exists (torch >= 2.2), else the module's ``flop_mapping`` (torch 2.1:
    every FlopCounterMode created afterwards copies it)."""
    from torch.utils import flop_counter
    if hasattr(flop_counter, 'register_flop_formula'):
        flop_counter.register_flop_formula(op)(formula)
    else:
        flop_counter.flop_mapping[op] = formula


def static_int(size) -> int:
    """A size as a Python int. torch 2.1's tracer (TorchScript, ONNX export) hands out tensor sizes as 0-d
    tensors, which ``F.conv2d``'s padding and groups refuse, and an export's traced sizes are tensors too; ints
    are returned as they are. For sizes that are constants of the trace -- a weight's shape, or a map size in an
    export of one input size (:func:`mmoverlock.ops.fixed_size_export`) -- so the tracer's warning about a
    traced value turned into a constant is not raised."""
    if not isinstance(size, torch.Tensor):
        return size
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        return int(size)


def onnx_export_kwargs() -> dict:
    """The keywords that make ``torch.onnx.export`` take the TorchScript exporter: ``dynamo=False`` where the
    keyword exists (torch >= 2.5), none where that exporter is the only one."""
    return {'dynamo': False} if 'dynamo' in inspect.signature(torch.onnx.export).parameters else {}


def grad_scaler(device_type: str, enabled: bool = True):
    """``torch.amp.GradScaler(device_type, enabled=enabled)`` (torch >= 2.3); before, CUDA's own
    ``torch.cuda.amp.GradScaler`` (torch 2.1 has no CPU scaler: on CPU only ``enabled=False`` is accepted)."""
    if hasattr(torch.amp, 'GradScaler'):
        return torch.amp.GradScaler(device_type, enabled=enabled)
    if device_type != 'cuda' and enabled:
        raise ValueError(f'grad_scaler: torch {torch.__version__} has no gradient scaler for {device_type!r} '
                         f"(torch.amp.GradScaler arrived in 2.3); use 'cuda' or enabled=False")
    return torch.cuda.amp.GradScaler(enabled=enabled)


def fused_adamw_supported(device_type: str) -> bool:
    """Whether ``torch.optim.AdamW(fused=True)`` takes parameters on ``device_type``: CUDA on every supported
    torch, CPU from torch 2.4."""
    return device_type == 'cuda' or TORCH_VERSION >= (2, 4)


def triton_version() -> Optional[str]:
    """The installed Triton's version, or None where it is not installed (read without importing triton)."""
    try:
        return metadata.version('triton')
    except metadata.PackageNotFoundError:
        return None


def triton_unusable(op: str, version: Optional[str] = None) -> Optional[str]:
    """Why ``op``'s Triton kernels cannot run with Triton ``version`` (default: the installed one), in one line,
    or None where they can."""
    version = triton_version() if version is None else version
    need = '.'.join(map(str, TRITON_MIN_VERSION))
    if version is None:
        return f'{op}: triton is not installed; the fused kernels need triton >= {need} (pip install triton)'
    if parse_version(version) < TRITON_MIN_VERSION:
        return (f'{op}: triton {version} is installed; the fused kernels need triton >= {need} '
                f'(torch >= 2.1 brings it)')
    return None


def triton_interpreter_active(version: Optional[str] = None) -> bool:
    """``TRITON_INTERPRET=1`` is set and the installed Triton (or ``version``) has the interpreter that runs
    the kernels on CPU tensors (>= :data:`TRITON_INTERPRETER_MIN_VERSION`). Triton 2.1 ignores the variable: its
    interpreter (``triton.jit(interpret=True)``) puts every tensor it makes on CUDA and lacks constructs the
    kernels use (tests/test_triton21.py names them)."""
    version = triton_version() if version is None else version
    return (os.environ.get('TRITON_INTERPRET', '0') == '1' and version is not None
            and parse_version(version) >= TRITON_INTERPRETER_MIN_VERSION)


def triton_autotune(configs: list, key: List[str], warmup_ms: int = 5, rep_ms: int = 25) -> Callable:
    """``triton.autotune(configs=configs, key=key)`` measuring each configuration for ``warmup_ms`` of warm-up
    and ``rep_ms`` of timed runs: Triton >= 3 takes the budget as a ``do_bench`` function (its ``warmup`` /
    ``rep`` arguments are deprecated there), Triton 2.x as ``warmup`` / ``rep``. Triton 2.x keys the tuning on
    the named arguments only; Triton 3 adds the tensors' dtypes to the key."""
    import triton
    if 'do_bench' in inspect.signature(triton.autotune).parameters:
        import triton.testing

        def bench(fn, quantiles=None):
            return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=quantiles)
        return triton.autotune(configs=configs, key=key, do_bench=bench)
    return triton.autotune(configs=configs, key=key, warmup=warmup_ms, rep=rep_ms)
