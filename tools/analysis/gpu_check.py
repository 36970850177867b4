"""The GPU check: ContMix's aggregation and OverLoCK training on one GPU, in one command and one table.

Rows (``--rows``, default all):

* **a** -- aggregation ``na2d_av`` forward+backward at the OverLoCK-T and -S Focus-Net stage-3/4 shapes of a
  COCO batch (800x1333, batch 2; the large-kernel half of a block), fp32 and bf16: the fused Triton kernels,
  the op's CPU kernels run on the device (per-window matmuls, dense operator or tap loop by map size; the
  baseline of the speed-up notes), the official unfold fallback, a cuDNN depthwise conv of
  the same k (the speed to aim at) and the relative-position-bias + softmax over taps that produces the
  kernels (whether fusing it into the forward could pay). Time and peak memory growth.
* **b** -- a training step of the OverLoCK-T detection backbone at 800x1333 batch 2 (forward, sum of output
  means, backward, AdamW step) against ConvNeXt-T (mmpretrain's; torchvision's where mmpretrain is not
  installed), AMP off and on (fp16 autocast + GradScaler, as mmengine's AmpOptimWrapper).
* **c** -- one training iteration of the shipped Cascade Mask R-CNN OverLoCK-T model
  (configs/det/cascade_overlock_t_3x_coco.py, SyncBN as BN, random weights) on random 800x1333 images with
  random boxes and masks (needs mmdet and mmcv's compiled ops).
* **d** -- determinism: the aggregation op's output and gradients bitwise equal over two runs (a failure
  otherwise: its kernels use no atomics); the backbone's gradients with deterministic cuDNN, compared the same
  way, with the ops PyTorch lists as non-deterministic on the device named in the note (on CUDA the backward
  of the 7x7 region pooling, ``adaptive_avg_pool2d``, and of ``upsample_bilinear2d`` use atomics).
* **e** -- the backbone's depthwise convs (OverLoCK-T/S stages 1-3 at the image size: every train-form branch
  of the DilatedReparamBlocks, the deploy form's merged kernel, the 3x3 ResDWConvs), forward + backward, fp32
  and bf16: PyTorch (cuDNN), the Triton kernels, PyTorch with the FFT weight gradient, and the automatic choice
  of ``mmoverlock.ops.depthwise_conv2d`` (what it picked per pass in the note); then row b's OverLoCK-T
  training step with ``depthwise_choice='auto'`` and ``'torch'`` (AMP off and on).
* **f** -- the first-use check of the fused kernels (``mmoverlock.ops.selfcheck``): ``na2d_av``'s and
  ``depthwise_conv2d``'s Triton kernels on their small fixed problems against the reference, per dtype: passed
  or failed, the error and the tolerance, and what the check costs once per process and dtype (its ms; Triton's
  compilation of the check's kernels falls in it, unless Triton's disk cache holds them from an earlier run).
  A plain run measures it first, before the other rows have compiled anything.

Time is the median of ``--repeats`` runs after ``--warmup`` (CUDA synchronised; Triton's compilation falls
in the warm-up); memory is ``torch.cuda.max_memory_allocated`` growth over the inputs (CUDA only). A row that
cannot run says why in its note (an aggregation map smaller than its kernel, a package that is missing).
Rows are printed as they finish; a row that raises becomes a 'failed' line and the run exits non-zero at the
end, so a crash loses no finished row.

Rows a, b and d need only torch, triton, numpy and mmengine (and mmoverlock): ConvNeXt-T comes from mmpretrain,
else torchvision, else its row is skipped with the reason; row c needs mmdet and mmcv. On a CPU
(``--device cpu``) the non-Triton rows run, for checking the script (at 224x224, batch 1, fp32, one run), and
row f under Triton's interpreter (``TRITON_INTERPRET=1``, Triton >= 3.0). The script runs on torch >= 2.1 (the
wheels-only install of torch 2.1 and Triton 2.1 included):

    python tools/analysis/gpu_check.py --json gpu_check.json      # the whole check on a GPU
    python tools/analysis/gpu_check.py --device cpu --rows a b d   # checks the script on a CPU
"""
import argparse
import contextlib
import json
import os.path as osp
import re
import statistics
import sys
import time
import warnings
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from mmoverlock.analysis.shapes import focus_aggregation_shapes
from mmoverlock.utils import compat

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}
CASCADE_T = 'configs/det/cascade_overlock_t_3x_coco.py'


def feature_size(length: int, stride: int) -> int:
    """Map size after log2(stride) stride-2 3x3 convs with padding 1 (OverLoCK's stem and downsamplers)."""
    while stride > 1:
        length, stride = (length + 1) // 2, stride // 2
    return length


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> Dict[str, float]:
    """Median milliseconds of ``repeats`` calls after ``warmup`` calls, and the peak memory growth (MiB,
    CUDA only) over what was allocated before."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20 if device.type == 'cuda' else None
    return dict(ms=statistics.median(times) * 1e3, peak_mib=peak)


# ----------------------------------------------------------------------------------------------- row a
class _CPUKernels(torch.autograd.Function):
    """The op's CPU kernels (per-window matmuls, dense operator or tap loop by map size) with autograd, run on
    any device: what CUDA runs without Triton."""

    @staticmethod
    def forward(ctx, attn, value, kernel_size):
        from mmoverlock.ops import na2d
        ctx.save_for_backward(attn, value)
        ctx.kernel_size = kernel_size
        return na2d._cpu_forward(attn, value, kernel_size)

    @staticmethod
    def backward(ctx, grad_out):
        from mmoverlock.ops import na2d
        attn, value = ctx.saved_tensors
        return (*na2d._cpu_backward(grad_out, attn, value, ctx.kernel_size, True, True), None)


def _unfold(attn, value, k):
    from mmoverlock.ops import na2d_av_unfold
    out = na2d_av_unfold(attn.permute(0, 1, 3, 4, 2), value.permute(0, 1, 3, 4, 2), k)
    return out.permute(0, 1, 4, 2, 3)


def _triton(attn, value, k):
    from mmoverlock.ops import triton_na2d_av
    return triton_na2d_av(attn, value, k)


def _depthwise(attn, value, k, weight):
    """A depthwise k x k conv over the same B x (G*C) x H x W map (cuDNN on a GPU)."""
    b, g, c, h, w = value.shape
    return F.conv2d(value.reshape(b, g * c, h, w), weight, padding=k // 2, groups=g * c)


def aggregation_rows(args, device) -> List[dict]:
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
                    rows.append(_run(row, step, device, args))
    _add_ratios(rows, 'CPU kernels', 'speed-up vs CPU kernels')
    return rows


def _run(row: dict, fn: Callable[[], None], device: torch.device, args) -> dict:
    try:
        row.update(measure(fn, device, args.warmup, args.repeats))
    except Exception as err:   # one row's failure (e.g. out of memory) is reported, the check goes on
        row['note'] = f'{type(err).__name__}: {str(err).strip().splitlines()[0][:120]}'
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    return row


def _add_ratios(rows: List[dict], baseline: str, label: str) -> None:
    for row in rows:
        base = next((r for r in rows if r.get('impl') == baseline and r['case'] == row['case']
                     and r.get('dtype') == row.get('dtype') and 'ms' in r), None)
        if base and 'ms' in row and row is not base:
            row.setdefault('note', f"{label} {base['ms'] / row['ms']:.2f}x")


# ----------------------------------------------------------------------------------------------- row b
def _convnext_t():
    """mmpretrain's ConvNeXt-T (4 stage outputs), else torchvision's; (model, name). ImportError naming both
    where neither is installed."""
    try:
        from mmpretrain.models.backbones import ConvNeXt
        return ConvNeXt('tiny', out_indices=(0, 1, 2, 3), gap_before_final_norm=False), 'ConvNeXt-T (mmpretrain)'
    except ImportError:
        pass
    try:
        from torchvision.models import convnext_tiny
    except ImportError as err:
        raise ImportError(f'ConvNeXt-T needs mmpretrain or torchvision, neither is installed ({err})') from err
    return convnext_tiny().features, 'ConvNeXt-T (torchvision)'


def _overlock_t_det():
    from mmoverlock.models.backbones.overlock import OverLoCK
    return OverLoCK('t', out_indices=(0, 1, 2, 3), drop_path_rate=0.2), 'OverLoCK-T (detection layout)'


def training_step(model: torch.nn.Module, images: torch.Tensor, amp: bool) -> Callable[[], None]:
    """One AdamW step (fused where the torch takes it on the device) with a gradient scaler, as mmengine's
    AmpOptimWrapper runs it (``mmoverlock.utils.compat``: torch 2.1's spellings)."""
    device_type = images.device.type
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                  fused=compat.fused_adamw_supported(device_type))
    scaler = compat.grad_scaler(device_type, enabled=amp)

    # (no autocast context without AMP: torch 2.1 refuses a CPU autocast of float16 even when disabled)
    autocast = torch.autocast(device_type, dtype=torch.float16) if amp else contextlib.nullcontext()

    def step():
        with autocast:
            outs = model(images)
        outs = outs if isinstance(outs, (tuple, list)) else [outs]
        loss = sum(o.float().mean() for o in outs)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


def backbone_rows(args, device) -> List[dict]:
    rows = []
    case = f'training step, {args.image[0]}x{args.image[1]} batch {args.batch}'
    for factory in (_convnext_t, _overlock_t_det):
        for amp in (False, True):
            row = dict(row='b', case=case, dtype='AMP fp16' if amp else 'fp32')
            try:
                model, name = factory()
            except ImportError as err:
                rows.append(dict(row, impl=factory.__name__.strip('_'), note=f'skipped: {err}'))
                continue
            row['impl'] = name
            if amp and device.type != 'cuda':
                rows.append(dict(row, note='AMP needs CUDA'))
                continue
            model.to(device).train()
            torch.manual_seed(0)
            images = torch.randn(args.batch, 3, *args.image, device=device)
            rows.append(_run(row, training_step(model, images, amp), device, args))
            del model, images
            if device.type == 'cuda':
                torch.cuda.empty_cache()
    for row in rows:
        base = next((r for r in rows if str(r.get('impl', '')).startswith('ConvNeXt-T')
                     and r['dtype'] == row['dtype'] and 'ms' in r), None)
        if base and 'ms' in row and row is not base:
            row['note'] = (f"{row['ms'] / base['ms']:.2f}x the time of ConvNeXt-T"
                           + (f", {row['peak_mib'] / base['peak_mib']:.2f}x its memory" if row.get('peak_mib')
                              else ''))
    return rows


# ----------------------------------------------------------------------------------------------- row c
def _random_det_batch(batch: int, size, device, num_classes: int = 80):
    """mmdet inputs and data samples: random images with 3 random boxes and box masks each."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    h, w = size
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
        xy = torch.rand(3, 2) * torch.tensor([w * 0.6, h * 0.6])
        wh = 32 + torch.rand(3, 2) * torch.tensor([w * 0.3, h * 0.3])
        boxes = torch.cat([xy, xy + wh], 1)
        masks = torch.zeros(3, h, w, dtype=torch.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
            m[y0:y1, x0:x1] = 1
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                             batch_input_shape=(h, w), scale_factor=(1., 1.)))
        sample.gt_instances = InstanceData(bboxes=boxes, labels=torch.randint(0, num_classes, (3, )),
                                           masks=BitmapMasks(masks.numpy(), h, w))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def detector_rows(args, device) -> List[dict]:
    case = f'Cascade Mask R-CNN OverLoCK-T, {args.image[0]}x{args.image[1]} batch {args.batch}'
    row = dict(row='c', case=case, impl='one training iteration', dtype='fp32')
    try:
        import mmcv.ops  # noqa: F401  (RoIAlign)
        from mmdet.registry import MODELS
        from mmengine.config import Config
        from mmengine.registry import init_default_scope

        import mmoverlock  # noqa: F401
        from mmoverlock.utils.config import sync_bn_to_bn
    except ImportError as err:
        return [dict(row, note=f'skipped: {err} (needs mmdet and mmcv with its compiled ops)')]
    cfg = Config.fromfile(osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), CASCADE_T))
    cfg.model.backbone.init_cfg = None
    sync_bn_to_bn(cfg)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    torch.manual_seed(0)
    data = _random_det_batch(args.batch, args.image, device)

    def step():
        batch = model.data_preprocessor(data, training=True)
        losses = model(**batch, mode='loss')
        loss, _ = model.parse_losses(losses)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not torch.isfinite(loss):
            raise FloatingPointError(f'loss {loss.item()}')
    return [_run(row, step, device, args)]


# ----------------------------------------------------------------------------------------------- row d
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


def determinism_rows(args, device) -> List[dict]:
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
        from mmoverlock.ops import na2d_av_channels_first
        out = na2d_av_channels_first(attn, value, k)
        return (out, *torch.autograd.grad(out, (attn, value), grad))

    cases = [(f'na2d_av op, B{args.batch} G{groups} C{channels} {h}x{w} k{k}', 'forward + backward twice',
              op_outputs)]
    try:
        model, _ = _overlock_t_det()
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


# ----------------------------------------------------------------------------------------------- row e
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
        from mmoverlock.ops import depthwise
        x, weight = ctx.saved_tensors
        k, d = weight.shape[-1], ctx.dilation
        grad_x = depthwise._conv_bwd(grad_out, x, weight, d * (k - 1) // 2, d, [True, False, False])[0]
        grad_w = depthwise._fft_weight_grad_any(x, grad_out, k, d)
        return grad_x, grad_w, grad_out.sum((0, 2, 3)) if ctx.needs_input_grad[2] else None, None


def _auto_note(x, k: int, d: int, bias: bool) -> str:
    """What the automatic choice picked for this conv (CUDA), or the CPU rule's paths."""
    from mmoverlock.ops import depthwise
    if x.device.type != 'cuda':
        return 'CPU rule (fwd, input grad, weight grad) = ({})'.format(', '.join(depthwise.choose_paths(x, k, d)))
    chosen = depthwise.chosen()
    picks = [chosen.get(depthwise.choice_key(name, x, k, d, bias if name == depthwise.FORWARD else False), '?')
             for name in (depthwise.FORWARD, depthwise.INPUT_GRAD, depthwise.WEIGHT_GRAD)]
    return 'auto picked fwd {}, input grad {}, weight grad {}'.format(*picks)


def depthwise_rows(args, device) -> List[dict]:
    """Row e: each depthwise conv forward + backward by PyTorch, the Triton kernels, PyTorch with the FFT
    weight gradient, and the automatic choice (what it picked in the note); then row b's OverLoCK-T training
    step with the choice 'auto' and 'torch' (PyTorch's conv everywhere)."""
    from mmoverlock.ops import depthwise, depthwise_conv2d, triton_depthwise_conv2d
    rows = []
    depthwise.clear_choices()
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
                rows.append(_run(row, step, device, args))
                if impl == 'auto':
                    rows[-1]['picked'] = _auto_note(leaves[0], k, d, bias)
    _add_ratios(rows, 'PyTorch', 'speed-up vs PyTorch')
    for row in rows:
        if 'picked' in row:
            row['note'] = f"{row['note']}; {row['picked']}" if 'note' in row else row['picked']
    rows += _training_step_choice_rows(args, device)
    return rows


def _training_step_choice_rows(args, device) -> List[dict]:
    """Row b's OverLoCK-T training step with the depthwise choice 'auto', then 'torch'."""
    from mmoverlock.models.layers import set_depthwise_choice
    from mmoverlock.ops import depthwise
    rows = []
    case = f'training step (row b), {args.image[0]}x{args.image[1]} batch {args.batch}'
    for amp in (False, True):
        for choice in ('auto', 'torch'):
            row = dict(row='e', case=case, impl=f'OverLoCK-T, depthwise_choice={choice!r}',
                       dtype='AMP fp16' if amp else 'fp32')
            if device.type != 'cuda':
                rows.append(dict(row, note='the choice applies on CUDA only (the CPU runs its fixed rule)'))
                continue
            model, _ = _overlock_t_det()
            set_depthwise_choice(model, choice)
            model.to(device).train()
            torch.manual_seed(0)
            images = torch.randn(args.batch, 3, *args.image, device=device)
            step = training_step(model, images, amp)
            if choice == 'auto':
                depthwise.clear_choices()
                step()                              # the measurement on first use stays out of the timing
            rows.append(_run(row, step, device, args))
            del model, images, step
            torch.cuda.empty_cache()
    for row in rows:
        base = next((r for r in rows if r['impl'].endswith("'torch'") and r['dtype'] == row['dtype']
                     and 'ms' in r), None)
        if base and 'ms' in row and row is not base:
            row['note'] = f"{base['ms'] / row['ms']:.2f}x the speed of depthwise_choice='torch'"
    return rows


# ----------------------------------------------------------------------------------------------- row f
def self_check_rows(args, device) -> List[dict]:
    """Row f: the first-use check of the fused kernels (``mmoverlock.ops.selfcheck``) of ``na2d_av`` and
    ``depthwise_conv2d`` in each dtype, run afresh: passed or not, the relative error against the reference and
    the dtype's tolerance in the note, its wall time (once per process and dtype) as ms. On a CPU it runs where
    Triton's interpreter does (``TRITON_INTERPRET=1`` with Triton >= 3.0)."""
    from mmoverlock.ops import depthwise, na2d, selfcheck
    from mmoverlock.ops.depthwise import _triton_kernels as depthwise_kernels
    rows = []
    checks = (('na2d_av', na2d._triton_kernels, na2d.check_fused_kernels, na2d.CHECK_PROBLEM, na2d._FALLBACK),
              ('depthwise_conv2d', depthwise_kernels, depthwise.check_fused_kernels, depthwise.CHECK_PROBLEM,
               depthwise._FALLBACK))
    for kernel, load, check, problem, fallback in checks:
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


# ----------------------------------------------------------------------------------------------- main
ROWS = {'a': aggregation_rows, 'b': backbone_rows, 'c': detector_rows, 'd': determinism_rows,
        'e': depthwise_rows, 'f': self_check_rows}
#: the rows a plain run measures, in order: the first-use check before any row has compiled its kernels
DEFAULT_ROWS = ['f', 'a', 'b', 'c', 'd', 'e']


TABLE_HEADER = ['| row | case | implementation | dtype | ms | peak MiB | note |', '|---|---|---|---|---:|---:|---|']


def format_rows(rows: List[dict]) -> List[str]:
    """The table lines of ``rows`` (no header)."""
    lines = []
    for r in rows:
        ms = f"{r['ms']:.2f}" if 'ms' in r else '-'
        peak = f"{r['peak_mib']:.0f}" if r.get('peak_mib') is not None else '-'
        lines.append(f"| {r['row']} | {r['case']} | {r.get('impl', '-')} | {r.get('dtype', '-')} | {ms} | {peak} | "
                     f"{r.get('note', '')} |")
    return lines


#: what a run measures unless told: the COCO training batch on a GPU; a quick check of the script on a CPU
GPU_DEFAULTS = dict(image=(800, 1333), batch=2, dtypes=list(DTYPES), warmup=2, repeats=5)
CPU_DEFAULTS = dict(image=(224, 224), batch=1, dtypes=['fp32'], warmup=0, repeats=1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda', help="'cuda' (default) or 'cpu' (the non-Triton rows)")
    parser.add_argument('--rows', nargs='+', default=DEFAULT_ROWS, choices=list(ROWS),
                        help=f"default {' '.join(DEFAULT_ROWS)} (row f first: its time is the first use's)")
    parser.add_argument('--image', type=int, nargs=2, metavar=('H', 'W'), help='default 800 1333 (CPU: 224 224)')
    parser.add_argument('--batch', type=int, help='default 2 (CPU: 1)')
    parser.add_argument('--dtypes', nargs='+', choices=list(DTYPES), help='default fp32 bf16 (CPU: fp32)')
    parser.add_argument('--warmup', type=int, help='default 2 (CPU: 0)')
    parser.add_argument('--repeats', type=int, help='default 5 (CPU: 1)')
    parser.add_argument('--json', help='also write the rows to this file')
    args = parser.parse_args(argv)
    if args.device not in ('cpu', 'cuda'):
        parser.error(f"--device {args.device!r}: expected 'cuda' or 'cpu'")
    defaults = CPU_DEFAULTS if args.device == 'cpu' else GPU_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device here; use --device cpu for the non-Triton rows')
    return args


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    print(f'# gpu_check on {name}: torch {torch.__version__}, image {args.image[0]}x{args.image[1]}, batch '
          f'{args.batch}, median of {args.repeats} after {args.warmup} warm-up', flush=True)
    # each row's lines are printed (and the JSON rewritten) as soon as the row finishes, so a row that fails
    # loses nothing measured before it; its failure becomes a line of the table and the run exits non-zero
    print('\n'.join(TABLE_HEADER), flush=True)
    rows, failed = [], []
    for key in args.rows:
        start = time.perf_counter()
        try:
            new = ROWS[key](args, device)
        except Exception as err:   # a failing row must not lose the others: reported, then the exit code
            first = str(err).strip().splitlines()[0] if str(err).strip() else ''
            new = [dict(row=key, case='-', note=f'failed: {type(err).__name__}: {first}')]
            failed.append(key)
        rows += new
        print('\n'.join(format_rows(new)), flush=True)
        print(f'# row {key}: {time.perf_counter() - start:.0f} s', file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(dict(device=name, torch=torch.__version__, args=vars(args), rows=rows), f, indent=1)
    if failed:
        raise SystemExit(f'gpu_check: row(s) {" ".join(failed)} failed (see the table); the other rows are above')
    return rows


if __name__ == '__main__':
    main()
