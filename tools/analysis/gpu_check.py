"""The GPU check: ContMix's aggregation and OverLoCK training on one GPU, in one command and one table.

Rows (``--rows``, default all):

* **a** -- aggregation ``na2d_av`` forward+backward at the OverLoCK-T and -S Focus-Net stage-3/4 shapes of a
  COCO batch (800x1333, batch 2; the large-kernel half of a block), fp32 and bf16: the fused Triton kernels,
  the tap loop (the CPU kernel run on the device), the official unfold fallback, a cuDNN depthwise conv of
  the same k (the speed to aim at) and the relative-position-bias + softmax over taps that produces the
  kernels (whether fusing it into the forward could pay). Time and peak memory growth.
* **b** -- a training step of the OverLoCK-T detection backbone at 800x1333 batch 2 (forward, sum of output
  means, backward, AdamW step) against ConvNeXt-T (mmpretrain's; torchvision's where mmpretrain is not
  installed), AMP off and on (fp16 autocast + GradScaler, as mmengine's AmpOptimWrapper).
* **c** -- one training iteration of the shipped Cascade Mask R-CNN OverLoCK-T model
  (configs/det/cascade_overlock_t_3x_coco.py, SyncBN as BN, random weights) on random 800x1333 images with
  random boxes and masks (needs mmdet and mmcv's compiled ops).
* **d** -- two backward passes bitwise equal: the aggregation op, and the backbone with deterministic cuDNN.

Time is the median of ``--repeats`` runs after ``--warmup`` (CUDA synchronised; Triton's compilation falls
in the warm-up); memory is ``torch.cuda.max_memory_allocated`` growth over the inputs (CUDA only). A row that
cannot run says why in its note. On a CPU (``--device cpu``) the non-Triton rows run, for checking the script:

    python tools/analysis/gpu_check.py                                 # the whole check on a GPU (< 8 min)
    python tools/analysis/gpu_check.py --device cpu --image 128 160 --rows a b d --repeats 1
"""
import argparse
import json
import os.path as osp
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from overlock_analysis.shapes import focus_aggregation_shapes  # noqa: E402

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
class _TapLoop(torch.autograd.Function):
    """The op's CPU kernels (tap loop / dense by map size) with autograd, on any device."""

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
                    'tap loop': lambda a, v: _TapLoop.apply(a, v, k),
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
    _add_ratios(rows, 'tap loop', 'speed-up vs tap loop')
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
    """mmpretrain's ConvNeXt-T (4 stage outputs), else torchvision's; (model, name)."""
    try:
        from mmpretrain.models.backbones import ConvNeXt
        return ConvNeXt('tiny', out_indices=(0, 1, 2, 3), gap_before_final_norm=False), 'ConvNeXt-T (mmpretrain)'
    except ImportError:
        from torchvision.models import convnext_tiny
        return convnext_tiny().features, 'ConvNeXt-T (torchvision)'


def _overlock_t_det():
    from mmoverlock.models.backbones.overlock import OverLoCK
    return OverLoCK('t', out_indices=(0, 1, 2, 3), drop_path_rate=0.2), 'OverLoCK-T (detection layout)'


def training_step(model: torch.nn.Module, images: torch.Tensor, amp: bool) -> Callable[[], None]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    scaler = torch.amp.GradScaler(images.device.type, enabled=amp)

    def step():
        with torch.autocast(images.device.type, dtype=torch.float16, enabled=amp):
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
                rows.append(dict(row, impl=factory.__name__.strip('_'), note=f'not importable: {err}'))
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
    row = dict(row='c', case=f'Cascade Mask R-CNN OverLoCK-T, {args.image[0]}x{args.image[1]} batch '
                              f'{args.batch}', impl='one training iteration', dtype='fp32')
    try:
        from mmengine.config import Config
        from mmengine.registry import init_default_scope

        import mmoverlock  # noqa: F401
        from mmdet.registry import MODELS
        from mmoverlock.utils.runtime import sync_bn_to_bn
        import mmcv.ops  # noqa: F401  (RoIAlign)
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
def determinism_rows(args, device) -> List[dict]:
    rows = []
    _, groups, k, stride = (256, 8, 13, 16)
    h, w = feature_size(args.image[0], 16), feature_size(args.image[1], 16)
    torch.manual_seed(0)
    attn = torch.randn(args.batch, groups, k * k, h, w, device=device).softmax(2).requires_grad_()
    value = torch.randn(args.batch, groups, 16, h, w, device=device, requires_grad=True)
    grad = torch.randn_like(value)

    def op_grads():
        from mmoverlock.ops import na2d_av_channels_first
        return torch.autograd.grad(na2d_av_channels_first(attn, value, k), (attn, value), grad)

    cases = [(f'na2d_av op, B{args.batch} G{groups} C16 {h}x{w} k{k}', op_grads)]
    try:
        model, _ = _overlock_t_det()
        model.to(device).train()
        images = torch.randn(1, 3, *args.image, device=device)

        def backbone_grads():
            torch.manual_seed(1)                   # the same drop-path draws in both passes
            loss = sum(o.mean() for o in model(images))
            return torch.autograd.grad(loss, list(model.parameters()))
        cases.append(('OverLoCK-T backbone (cudnn.deterministic)', backbone_grads))
    except ImportError as err:
        rows.append(dict(row='d', case='OverLoCK-T backbone', impl='-', dtype='fp32', note=f'not importable: {err}'))
    deterministic = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    try:
        for case, fn in cases:
            first, second = fn(), fn()
            equal = all(torch.equal(a, b) for a, b in zip(first, second))
            worst = max((a - b).abs().max().item() for a, b in zip(first, second))
            rows.append(dict(row='d', case=case, impl='backward twice', dtype='fp32',
                             note='bitwise equal' if equal else f'NOT bitwise equal (max diff {worst:.3g})',
                             bitwise_equal=equal))
    finally:
        torch.backends.cudnn.deterministic = deterministic
    return rows


# ----------------------------------------------------------------------------------------------- main
ROWS = {'a': aggregation_rows, 'b': backbone_rows, 'c': detector_rows, 'd': determinism_rows}


def format_table(rows: List[dict]) -> str:
    lines = ['| row | case | implementation | dtype | ms | peak MiB | note |', '|---|---|---|---|---:|---:|---|']
    for r in rows:
        ms = f"{r['ms']:.2f}" if 'ms' in r else '-'
        peak = f"{r['peak_mib']:.0f}" if r.get('peak_mib') is not None else '-'
        lines.append(f"| {r['row']} | {r['case']} | {r.get('impl', '-')} | {r.get('dtype', '-')} | {ms} | {peak} | "
                     f"{r.get('note', '')} |")
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda', help="'cuda' (default) or 'cpu' (the non-Triton rows)")
    parser.add_argument('--rows', nargs='+', default=list(ROWS), choices=list(ROWS))
    parser.add_argument('--image', type=int, nargs=2, default=(800, 1333), metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--dtypes', nargs='+', default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--json', help='also write the rows to this file')
    args = parser.parse_args(argv)
    if args.device not in ('cpu', 'cuda'):
        parser.error(f"--device {args.device!r}: expected 'cuda' or 'cpu'")
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device here; use --device cpu for the non-Triton rows')
    return args


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    print(f'# gpu_check on {name}: torch {torch.__version__}, image {args.image[0]}x{args.image[1]}, batch '
          f'{args.batch}, median of {args.repeats} after {args.warmup} warm-up', flush=True)
    rows = []
    for key in args.rows:
        start = time.perf_counter()
        rows += ROWS[key](args, device)
        print(f'# row {key}: {time.perf_counter() - start:.0f} s', file=sys.stderr, flush=True)
    print(format_table(rows))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(device=name, torch=torch.__version__, args=vars(args), rows=rows), f, indent=1)
    return rows


if __name__ == '__main__':
    main()
