"""Row b: a training step of the OverLoCK-T detection backbone at 800x1333 batch 2 (forward, sum of output means,
backward, AdamW step) against ConvNeXt-T (mmpretrain's; torchvision's where mmpretrain is not installed), AMP
off and on (fp16 autocast + GradScaler, as mmengine's AmpOptimWrapper)."""
from typing import List

import torch

from .common import overlock_t_det, run_row, training_step


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


def rows(args, device) -> List[dict]:
    """Row b (module docstring)."""
    rows = []
    case = f'training step, {args.image[0]}x{args.image[1]} batch {args.batch}'
    for factory in (_convnext_t, overlock_t_det):
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
            rows.append(run_row(row, training_step(model, images, amp), device, args))
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
