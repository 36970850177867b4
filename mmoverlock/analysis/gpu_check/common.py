"""What the GPU check's rows share: the dtypes, the feature-map sizes, timing a row (through
:func:`mmoverlock.utils.timing.measure`), speed-up notes, the OverLoCK-T detection backbone and one training step."""
import contextlib
from typing import Callable, Dict, List

import torch

from mmoverlock.utils import compat
from mmoverlock.utils.timing import measure

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}


def feature_size(length: int, stride: int) -> int:
    """Map size after log2(stride) stride-2 3x3 convs with padding 1 (OverLoCK's stem and downsamplers)."""
    while stride > 1:
        length, stride = (length + 1) // 2, stride // 2
    return length


def timed(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> Dict[str, float]:
    """Median milliseconds of ``repeats`` calls after ``warmup`` calls (CUDA synchronised around each), and the
    peak memory growth (MiB, CUDA only) over what was allocated before."""
    timing = measure(fn, device, warmup=warmup, repeats=repeats, clock='wall', memory=True)
    return dict(ms=timing.median, peak_mib=timing.peak_mib)


def run_row(row: dict, fn: Callable[[], None], device: torch.device, args) -> dict:
    """``row`` with ``fn``'s time and memory (:func:`timed`), or a note saying why it could not run."""
    try:
        row.update(timed(fn, device, args.warmup, args.repeats))
    except Exception as err:   # one row's failure (e.g. out of memory) is reported, the check goes on
        row['note'] = f'{type(err).__name__}: {str(err).strip().splitlines()[0][:120]}'
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    return row


def add_ratios(rows: List[dict], baseline: str, label: str) -> None:
    """Note on each timed row its speed-up over the ``baseline`` implementation of the same case and dtype."""
    for row in rows:
        base = next((r for r in rows if r.get('impl') == baseline and r['case'] == row['case']
                     and r.get('dtype') == row.get('dtype') and 'ms' in r), None)
        if base and 'ms' in row and row is not base:
            row.setdefault('note', f"{label} {base['ms'] / row['ms']:.2f}x")


def overlock_t_det():
    """The OverLoCK-T backbone in the detection layout (4 stage outputs, drop path 0.2) and its name."""
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
