"""Row f: the first-use check of the fused kernels (``mmoverlock.ops.selfcheck``): ``na2d_av``'s and
``depthwise_conv2d``'s Triton kernels on their small fixed problems against the reference, per dtype: passed or
failed, the error and the tolerance, and what the check costs once per process and dtype (its ms; Triton's
compilation of the check's kernels falls in it, unless Triton's disk cache holds them from an earlier run). A
plain run measures it first, before the other rows have compiled anything."""
from typing import List

from mmoverlock.ops import fused_kernel_checks, selfcheck
from mmoverlock.utils import compat

from .common import DTYPES


def rows(args, device) -> List[dict]:
    """Row f: the first-use check of the fused kernels (``mmoverlock.ops.selfcheck``) of ``na2d_av`` and
    ``depthwise_conv2d`` in each dtype, run afresh: passed or not, the relative error against the reference and
    the dtype's tolerance in the note, its wall time (once per process and dtype) as ms. On a CPU it runs where
    Triton's interpreter does (``TRITON_INTERPRET=1`` with Triton >= 3.0)."""
    rows = []
    for fused in fused_kernel_checks():
        kernel, load, check = fused['kernel'], fused['modules'], fused['check']
        problem, fallback = fused['problem'], fused['fallback']
        case = f'{kernel} first-use check, problem {problem}'
        for dtype_name in args.dtypes:
            row = dict(row='f', case=case, impl='Triton kernels vs reference', dtype=dtype_name)
            if not selfcheck.enabled():
                rows.append(dict(row, note=f'turned off ({selfcheck.ENV_VAR}=0): the kernels run unchecked'))
                continue
            modules = load()
            if modules is None:
                rows.append(dict(row, note=f"no usable Triton ({compat.triton_unusable(kernel)})"))
                continue
            if device.type != 'cuda' and not modules.INTERPRET:
                rows.append(dict(row, note="needs CUDA, or on a CPU Triton's interpreter (TRITON_INTERPRET=1, "
                                           "Triton >= 3.0)"))
                continue
            result = selfcheck.run_check(kernel, device, DTYPES[dtype_name], check, fallback)
            verdict = 'passed' if result.passed else f'FAILED: {result.reason}'
            rows.append(dict(row, ms=result.ms, peak_mib=None, ok=result.passed,
                             note=f'{verdict}; error {result.error:.3g}, tolerance {result.tolerance:.3g}'))
    return rows
