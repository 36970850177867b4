"""Config and launcher helpers shared by tools/train.py and tools/test.py (det, seg and cls alike)."""
import os
from contextlib import contextmanager
from typing import Any, List, Optional

import torch
from mmengine.config import Config, ConfigDict

#: default_scope -> task name
TASKS = {'mmdet': 'det', 'mmseg': 'seg', 'mmpretrain': 'cls'}

#: mmdet-2 style ``--eval`` names -> (task, metric)
EVAL_METRICS = {
    'bbox': ('det', 'bbox'), 'segm': ('det', 'segm'), 'proposal': ('det', 'proposal_fast'),
    'mIoU': ('seg', 'mIoU'), 'mDice': ('seg', 'mDice'), 'mFscore': ('seg', 'mFscore'),
    'accuracy': ('cls', 'accuracy'),
}


def task_of(cfg: Config) -> str:
    """'det' | 'seg' | 'cls' from the config's ``default_scope``."""
    scope = cfg.get('default_scope')
    if scope not in TASKS:
        raise ValueError(f"config default_scope='{scope}' is not one of {sorted(TASKS)}; "
                         f"mmoverlock's tools run mmdet, mmseg and mmpretrain configs")
    return TASKS[scope]


def _walk(node: Any, fn) -> Any:
    if isinstance(node, dict):
        node = fn(node)
        for key in list(node.keys()):
            node[key] = _walk(node[key], fn)
    elif isinstance(node, list):
        return [_walk(v, fn) for v in node]
    elif isinstance(node, tuple):
        return tuple(_walk(v, fn) for v in node)
    return node


def sync_bn_to_bn(cfg: Config) -> int:
    """Replace every ``SyncBN`` norm config by ``BN`` (no CUDA, no NCCL: SyncBN cannot run). Returns count."""
    count = 0

    def fix(d):
        nonlocal count
        if d.get('type') == 'SyncBN':
            d['type'] = 'BN'
            count += 1
        return d

    cfg.model = _walk(cfg.model, fix)
    if cfg.get('sync_bn'):    # the Runner-level switch (every BN -> SyncBN in distributed runs; cls configs)
        cfg.pop('sync_bn')
        count += 1
    return count


@contextmanager
def _cuda_set_device_disabled():
    """mmengine 0.10.7's launchers call ``torch.cuda.set_device`` unconditionally; skip it for a moment."""
    original = torch.cuda.set_device
    torch.cuda.set_device = lambda *args, **kwargs: None
    try:
        yield
    finally:
        torch.cuda.set_device = original


def init_cpu_distributed(launcher: str, dist_cfg: Optional[dict] = None) -> None:
    """Start the process group with gloo where there is no CUDA (``--launcher pytorch|slurm`` on CPU).

    The Runner then finds it initialised and skips its own ``init_dist``, which would fail in
    ``torch.cuda.set_device``. A no-op with CUDA, without a launcher, or when already initialised.
    """
    if torch.cuda.is_available() or launcher == 'none' or torch.distributed.is_initialized():
        return
    from mmengine.dist import init_dist
    kwargs = dict(dist_cfg or {})
    kwargs['backend'] = 'gloo'
    with _cuda_set_device_disabled():
        init_dist(launcher, **kwargs)


def prepare_for_device(cfg: Config, launcher: str = 'none') -> Optional[str]:
    """Make a GPU recipe run where there is no CUDA: BN for SyncBN, gloo, DDP without device ids.

    Returns a one-line description of what was changed (None with CUDA, where nothing is)."""
    if torch.cuda.is_available():
        return None
    changes = [f'SyncBN -> BN ({count} places)'] if (count := sync_bn_to_bn(cfg)) else []
    if launcher != 'none':
        changes.append('DDP over gloo')
        cfg.setdefault('env_cfg', ConfigDict())
        cfg.env_cfg.setdefault('dist_cfg', ConfigDict())
        cfg.env_cfg.dist_cfg['backend'] = 'gloo'
        wrapper = cfg.get('model_wrapper_cfg') or ConfigDict(
            type='MMDistributedDataParallel', broadcast_buffers=False,   # as the Runner's default wrapper
            find_unused_parameters=cfg.get('find_unused_parameters', False))
        wrapper['device_ids'] = None   # a CPU module takes no device ids
        cfg.model_wrapper_cfg = wrapper
        init_cpu_distributed(launcher, cfg.env_cfg.dist_cfg)
    return 'no CUDA device: ' + ', '.join(changes) if changes else None


def eval_metrics(names: List[str], task: str) -> List[str]:
    """Validate ``--eval`` names against the config's task; one-line error otherwise."""
    metrics = []
    for name in names:
        if name not in EVAL_METRICS or EVAL_METRICS[name][0] != task:
            valid = [k for k, (t, _) in EVAL_METRICS.items() if t == task]
            raise ValueError(f"--eval {name} does not apply to a {task} config; valid: {valid}")
        metrics.append(EVAL_METRICS[name][1])
    return metrics


def apply_eval(cfg: Config, names: Optional[List[str]], task: str) -> None:
    """Map mmdet-2 ``--eval`` names onto the test evaluator."""
    if not names:
        return
    metrics = eval_metrics(names, task)
    evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [cfg.test_evaluator]
    first = evaluators[0]
    if task == 'det':
        first['metric'] = metrics if len(metrics) > 1 else metrics[0]
    elif task == 'seg':
        first['iou_metrics'] = metrics
    else:
        first.setdefault('type', 'Accuracy')
        first.setdefault('topk', (1, 5))


def apply_out(cfg: Config, out: Optional[str], task: str) -> None:
    """``--out results.pkl``: dump raw predictions besides the metrics."""
    if not out:
        return
    if not out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out {out}: the output file must end with .pkl or .pickle')
    dump = dict(type='DumpDetResults' if task == 'det' else 'DumpResults', out_file_path=out)
    evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [cfg.test_evaluator]
    cfg.test_evaluator = list(evaluators) + [dump]


def apply_show_dir(cfg: Config, show_dir: Optional[str], task: str) -> None:
    """``--show-dir DIR``: draw predictions for every test image under DIR (mmengine's visualization hook)."""
    if not show_dir:
        return
    hook = cfg.default_hooks.setdefault('visualization', ConfigDict())
    if task == 'det':
        hook.update(type='mmdet.DetVisualizationHook', draw=True, test_out_dir=show_dir)
    elif task == 'seg':
        hook.update(type='mmseg.SegVisualizationHook', draw=True, interval=1)
        cfg.visualizer['save_dir'] = show_dir
    else:
        hook.update(type='mmpretrain.VisualizationHook', enable=True, out_dir=show_dir)


def apply_tta(cfg: Config) -> None:
    """``--tta``: wrap the model in the config's ``tta_model`` and test with its ``tta_pipeline``."""
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise ValueError('--tta: this config defines no tta_model / tta_pipeline')
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def check_checkpoint(path: str, flag: str = 'checkpoint') -> str:
    """A local checkpoint must exist (URLs are left to the loader); one-line error otherwise."""
    if not path.startswith(('http://', 'https://', 's3://')) and not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} '{path}' does not exist; expected a .pth file or an http(s) URL")
    return path


def set_launcher_env(launcher: str, local_rank: Optional[int]) -> None:
    if launcher != 'none' and 'LOCAL_RANK' not in os.environ and local_rank is not None:
        os.environ['LOCAL_RANK'] = str(local_rank)
