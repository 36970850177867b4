"""Row e: the backbone's depthwise convs (OverLoCK-T/S stages 1-3 at the image size: every train-form branch of the
DilatedReparamBlocks, the deploy form's merged kernel, the 3x3 ResDWConvs), forward + backward, fp32 and bf16:
PyTorch (cuDNN), the Triton kernels, PyTorch with the FFT weight gradient, and the automatic choice of
``mmoverlock.ops.depthwise_conv2d`` (what it picked per pass in the note); then row b's OverLoCK-T training step
with ``depthwise_choice='auto'`` and ``'torch'`` (AMP off and on)."""
from typing import Dict, List

import torch
import torch.nn.functional as F

from mmoverlock.ops import (FORWARD, PASSES, choice_key, choose_paths, chosen, clear_choices,
                            depthwise_conv2d, depthwise_conv_backward, fft_weight_grad_any,
                            triton_depthwise_conv2d)

from .common import DTYPES, add_ratios, feature_size, overlock_t_det, run_row, training_step


def depthwise_conv_cases(image, variants=('t', 's'), stages=(1, 2, 3)) -> Dict[tuple, List[str]]:
    """The backbone's depthwise convs at stages 1-3 of an ``image`` (H, W) batch: {(C, H, W, k, dilation,
    bias): ['T/S s1 train lk', ...]}, shapes shared by OverLoCK-T and -S listed once. Train form: each
    DilatedReparamBlock's large kernel and dilated branches; deploy form: the merged kernel with bias; and the
    two 3x3 ResDWConvs (map and MLP hidden width) of every block."""
    from mmoverlock.models.backbones.overlock import resolve_arch
    from mmoverlock.models.layers import DILATED_BRANCHES
    cases: Dict[tuple, List[tuple]] = {}
    for variant in variants:
        arch = resolve_arch(variant)
        for stage in stages:
            dim, k = arch['embed_dim'][stage - 1], arch['kernel_size'][stage - 1]
            h, w = feature_size(image[0], 2 ** (stage + 1)), feature_size(image[1], 2 ** (stage + 1))
            hidden = int(dim * arch['mlp_ratio'][stage - 1])
            branches = [(dim, bk, bd, False, 'train branch') for bk, bd in zip(*DILATED_BRANCHES[k])]
            convs = [(dim, k, 1, False, 'train lk'), *branches, (dim, k, 1, True, 'deploy merged'),
                     (dim, 3, 1, True, 'ResDWConv'), (hidden, 3, 1, True, 'ResDWConv hidden')]
            for c, kk, d, bias, role in convs:
                cases.setdefault((c, h, w, kk, d, bias), []).append((variant.upper(), stage, role))
    return {shape: _where(uses) for shape, uses in cases.items()}


def _where(uses) -> List[str]:
    """[(variant, stage, role)] -> ['T/S s1 train lk', ...]: the variants sharing a stage and role joined."""
    variants: Dict[tuple, List[str]] = {}
    for variant, stage, role in uses:
        variants.setdefault((stage, role), []).append(variant)
    return [f"{'/'.join(v)} s{stage} {role}" for (stage, role), v in variants.items()]


class _FFTWeightGrad(torch.autograd.Function):
    """PyTorch's forward and input gradient with the FFT weight gradient, on any device."""

    @staticmethod
    def forward(ctx, x, weight, bias, dilation):
        k = weight.shape[-1]
        ctx.save_for_backward(x, weight)
        ctx.dilation = dilation
        return F.conv2d(x, weight, bias, 1, dilation * (k - 1) // 2, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        k, d = weight.shape[-1], ctx.dilation
        grad_x = depthwise_conv_backward(grad_out, x, weight, d, (True, False, False))[0]
        grad_w = fft_weight_grad_any(x, grad_out, k, d)
        return grad_x, grad_w, grad_out.sum((0, 2, 3)) if ctx.needs_input_grad[2] else None, None


def _auto_note(x, k: int, d: int, bias: bool) -> str:
    """What the automatic choice picked for this conv (CUDA), or the CPU rule's paths."""
    if x.device.type != 'cuda':
        return 'CPU rule (fwd, input grad, weight grad) = ({})'.format(', '.join(choose_paths(x, k, d)))
    picked = chosen()
    picks = [picked.get(choice_key(name, x, k, d, bias if name == FORWARD else False), '?') for name in PASSES]
    return 'auto picked fwd {}, input grad {}, weight grad {}'.format(*picks)


def rows(args, device) -> List[dict]:
    """Row e: each depthwise conv forward + backward by PyTorch, the Triton kernels, PyTorch with the FFT
    weight gradient, and the automatic choice (what it picked in the note); then row b's OverLoCK-T training
    step with the choice 'auto' and 'torch' (PyTorch's conv everywhere)."""
    rows = []
    clear_choices()
    for (c, h, w, k, d, bias), where in depthwise_conv_cases(args.image).items():
        case = f"{'; '.join(where)}: B{args.batch} C{c} {h}x{w} k{k} d{d}{' +bias' if bias else ''}"
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            torch.manual_seed(0)
            x = torch.randn(args.batch, c, h, w, device=device, dtype=dtype)
            weight = (torch.randn(c, 1, k, k, device=device) / k).to(dtype)
            b = torch.randn(c, device=device, dtype=dtype) if bias else None
            grad = torch.randn_like(x)
            impls = {
                'PyTorch': lambda x_, w_, b_: F.conv2d(x_, w_, b_, 1, d * (k - 1) // 2, d, c),
                'Triton': lambda x_, w_, b_: triton_depthwise_conv2d(x_, w_, b_, d),
                'PyTorch + FFT weight grad': lambda x_, w_, b_: _FFTWeightGrad.apply(x_, w_, b_, d),
                'auto': lambda x_, w_, b_: depthwise_conv2d(x_, w_, b_, d, 'auto'),
            }
            for impl, fn in impls.items():
                row = dict(row='e', case=case, impl=impl, dtype=dtype_name)
                if impl == 'Triton' and device.type != 'cuda':
                    rows.append(dict(row, note='needs CUDA'))
                    continue
                leaves = [t.detach().requires_grad_() for t in (x, weight, b) if t is not None]

                def step(fn=fn, leaves=leaves):
                    out = fn(*leaves) if len(leaves) == 3 else fn(*leaves, None)
                    torch.autograd.backward(out, grad)
                    for t in leaves:
                        t.grad = None
                if impl == 'auto' and device.type == 'cuda':
                    step()                          # the measurement on first use stays out of the timing
                rows.append(run_row(row, step, device, args))
                if impl == 'auto':
                    rows[-1]['picked'] = _auto_note(leaves[0], k, d, bias)
    add_ratios(rows, 'PyTorch', 'speed-up vs PyTorch')
    for row in rows:
        if 'picked' in row:
            row['note'] = f"{row['note']}; {row['picked']}" if 'note' in row else row['picked']
    rows += _training_step_choice_rows(args, device)
    return rows


def _training_step_choice_rows(args, device) -> List[dict]:
    """Row b's OverLoCK-T training step with the depthwise choice 'auto', then 'torch'."""
    from mmoverlock.models.layers import set_depthwise_choice
    rows = []
    case = f'training step (row b), {args.image[0]}x{args.image[1]} batch {args.batch}'
    for amp in (False, True):
        for choice in ('auto', 'torch'):
            row = dict(row='e', case=case, impl=f'OverLoCK-T, depthwise_choice={choice!r}',
                       dtype='AMP fp16' if amp else 'fp32')
            if device.type != 'cuda':
                rows.append(dict(row, note='the choice applies on CUDA only (the CPU runs its fixed rule)'))
                continue
            model, _ = overlock_t_det()
            set_depthwise_choice(model, choice)
            model.to(device).train()
            torch.manual_seed(0)
            images = torch.randn(args.batch, 3, *args.image, device=device)
            step = training_step(model, images, amp)
            if choice == 'auto':
                clear_choices()
                step()                              # the measurement on first use stays out of the timing
            rows.append(run_row(row, step, device, args))
            del model, images, step
            torch.cuda.empty_cache()
    for row in rows:
        base = next((r for r in rows if r['impl'].endswith("'torch'") and r['dtype'] == row['dtype']
                     and 'ms' in r), None)
        if base and 'ms' in row and row is not base:
            row['note'] = f"{base['ms'] / row['ms']:.2f}x the speed of depthwise_choice='torch'"
    return rows
