"""Row c: one training iteration of the shipped Cascade Mask R-CNN OverLoCK-T model
(configs/det/cascade_overlock_t_3x_coco.py, SyncBN as BN, random weights) on random 800x1333 images with random
boxes and masks (needs mmdet and mmcv's compiled ops). The row keeps the last step's loss, the names of its loss
terms (the RPN's and each cascade stage's classification, box and mask losses) and whether the backbone's first
weights moved."""
import os.path as osp
from typing import List

import torch

from mmoverlock.analysis.reference import ROOT

from .common import run_row

CASCADE_T = 'configs/det/cascade_overlock_t_3x_coco.py'


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


def rows(args, device) -> List[dict]:
    """Row c (module docstring)."""
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
    cfg = Config.fromfile(osp.join(ROOT, CASCADE_T))
    cfg.model.backbone.init_cfg = None
    sync_bn_to_bn(cfg)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    torch.manual_seed(0)
    data = _random_det_batch(args.batch, args.image, device)
    weight = next(model.backbone.parameters())                 # the stem's first conv
    before = weight.detach().clone()
    seen = {}

    def step():
        batch = model.data_preprocessor(data, training=True)
        losses = model(**batch, mode='loss')
        loss, _ = model.parse_losses(losses)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not torch.isfinite(loss):
            raise FloatingPointError(f'loss {loss.item()}')
        seen.update(loss=loss.item(), loss_terms=sorted(k for k in losses if 'loss' in k))
    row = run_row(row, step, device, args)
    row.update(seen)
    row['backbone_updated'] = not torch.equal(before, weight.detach())
    return [row]
