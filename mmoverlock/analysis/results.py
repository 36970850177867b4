"""Read the metrics mmengine writes under a work_dir and lay them out as the paper's tables.

What mmengine leaves in ``work_dir/<timestamp>/`` (one folder per run):

* ``<timestamp>.json`` -- a test run's metrics (``LoggerHook.after_test_epoch``), one JSON object;
* ``vis_data/scalars.json`` -- JSON lines of training and validation scalars (``LocalVisBackend``);
* ``<timestamp>.log`` -- the text log with ``Epoch(val)`` / ``Iter(val)`` / ``Epoch(test)`` lines;
* ``vis_data/config.py`` -- the run's config (tells a ``--tta`` run by its TTA model).

A work_dir's result is its latest single-scale test run, else its last validation. For ADE20K the latest
test-time-augmented run fills the ``mIoU (ms)`` column. Values are percent; missing ones stay ``None``.
"""
import glob
import json
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from .reference import FLOPS_DIGITS, METRICS, TABLE_METRICS, TASK_TITLES, ModelRecord, find, records

#: mmengine log key -> our metric key (``miou_ss`` stands for mIoU; a TTA run turns it into ``miou_ms``).
LOG_KEYS = {spec[1]: key for key, spec in METRICS.items() if key != 'miou_ms'}
_EVAL_LINE = re.compile(r'(Epoch|Iter)\((val|test)\)')
_PAIR = re.compile(r'([\w/.-]+): (-?\d+(?:\.\d+)?)')
_RUN_DIR = re.compile(r'^\d{8}_\d{6}$')


@dataclass
class RunResult:
    """Metrics of one work_dir (our metric keys, percent) and where they came from."""
    name: str
    task: Optional[str]
    metrics: Dict[str, float] = field(default_factory=dict)
    sources: List[str] = field(default_factory=list)


def _to_ours(raw: Dict[str, float], tta: bool = False) -> Dict[str, float]:
    out = {}
    for log_key, value in raw.items():
        key = LOG_KEYS.get(log_key)
        if key is None or not isinstance(value, (int, float)):
            continue
        if key == 'miou_ss' and tta:
            key = 'miou_ms'
        out[key] = float(value) * METRICS[key][2]
    return out


def _log_metrics(log_file: str, mode: str) -> Dict[str, float]:
    """The last ``mode`` ('val' | 'test') evaluation line of a text log, as {log key: value}."""
    found: Dict[str, float] = {}
    with open(log_file, encoding='utf-8', errors='replace') as f:
        for line in f:
            match = _EVAL_LINE.search(line)
            if match and match.group(2) == mode:
                pairs = {k: float(v) for k, v in _PAIR.findall(line[match.end():]) if k in LOG_KEYS}
                if pairs:
                    found = pairs
    return found


def _last_val_scalars(scalars_file: str) -> Dict[str, float]:
    """The last JSON line of ``vis_data/scalars.json`` that holds an evaluation metric."""
    found: Dict[str, float] = {}
    with open(scalars_file, encoding='utf-8') as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if any(k in LOG_KEYS for k in record):
                found = record
    return found


def _is_tta(run_dir: str) -> bool:
    cfg_file = osp.join(run_dir, 'vis_data', 'config.py')
    if not osp.isfile(cfg_file):
        return False
    from mmengine.config import Config
    try:
        cfg = Config.fromfile(cfg_file, import_custom_modules=False)
    except Exception:   # an unreadable config: treat the run as single-scale  # noqa: BLE001
        return False
    return 'TTA' in str(cfg.get('model', {}).get('type', ''))


def read_run(run_dir: str) -> Dict[str, float]:
    """Metrics of one ``<timestamp>`` folder as {log key: value}: the test json, else the last validation in
    ``vis_data/scalars.json``, else the text log (test lines first)."""
    stamp = osp.basename(osp.normpath(run_dir))
    test_json = osp.join(run_dir, f'{stamp}.json')
    if osp.isfile(test_json):
        with open(test_json, encoding='utf-8') as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError:
                data = {}
        if any(k in LOG_KEYS for k in data):
            return data
    scalars = osp.join(run_dir, 'vis_data', 'scalars.json')
    if osp.isfile(scalars):
        data = _last_val_scalars(scalars)
        if data:
            return data
    for log_file in sorted(glob.glob(osp.join(run_dir, '*.log'))):
        data = _log_metrics(log_file, 'test') or _log_metrics(log_file, 'val')
        if data:
            return data
    return {}


def _task_of_metrics(metrics: Dict[str, float]) -> Optional[str]:
    for task, keys in TABLE_METRICS.items():
        if any(k in metrics for k in keys):
            return task
    return None


def _name_of(work_dir: str) -> str:
    """The config stem of a work_dir: a known ``*.py`` dumped at its root, else the folder name."""
    for cfg_file in sorted(glob.glob(osp.join(work_dir, '*.py'))):
        stem = osp.splitext(osp.basename(cfg_file))[0]
        if find(stem) is not None:
            return stem
    return osp.basename(osp.normpath(work_dir))


def read_work_dir(work_dir: str) -> RunResult:
    """The result of one work_dir (see the module doc)."""
    if not osp.isdir(work_dir):
        raise FileNotFoundError(f'collect_results: work_dir {work_dir} is not a folder')
    name = _name_of(work_dir)
    record = find(name)
    result = RunResult(name=name, task=record.task if record else None)
    runs = sorted(d for d in glob.glob(osp.join(work_dir, '*')) if osp.isdir(d) and _RUN_DIR.match(osp.basename(d)))
    for run_dir in runs:                     # oldest first: later runs override
        raw = read_run(run_dir)
        if not raw:
            continue
        tta = _is_tta(run_dir)
        metrics = _to_ours(raw, tta=tta)
        if tta and 'miou_ms' not in metrics:
            continue                         # a TTA run counts only for the multi-scale mIoU column
        result.metrics.update(metrics)
        result.sources.append(run_dir)
    if result.task is None:
        result.task = _task_of_metrics(result.metrics)
    return result


def merge(results: Sequence[RunResult]) -> Dict[str, RunResult]:
    """Results by model name; work_dirs given later override earlier ones metric by metric."""
    merged: Dict[str, RunResult] = {}
    for res in results:
        into = merged.setdefault(res.name, RunResult(name=res.name, task=res.task))
        into.metrics.update(res.metrics)
        into.sources.extend(res.sources)
        into.task = into.task or res.task
    return merged


# ------------------------------------------------------------------------------------------------- tables
def _num(value: Optional[float], digits: int = 1) -> str:
    return '' if value is None else f'{value:.{digits}f}'


def _ours_cell(ours: Optional[float], official: Optional[float]) -> str:
    if ours is None:
        return ''
    if official is None:
        return f'{ours:.1f}'
    diff = round(ours, 1) - round(official, 1)
    return f'{ours:.1f} ({diff:+.1f})'


def table(task: str, results: Dict[str, RunResult], rows: Optional[List[ModelRecord]] = None) -> str:
    """A markdown table of ``task``: per model an ``official`` row and an ``ours`` row (difference to the
    official value in brackets); competitor rows as reported. Blank = not reported / not run."""
    keys = TABLE_METRICS[task]
    rows = records(task) if rows is None else rows
    head = ['Method', 'Backbone', 'Row', 'Params (M)', 'FLOPs (G)'] + [METRICS[k][0] for k in keys]
    lines = [f'### {TASK_TITLES[task]}', '', '| ' + ' | '.join(head) + ' |',
             '|' + '|'.join(['---'] * 3 + ['---:'] * (len(head) - 3)) + '|']
    for rec in rows:
        official = [_num(rec.official.get(k)) for k in keys]
        label = 'reported' if rec.competitor else 'official'
        lines.append('| ' + ' | '.join([rec.method, rec.backbone, label, _num(rec.params, 2),
                                        _num(rec.flops, FLOPS_DIGITS[task])] + official) + ' |')
        if rec.competitor:
            continue
        got = results.get(rec.name)
        ours = [_ours_cell(got.metrics.get(k) if got else None, rec.official.get(k)) for k in keys]
        lines.append('| ' + ' | '.join(['', '', 'ours', _num(rec.measured_params, 2),
                                        _num(rec.measured_flops, FLOPS_DIGITS[task])] + ours) + ' |')
    unknown = [r for r in results.values() if r.task == task and find(r.name) is None]
    for res in unknown:   # runs of configs the reference does not know: ours only
        ours = [_ours_cell(res.metrics.get(k), None) for k in keys]
        lines.append('| ' + ' | '.join([res.name, '', 'ours', '', ''] + ours) + ' |')
    return '\n'.join(lines)


def tables(results: Dict[str, RunResult], tasks: Optional[Sequence[str]] = None) -> str:
    """The tables of ``tasks`` (default: the tasks that have at least one result), cls, det, seg order."""
    if tasks is None:
        present = {r.task for r in results.values() if r.metrics}
        tasks = [t for t in ('cls', 'det', 'seg') if t in present]
    return '\n\n'.join(table(t, results) for t in tasks)
