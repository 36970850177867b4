"""What the results tables need beyond our own models, and our models as the model zoo's metafiles give them.

Our rows come from ``configs/{cls,det,seg}/metafile.yml``, the zoo's hand-maintained source of truth (read
by :func:`read_metafiles`); this module holds the rest: metric definitions, table titles, the FLOPs input
conventions and the competitor rows with their sources. ``None`` means "not reported" and shows as a blank,
never as a zero.

Used by ``tools/analysis/collect_results.py`` (the tables) and ``tools/analysis/make_model_index.py``
(``model-index.yml``, ``docs/model_zoo.md`` and the results sections of ``configs/*/README.md``).
"""
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import yaml

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))   # the source tree (configs/)
TASKS = ('cls', 'det', 'seg')
METAFILES = {task: f'configs/{task}/metafile.yml' for task in TASKS}
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
#: How a metric is named in a metafile's ``Results`` (OpenMMLab's names) -> our metric key.
METAFILE_METRICS = {'Top 1 Accuracy': 'top1', 'box AP': 'box_ap', 'mask AP': 'mask_ap', 'mIoU': 'miou_ss',
                    'mIoU(ms+flip)': 'miou_ms'}

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

#: Model names of the metafiles: ``[<framework>_]overlock_<arch>_<schedule>_<dataset>``, or
#: ``overlock_<arch>_in1k[_reparam]`` (``_reparam``: the deploy form, built with ``deploy=True``).
MODEL_NAME = re.compile(r'(?:(?P<framework>[a-z_]+?)_)?overlock_(?P<arch>xt|t|s|b)_(?P<rest>\w+)')
DEPLOY_SUFFIX = '_reparam'
FRAMEWORKS = {'mask_rcnn': 'Mask R-CNN', 'cascade': 'Cascade Mask R-CNN', 'upernet': 'UperNet'}


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
    config: Optional[str] = None           # path from the repository root
    weights: Optional[str] = None          # a verified download link, else None
    note: str = ''                         # what to know before using the weights
    source: str = ''
    competitor: bool = False


def _millions(value) -> Optional[float]:
    return None if value is None else value / 1e6


def _billions(value) -> Optional[float]:
    return None if value is None else value / 1e9


def _method(task: str, name: str, framework: Optional[str], rest: str, metadata: dict) -> str:
    """The table's method label: 'ImageNet-1K 300e' (', deploy form'), 'Mask R-CNN 1x', 'UperNet 160k'."""
    if task == 'cls':
        label = f"ImageNet-1K {metadata.get('Epochs', '')}e"
        return label + ', deploy form' if name.endswith(DEPLOY_SUFFIX) else label
    if framework not in FRAMEWORKS:
        raise ValueError(f"{METAFILES[task]}: model '{name}' names no known framework ({sorted(FRAMEWORKS)})")
    return f'{FRAMEWORKS[framework]} {rest.split("_")[0]}'


def model_record(task: str, entry: dict) -> ModelRecord:
    """A metafile's ``Models`` entry -> its table row."""
    name = entry.get('Name', '')
    match = MODEL_NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"{METAFILES[task]}: model name '{name}' does not read as "
                         f"[<framework>_]overlock_<xt|t|s|b>_<schedule>_<dataset>")
    metadata = entry.get('Metadata', {})
    official = {}
    for result in entry.get('Results', []):
        for title, value in result['Metrics'].items():
            if title not in METAFILE_METRICS:
                raise ValueError(f"{METAFILES[task]}: {name}: metric '{title}' is not one of "
                                 f"{list(METAFILE_METRICS)}")
            official[METAFILE_METRICS[title]] = value
    return ModelRecord(
        name=name, task=task, method=_method(task, name, match['framework'], match['rest'], metadata),
        backbone=ARCH_NAMES[match['arch']], official=official,
        params=_millions(metadata.get('Paper Parameters')), flops=_billions(metadata.get('Paper FLOPs')),
        measured_params=_millions(metadata.get('Parameters')), measured_flops=_billions(metadata.get('FLOPs')),
        arch=match['arch'], config=entry.get('Config'), weights=entry.get('Weights'), note=entry.get('Note', ''),
        source=METAFILES[task])


def read_metafile(task: str, root: str = ROOT) -> dict:
    """The parsed ``configs/<task>/metafile.yml``."""
    path = osp.join(root, METAFILES[task])
    if not osp.isfile(path):
        raise FileNotFoundError(f'model zoo: {METAFILES[task]} is missing')
    with open(path, encoding='utf-8') as f:
        return yaml.safe_load(f)


def read_metafiles(root: str = ROOT) -> List[ModelRecord]:
    """Our models, in metafile order (cls, det, seg)."""
    return [model_record(task, entry) for task in TASKS for entry in read_metafile(task, root)['Models']]


#: Our models, in table order.
MODELS: List[ModelRecord] = read_metafiles()

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
