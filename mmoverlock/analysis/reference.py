"""The paper's tables in one place: official OverLoCK numbers, competitor rows, and our measured complexity.

Used by ``tools/analysis/collect_results.py`` (the tables), ``tools/analysis/make_model_index.py`` (the
``configs/*/metafile.yml`` files) and ``docs/model_zoo.md``. ``None`` means "not reported" and shows as a
blank, never as a zero.

Sources: the OverLoCK release README (ImageNet) and paper (COCO, ADE20K), as quoted in issue #6; competitor
rows as their own repositories report them (UniRepLKNet, MogaNet). ``measured`` params/FLOPs are from
``tools/analysis/get_flops.py`` on this code (deployed form; ImageNet 224x224 without the training-only
auxiliary head; detection 1280x800 and segmentation 2048x512, whole model; the Mask R-CNN 1x and 3x configs
build the same model).
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

RELEASE_URL = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/overlock_{arch}_in1k_224.pth'
ARCH_NAMES = {'xt': 'OverLoCK-XT', 't': 'OverLoCK-T', 's': 'OverLoCK-S', 'b': 'OverLoCK-B'}

#: Metric key -> (column title, how the key reads in mmengine logs, scale to percent).
METRICS: Dict[str, tuple] = {
    'top1': ('Top-1', 'accuracy/top1', 1.),
    'box_ap': ('AP^b', 'coco/bbox_mAP', 100.),
    'box_ap50': ('AP^b_50', 'coco/bbox_mAP_50', 100.),
    'box_ap75': ('AP^b_75', 'coco/bbox_mAP_75', 100.),
    'mask_ap': ('AP^m', 'coco/segm_mAP', 100.),
    'mask_ap50': ('AP^m_50', 'coco/segm_mAP_50', 100.),
    'mask_ap75': ('AP^m_75', 'coco/segm_mAP_75', 100.),
    'miou_ss': ('mIoU (ss)', 'mIoU', 1.),
    'miou_ms': ('mIoU (ms)', 'mIoU', 1.),
}

#: Metric columns of each table, in order.
TABLE_METRICS: Dict[str, List[str]] = {
    'cls': ['top1'],
    'det': ['box_ap', 'box_ap50', 'box_ap75', 'mask_ap', 'mask_ap50', 'mask_ap75'],
    'seg': ['miou_ss', 'miou_ms'],
}
TASK_TITLES = {'cls': 'ImageNet-1K (224x224)', 'det': 'COCO val2017 (FLOPs at 1280x800)',
               'seg': 'ADE20K val (FLOPs at 2048x512)'}
#: Decimals of the FLOPs column (G): the ImageNet numbers are small.
FLOPS_DIGITS = {'cls': 2, 'det': 1, 'seg': 1}
#: Default input of the FLOPs column, (H, W) as mmdet's / mmseg's get_flops take ``--shape``.
FLOPS_SHAPE = {'cls': (224, 224), 'det': (1280, 800), 'seg': (2048, 512)}


@dataclass(frozen=True)
class ModelRecord:
    """One table row. ``name`` is the config stem (``configs/<task>/<name>.py``) for our models."""
    name: str
    task: str                      # 'cls' | 'det' | 'seg'
    method: str                    # e.g. 'Mask R-CNN 1x'
    backbone: str                  # e.g. 'OverLoCK-T'
    official: Dict[str, Optional[float]] = field(default_factory=dict)   # metric key -> value (percent)
    params: Optional[float] = None         # official / reported params (M)
    flops: Optional[float] = None          # official / reported FLOPs (G)
    measured_params: Optional[float] = None    # ours (M), get_flops.py
    measured_flops: Optional[float] = None     # ours (G), get_flops.py
    arch: Optional[str] = None
    weights: Optional[str] = None          # a verified download link, else None
    source: str = ''
    competitor: bool = False

    @property
    def config(self) -> Optional[str]:
        return None if self.competitor else f'configs/{self.task}/{self.name}.py'


def _cls(arch: str, top1: float, params: float, flops: float, m_params: float, m_flops: float
         ) -> ModelRecord:
    return ModelRecord(name=f'overlock_{arch}_in1k', task='cls', method='ImageNet-1K 300e',
                       backbone=ARCH_NAMES[arch], official={'top1': top1}, params=params, flops=flops,
                       measured_params=m_params, measured_flops=m_flops, arch=arch,
                       weights=RELEASE_URL.format(arch=arch), source='OverLoCK release README')


def _mask_rcnn(arch: str, schedule: str, box_ap: float, mask_ap: float,
               m_params: Optional[float], m_flops: Optional[float]) -> ModelRecord:
    return ModelRecord(name=f'mask_rcnn_overlock_{arch}_{schedule}_coco', task='det',
                       method=f'Mask R-CNN {schedule}', backbone=ARCH_NAMES[arch],
                       official={'box_ap': box_ap, 'mask_ap': mask_ap}, measured_params=m_params,
                       measured_flops=m_flops, arch=arch, source='OverLoCK paper')


def _cascade(arch: str, m_params: Optional[float], m_flops: Optional[float]) -> ModelRecord:
    return ModelRecord(name=f'cascade_overlock_{arch}_3x_coco', task='det', method='Cascade Mask R-CNN 3x',
                       backbone=ARCH_NAMES[arch], measured_params=m_params, measured_flops=m_flops, arch=arch,
                       source='not in issue #6 (no official number quoted)')


def _upernet(arch: str, miou: float, m_params: Optional[float], m_flops: Optional[float]) -> ModelRecord:
    return ModelRecord(name=f'upernet_overlock_{arch}_160k_ade20k', task='seg', method='UperNet 160k',
                       backbone=ARCH_NAMES[arch], official={'miou_ss': miou}, measured_params=m_params,
                       measured_flops=m_flops, arch=arch, source='OverLoCK paper')


#: Our models, in table order.
MODELS: List[ModelRecord] = [
    _cls('xt', 82.7, 16.45, 2.6, 16.454, 2.655),
    _cls('t', 84.2, 33.47, 5.5, 33.467, 5.556),
    _cls('s', 84.8, 56.16, 9.7, 56.156, 9.552),
    _cls('b', 85.1, 94.94, 16.7, 94.943, 16.866),
    _mask_rcnn('t', '1x', 48.3, 43.3, 52.334, 282.688),
    _mask_rcnn('s', '1x', 49.4, 44.0, 75.040, 363.943),
    _mask_rcnn('b', '1x', 49.9, 44.4, 113.885, 513.154),
    _mask_rcnn('t', '3x', 49.6, 43.9, 52.334, 282.688),
    _mask_rcnn('s', '3x', 51.0, 45.0, 75.040, 363.943),
    _mask_rcnn('b', '3x', 51.4, 45.3, 113.885, 513.154),
    _cascade('t', 90.169, 761.240),
    _cascade('s', 112.875, 842.495),
    _cascade('b', 151.721, 991.707),
    _upernet('t', 50.3, 63.307, 958.863),
    _upernet('s', 51.3, 86.177, 1042.134),
    _upernet('b', 51.7, 125.664, 1195.682),
]

#: Competitor rows, as their own repositories report them.
COMPETITORS: List[ModelRecord] = [
    ModelRecord(name='cascade_unireplknet_t_3x', task='det', method='Cascade Mask R-CNN 3x',
                backbone='UniRepLKNet-T', official={'box_ap': 51.7, 'mask_ap': 44.9}, params=89., flops=749.,
                source='UniRepLKNet repository', competitor=True),
    ModelRecord(name='cascade_moganet_b_3x', task='det', method='Cascade Mask R-CNN 3x', backbone='MogaNet-B',
                official={'box_ap': 52.6, 'mask_ap': 46.0}, params=101.2, flops=851.6,
                source='MogaNet repository', competitor=True),
    ModelRecord(name='upernet_unireplknet_t_160k', task='seg', method='UperNet 160k', backbone='UniRepLKNet-T',
                official={'miou_ss': 48.6}, params=61., flops=946., source='UniRepLKNet repository',
                competitor=True),
    ModelRecord(name='upernet_moganet_b_160k', task='seg', method='UperNet 160k', backbone='MogaNet-B',
                official={'miou_ss': 50.1}, params=73.7, flops=1050.4, source='MogaNet repository',
                competitor=True),
]


def records(task: Optional[str] = None, competitors: bool = True) -> List[ModelRecord]:
    """Rows of one task (or all), ours first then the competitors."""
    rows = MODELS + (COMPETITORS if competitors else [])
    return [r for r in rows if task is None or r.task == task]


def find(name: str) -> Optional[ModelRecord]:
    """The record whose config stem is ``name`` (None if unknown)."""
    return next((r for r in MODELS + COMPETITORS if r.name == name), None)
