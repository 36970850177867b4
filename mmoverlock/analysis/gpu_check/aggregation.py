"""Row a: the aggregation ``na2d_av`` forward+backward at the OverLoCK-T and -S Focus-Net stage-3/4 shapes of a
COCO batch (800x1333, batch 2; the large-kernel half of a block), fp32 and bf16: the fused Triton kernels, the
op's CPU kernels run on the device (per-window matmuls, dense operator or tap loop by map size; the baseline of
the speed-up notes), the official unfold fallback, a cuDNN depthwise conv of the same k (the speed to aim at)
and the relative-position-bias + softmax over taps that produces the kernels (whether fusing it into the forward
could pay). Time and peak memory growth."""
from typing import List

import torch
import torch.nn.functional as F

from mmoverlock.analysis.shapes import focus_aggregation_shapes
from mmoverlock.ops import na2d_av_cpu_kernels, na2d_av_unfold, triton_na2d_av

from .common import DTYPES, add_ratios, feature_size, run_row


class _CPUKernels(torch.autograd.Function):
    """The op's CPU kernels (per-window matmuls, dense operator or tap loop by map size) with autograd, run on
    any device: what CUDA runs without Triton."""

    @staticmethod
    def forward(ctx, attn, value, kernel_size):
        ctx.save_for_backward(attn, value)
        ctx.kernel_size = kernel_size
        return na2d_av_cpu_kernels()[0](attn, value, kernel_size)

    @staticmethod
    def backward(ctx, grad_out):
        attn, value = ctx.saved_tensors
        return (*na2d_av_cpu_kernels()[1](grad_out, attn, value, ctx.kernel_size, True, True), None)


def _unfold(attn, value, k):
    out = na2d_av_unfold(attn.permute(0, 1, 3, 4, 2), value.permute(0, 1, 3, 4, 2), k)
    return out.permute(0, 1, 4, 2, 3)


def _triton(attn, value, k):
    return triton_na2d_av(attn, value, k)


def _depthwise(attn, value, k, weight):
    """A depthwise k x k conv over the same B x (G*C) x H x W map (cuDNN on a GPU)."""
    b, g, c, h, w = value.shape
    return F.conv2d(value.reshape(b, g * c, h, w), weight, padding=k // 2, groups=g * c)


def rows(args, device) -> List[dict]:
    """Row a (module docstring)."""
    rows = []
    h0, w0 = args.image
    for model, stages in focus_aggregation_shapes(('t', 's')).items():
        for stage, (dim, groups, k, stride) in stages.items():
            h, w = feature_size(h0, stride), feature_size(w0, stride)
            c = dim // (2 * groups)
            case = f'{model} stage {stage}: B{args.batch} G{groups} C{c} {h}x{w} k{k}'
            if min(h, w) < k:
                rows.append(dict(row='a', case=case, impl='-', dtype='-',
                                 note=f'skipped: the {h}x{w} map is smaller than k={k} (use a larger --image)'))
                continue
            for dtype_name in args.dtypes:
                dtype = DTYPES[dtype_name]
                torch.manual_seed(0)
                attn = torch.randn(args.batch, groups, k * k, h, w, device=device).softmax(2).to(dtype)
                value = torch.randn(args.batch, groups, c, h, w, device=device, dtype=dtype)
                grad = torch.randn_like(value)
                weight = torch.randn(groups * c, 1, k, k, device=device, dtype=dtype)
                logits = torch.randn(args.batch, groups, k * k, h, w, device=device, dtype=dtype)
                bias = torch.randn(groups, k * k, h, w, device=device, dtype=dtype)
                impls = {
                    'triton': lambda a, v: _triton(a, v, k),
                    'CPU kernels': lambda a, v: _CPUKernels.apply(a, v, k),
                    'unfold': lambda a, v: _unfold(a, v, k),
                    'cuDNN depthwise conv': lambda a, v: _depthwise(a, v, k, weight),
                    'bias + softmax over taps': lambda a, v: (a + bias).float().softmax(2).to(dtype),
                }
                for impl, fn in impls.items():
                    row = dict(row='a', case=case, impl=impl, dtype=dtype_name)
                    if impl == 'triton' and device.type != 'cuda':
                        rows.append(dict(row, note='needs CUDA'))
                        continue
                    a_in = (logits if impl.startswith('bias') else attn).detach().requires_grad_()
                    v_in = value.detach().requires_grad_()

                    def step(fn=fn, a_in=a_in, v_in=v_in):
                        out = fn(a_in, v_in)
                        torch.autograd.backward(out, grad if out.shape == grad.shape else torch.ones_like(out))
                        a_in.grad = v_in.grad = None
                    rows.append(run_row(row, step, device, args))
    add_ratios(rows, 'CPU kernels', 'speed-up vs CPU kernels')
    return rows
