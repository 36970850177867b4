"""Row d: determinism. The aggregation op's output and gradients bitwise equal over two runs (a failure otherwise:
its kernels use no atomics); the backbone's gradients with deterministic cuDNN, compared the same way, with the
ops PyTorch lists as non-deterministic on the device named in the note (on CUDA the backward of the 7x7 region
pooling, ``adaptive_avg_pool2d``, and of ``upsample_bilinear2d`` use atomics)."""
import re
import warnings
from typing import Callable, List

import torch

from mmoverlock.ops import na2d_av_channels_first

from .common import feature_size, overlock_t_det

#: the Focus-Net stage-3 aggregation of OverLoCK-T (groups, channels per group, kernel) that row d checks
DETERMINISM_OP = (8, 16, 13)


def nondeterministic_ops(fn: Callable[[], object]) -> List[str]:
    """The ops ``fn`` runs that have no deterministic implementation on this device, by PyTorch's own list:
    what ``torch.use_deterministic_algorithms(True, warn_only=True)`` warns about (none on a CPU)."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            fn()
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    names = []
    for warning in caught:
        match = re.match(r'(\S+) does not have a deterministic implementation', str(warning.message))
        if match and match.group(1) not in names:
            names.append(match.group(1))
    return names


def rows(args, device) -> List[dict]:
    """Row d: the aggregation op's output and gradients must be bitwise equal over two runs (its kernels use no
    atomics); the backbone's gradients are compared too, and the ops that are non-deterministic by design on
    this device (PyTorch's list, e.g. adaptive_avg_pool2d's and upsample_bilinear2d's backward on CUDA) are
    named, so a difference they explain is not reported as a failure."""
    rows = []
    groups, channels, k = DETERMINISM_OP
    # a stride-16 map of the image, at least k on each side
    h, w = (max(feature_size(length, 16), k) for length in args.image)
    torch.manual_seed(0)
    attn = torch.randn(args.batch, groups, k * k, h, w, device=device).softmax(2).requires_grad_()
    value = torch.randn(args.batch, groups, channels, h, w, device=device, requires_grad=True)
    grad = torch.randn_like(value)

    def op_outputs():
        out = na2d_av_channels_first(attn, value, k)
        return (out, *torch.autograd.grad(out, (attn, value), grad))

    cases = [(f'na2d_av op, B{args.batch} G{groups} C{channels} {h}x{w} k{k}', 'forward + backward twice',
              op_outputs)]
    try:
        model, _ = overlock_t_det()
        model.to(device).train()
        images = torch.randn(1, 3, *args.image, device=device)

        def backbone_grads():
            torch.manual_seed(1)                   # the same drop-path draws in both passes
            loss = sum(o.mean() for o in model(images))
            return torch.autograd.grad(loss, list(model.parameters()))
        cases.append(('OverLoCK-T backbone (cudnn.deterministic)', 'backward twice', backbone_grads))
    except ImportError as err:
        rows.append(dict(row='d', case='OverLoCK-T backbone', impl='-', dtype='fp32', note=f'skipped: {err}'))
    deterministic = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    try:
        for case, impl, fn in cases:
            by_design = nondeterministic_ops(fn)
            first, second = fn(), fn()
            equal = all(torch.equal(a, b) for a, b in zip(first, second))
            worst = max((a - b).abs().max().item() for a, b in zip(first, second))
            if equal:
                note = 'bitwise equal'
            elif by_design:
                note = f'differs by {worst:.3g}: non-deterministic by design here: {", ".join(by_design)}'
            else:
                note = f'NOT bitwise equal (max diff {worst:.3g})'
            rows.append(dict(row='d', case=case, impl=impl, dtype='fp32', note=note, bitwise_equal=equal,
                             nondeterministic_by_design=by_design, ok=equal or bool(by_design)))
    finally:
        torch.backends.cudnn.deterministic = deterministic
    return rows
