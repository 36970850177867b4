"""Checks the tools run before the Runner is built, each ending in a one-line error that names the bad value and
the fix: the checkpoint file, the optimizer constructor, the data paths, writable outputs, the ``--resume``
target."""
import os
import os.path as osp
from typing import Any, Iterator, List, Optional, Tuple

from mmengine.config import Config


def check_checkpoint(path: str, flag: str = 'checkpoint') -> str:
    """A local checkpoint must exist and read as a PyTorch checkpoint (weights only; a zip file's tensors are
    memory-mapped, not read; URLs are left to the loader); one-line error otherwise. Whether it fits the model
    is checked once the model is built (:func:`mmoverlock.engine.check_checkpoint_fits`)."""
    from ..checkpoint.io import read_checkpoint
    if path.startswith(('http://', 'https://', 's3://')):
        return path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} '{path}' does not exist; expected a .pth file or an http(s) URL")
    read_checkpoint(path, mmap=True)
    return path


#: optimizer constructors that give layer-wise lr decay by backbone parameter names: mmdet's and mmseg's know
#: ConvNeXt (and mmseg's BEiT / MAE) names only; mmoverlock's subclass of mmdet's reads OverLoCK's stage table
LAYER_DECAY_CONSTRUCTORS = ('LearningRateDecayOptimizerConstructor', 'LayerDecayOptimizerConstructor')
OVERLOCK_LAYER_DECAY = "mmoverlock.LearningRateDecayOptimizerConstructor"


def check_optim_constructor(cfg: Config) -> None:
    """mmdet's / mmseg's layer-decay constructor of ConvNeXt's configs on an OverLoCK backbone: one line saying
    what to change (mmdet's raises a bare NotImplementedError when the optimizer is built). mmoverlock's
    (``constructor='mmoverlock.LearningRateDecayOptimizerConstructor'``, the same ``paramwise_cfg``) and
    mmpretrain's (``LearningRateDecayOptimWrapperConstructor``) know OverLoCK's layers."""
    optim = cfg.get('optim_wrapper')
    backbone = cfg.get('model', {}).get('backbone') or {}
    if not isinstance(optim, dict) or not isinstance(backbone, dict):
        return
    scope, _, constructor = str(optim.get('constructor', '')).rpartition('.')
    if (constructor in LAYER_DECAY_CONSTRUCTORS and scope != 'mmoverlock'
            and 'OverLoCK' in str(backbone.get('type', ''))):
        raise ValueError(
            f"optim_wrapper.constructor='{optim['constructor']}' gives layer-wise lr decay to ConvNeXt / ViT "
            f"backbones only, not to model.backbone.type='{backbone['type']}'; use "
            f"constructor='{OVERLOCK_LAYER_DECAY}' (mmdet's paramwise_cfg: decay_rate, decay_type; "
            f"README, 'Usage in your configs')")


#: where each task's README explains its data layout
DATA_DOCS = {'det': 'configs/det/README.md#data', 'seg': 'configs/seg/README.md#data',
             'cls': 'configs/cls/README.md#data'}


def _is_local(path: Any) -> bool:
    return isinstance(path, str) and bool(path) and '://' not in path and not path.startswith(('s3:', 'petrel:'))


def _datasets(node: Any, where: str) -> Iterator[Tuple[str, dict]]:
    """(config path, dataset config) of a dataset and the datasets a wrapper (Repeat / Concat ...) holds."""
    if not isinstance(node, dict):
        return
    yield where, node
    if isinstance(node.get('dataset'), dict):
        yield from _datasets(node['dataset'], where + '.dataset')
    for i, child in enumerate(node.get('datasets') or []):
        yield from _datasets(child, f'{where}.datasets.{i}')


def _data_paths(dataset: dict) -> Iterator[Tuple[str, str]]:
    """(key, local path) a dataset config reads, as mmengine's BaseDataset joins them: ``data_root`` first,
    then ``ann_file`` and every ``data_prefix`` entry under it (absolute ones as they are)."""
    backend = (dataset.get('backend_args') or {}).get('backend', 'local')
    root = dataset.get('data_root') or ''
    if backend != 'local' or (root and not _is_local(root)):
        return
    if root:
        yield 'data_root', root
    ann_file = dataset.get('ann_file')
    if _is_local(ann_file):
        yield 'ann_file', osp.join(root, ann_file)
    prefix = dataset.get('data_prefix')
    prefix = {'': prefix} if isinstance(prefix, str) else prefix   # mmpretrain takes a plain folder too
    for key, value in (prefix.items() if isinstance(prefix, dict) else ()):
        if isinstance(value, str) and (value or root) and '://' not in value:
            yield f'data_prefix.{key}' if key else 'data_prefix', osp.join(root, value)


def check_data(cfg: Config, loaders: List[str], evaluators: List[str], task: str) -> None:
    """Every local path the named dataloaders' datasets (and evaluators' ``ann_file``) read must exist, checked
    before the Runner is built; one line naming the first missing one, the data docs and the override."""
    overrides, missing = [], None
    for loader in loaders:
        dataset = (cfg.get(loader) or {}).get('dataset')
        for where, node in _datasets(dataset, f'{loader}.dataset'):
            if 'data_root' in node:
                overrides.append(f'{where}.data_root=DIR')
            for key, path in _data_paths(node):
                if missing is None and not osp.exists(path):
                    missing = (f'{where}.{key}', path, node.get('data_root'))
    for name in evaluators:
        evaluator = cfg.get(name)
        for i, metric in enumerate(evaluator if isinstance(evaluator, list) else [evaluator]):
            ann_file = metric.get('ann_file') if isinstance(metric, dict) else None
            if _is_local(ann_file):
                where = f'{name}.{i}.ann_file' if isinstance(evaluator, list) else f'{name}.ann_file'
                overrides.append(f'{where}=FILE')
                if missing is None and not osp.exists(ann_file):
                    missing = (where, ann_file, None)
    if missing is None:
        return
    where, path, root = missing
    root_note = f" (data_root='{root}')" if root and where.split('.')[-1] != 'data_root' else ''
    raise FileNotFoundError(
        f"data not found: {where} '{path}' does not exist{root_note}; lay out the data set as "
        f"{DATA_DOCS.get(task, 'the config')} says, or point the config at yours: --cfg-options "
        f"{' '.join(overrides)}")


def check_writable(path: str, flag: str, folder: bool) -> str:
    """``path`` (a folder with ``folder``, else a file) can be created and written: one line naming it otherwise.
    Creates the missing folders (what the tools do anyway), writes and removes a probe file."""
    import errno
    import tempfile
    target = path if folder else (osp.dirname(osp.abspath(path)) or '.')
    try:
        os.makedirs(target, exist_ok=True)
        with tempfile.TemporaryFile(dir=target):
            pass
        if not folder and osp.isdir(path):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    except OSError as err:
        reason = err.strerror or str(err)
        raise ValueError(f"{flag} '{path}' is not writable ({reason}); pass a {'folder' if folder else 'file'} "
                         f"you can write to") from None
    return path


def resume_target(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` (without a path) continues from: the one ``work_dir/last_checkpoint`` names, or
    None when the folder has no ``last_checkpoint``; one line when it names a file that is not there."""
    pointer = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(pointer):
        return None
    with open(pointer) as f:
        checkpoint = f.read().strip()
    if not checkpoint or not osp.isfile(checkpoint):
        raise FileNotFoundError(f"--resume: {pointer} names '{checkpoint}', which does not exist; pass the "
                                f"checkpoint to resume from: --resume {work_dir}/iter_N.pth (or epoch_N.pth)")
    return checkpoint
