"""Test-time command-line options of tools/test.py mapped onto the config: mmdet-2 style ``--eval`` names,
``--out``, ``--show-dir`` and ``--tta``."""
from typing import List, Optional

from mmengine.config import Config, ConfigDict

#: mmdet-2 style ``--eval`` names -> (task, metric)
EVAL_METRICS = {
    'bbox': ('det', 'bbox'), 'segm': ('det', 'segm'), 'proposal': ('det', 'proposal_fast'),
    'mIoU': ('seg', 'mIoU'), 'mDice': ('seg', 'mDice'), 'mFscore': ('seg', 'mFscore'),
    'accuracy': ('cls', 'accuracy'),
}


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
