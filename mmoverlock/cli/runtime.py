"""Config and launcher helpers shared by tools/train.py and tools/test.py (det, seg and cls alike)."""
import os
import os.path as osp
import sys
import traceback
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Tuple

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


def amp_to_fp32(cfg: Config) -> bool:
    """Replace a config's ``AmpOptimWrapper`` (mmengine runs it on GPU, NPU or MLU only) by the fp32
    ``OptimWrapper`` with the same optimizer and clipping. Returns whether there was one."""
    optim = cfg.get('optim_wrapper')
    if not isinstance(optim, dict) or str(optim.get('type', '')).split('.')[-1] != 'AmpOptimWrapper':
        return False
    optim['type'] = 'OptimWrapper'
    for key in ('loss_scale', 'dtype', 'use_fsdp'):   # AmpOptimWrapper's own arguments
        optim.pop(key, None)
    return True


def prepare_for_device(cfg: Config, launcher: str = 'none') -> Optional[str]:
    """Make a GPU recipe run where there is no CUDA: BN for SyncBN, fp32 for AMP, gloo, DDP without device ids.

    Returns a one-line description of what was changed (None with CUDA, where nothing is)."""
    if torch.cuda.is_available():
        return None
    changes = [f'SyncBN -> BN ({count} places)'] if (count := sync_bn_to_bn(cfg)) else []
    if amp_to_fp32(cfg):
        changes.append('AmpOptimWrapper -> OptimWrapper (fp32)')
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


def set_launcher_env(launcher: str, local_rank: Optional[int]) -> None:
    if launcher != 'none' and 'LOCAL_RANK' not in os.environ and local_rank is not None:
        os.environ['LOCAL_RANK'] = str(local_rank)


def is_main_process() -> bool:
    """Rank 0 of the processes a launcher started (torchrun's ``RANK``, srun's ``SLURM_PROCID``), or a lone
    process: the one that prints a run's notices and errors."""
    for key in ('RANK', 'SLURM_PROCID'):
        if key in os.environ:
            return os.environ[key] == '0'
    return True


# ------------------------------------------------------------------------------------------------ config checks
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


# ------------------------------------------------------------------------------------------------ one-line errors
PACKAGE_DIR = osp.dirname(osp.dirname(osp.abspath(__file__))) + os.sep
#: what mmoverlock's checks raise (each a one-line message naming the value and the fix)
CHECK_ERRORS = (ValueError, FileNotFoundError, TypeError)


def own_check_error(err: BaseException, *files: str) -> Optional[BaseException]:
    """The error raised by mmoverlock's own code (or by code in ``files``, e.g. a tool's own checks) in
    ``err``'s chain (mmengine's registry re-raises a backbone's ValueError with the class names prefixed), or
    None when the error is not theirs."""
    own_files = {osp.abspath(f) for f in files}
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    for candidate in reversed(chain):   # the innermost first
        frames = traceback.extract_tb(candidate.__traceback__)
        where = osp.abspath(frames[-1].filename) if frames else ''
        if isinstance(candidate, CHECK_ERRORS) and (where.startswith(PACKAGE_DIR) or where in own_files):
            return candidate
    return None


@contextmanager
def one_line_errors(tool: str, *files: str):
    """Around building and running the Runner: an error of mmoverlock's checks (the channel and checkpoint
    hooks' ``before_run``, the backbone's arguments) or a mistake of :func:`known_mistake` ends the tool in one
    line on stderr, from rank 0 only (the other ranks exit silently with the same status); any other error keeps
    its traceback. ``files``: more source files whose errors are checks (the tool's own)."""
    try:
        yield
    except Exception as err:
        own = own_check_error(err, *files) if isinstance(err, CHECK_ERRORS) else None
        message = str(own) if own is not None else known_mistake(err)
        if message is None:
            raise
        raise SystemExit(f'{tool}: error: {message}' if is_main_process() else 1) from None


# ------------------------------------------------------------------- mistakes mmengine answers with a traceback
def _exception_chain(err: BaseException) -> List[BaseException]:
    """``err`` and the exceptions it was raised from or during, the innermost last."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def _frames(err: BaseException) -> List[Any]:
    """The frames of ``err``'s traceback, the innermost first."""
    frames, tb = [], err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames[::-1]


def _registry_names(registry) -> List[str]:
    """Every name a config can give ``type`` in ``registry``'s scope: its own and its parents' names bare, the
    other registries' of the tree with their scope prefix (``mmoverlock.OverLoCK``)."""
    names, node, reachable = [], registry, []
    while node is not None:
        names += list(node.module_dict)
        reachable.append(node)
        node = node.parent
    todo = [registry.root]
    while todo:
        node = todo.pop()
        if not any(node is r for r in reachable):
            names += [f'{node.scope}.{key}' for key in node.module_dict]
        todo += list(node.children.values())
    return list(dict.fromkeys(names))


def closest(name: str, candidates: List[str], count: int = 3) -> List[str]:
    """The ``candidates`` closest to ``name`` (case-insensitive; a scoped candidate also by its bare name), the
    best first; none when nothing is close."""
    import difflib

    def score(candidate: str) -> float:
        ratio = difflib.SequenceMatcher(None, name.lower(), candidate.lower()).ratio()
        bare = difflib.SequenceMatcher(None, name.split('.')[-1].lower(), candidate.split('.')[-1].lower()).ratio()
        return max(ratio, bare - 0.01)   # an exact full match before the same bare name in another scope

    scored = sorted(((score(c), c) for c in candidates), key=lambda sc: -sc[0])
    best = scored[0][0] if scored else 0.
    return [c for s, c in scored[:count] if s >= max(0.6, best - 0.1)]   # the near-best only


def _did_you_mean(names: List[str]) -> str:
    return 'did you mean ' + ' or '.join(f"'{n}'" for n in names) + '?' if names else ''


def _unknown_type(err: KeyError) -> Optional[str]:
    """mmengine's ``KeyError: 'X is not in the mmdet::model registry. Please check ...'``."""
    for frame in _frames(err):
        if frame.f_code.co_name != 'build_from_cfg' or 'obj_type' not in frame.f_locals:
            continue
        obj_type, registry = frame.f_locals['obj_type'], frame.f_locals.get('registry')
        if not isinstance(obj_type, str) or f'{obj_type} is not in the' not in str(err):
            return None
        where = f'{registry.split_scope_key(obj_type)[0] or registry.scope}::{registry.name}'
        hint = _did_you_mean(closest(obj_type, _registry_names(registry)))
        return f"unknown type '{obj_type}': not in the {where} registry" + (f'; {hint}' if hint else
                                                                            ' (nor close to a name in it)')
    return None


def _init_arguments(cls) -> List[str]:
    """The keyword arguments ``cls(...)`` takes: its ``__init__``'s and, through ``**kwargs``, its bases'."""
    import inspect
    names = []
    for klass in getattr(cls, '__mro__', [cls]):
        init = klass.__dict__.get('__init__') if isinstance(cls, type) else cls
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        names += [p.name for p in params if p.name != 'self' and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def _unknown_argument(err: TypeError) -> Optional[str]:
    """``TypeError: X.__init__() got an unexpected keyword argument 'y'`` from a config's ``dict(type=X, y=...)``."""
    import re
    found = re.search(r"unexpected keyword argument '(\w+)'", str(err))
    if found is None:
        return None
    for frame in _frames(err):   # raised by the call in build_from_cfg or by the __init__s it ran
        if frame.f_code.co_name != 'build_from_cfg':
            if frame.f_code.co_name == '__init__':
                continue
            return None
        bad = found.group(1)
        if 'obj_cls' not in frame.f_locals or bad not in (frame.f_locals.get('args') or {}):
            return None   # not a keyword of the config's dict: a bug elsewhere keeps its traceback
        cls, registry = frame.f_locals['obj_cls'], frame.f_locals.get('registry')
        known = _init_arguments(cls)
        hint = _did_you_mean(closest(bad, known)) or f'its arguments: {", ".join(known)}'
        scope = f' ({registry.scope}::{registry.name})' if registry is not None else ''
        return f"{getattr(cls, '__name__', cls)}{scope} got an unknown argument '{bad}'; {hint}"
    return None


def _file_of(err: BaseException) -> Optional[str]:
    """The file being read when ``err`` was raised: an open file or an existing path among the locals of the
    innermost frames."""
    for frame in _frames(err):
        for value in frame.f_locals.values():
            name = getattr(value, 'name', None) if hasattr(value, 'read') else value
            if isinstance(name, str) and 0 < len(name) < 4096 and osp.isfile(name):
                return name
    return None


def _malformed_file(err: BaseException) -> Optional[str]:
    """A JSON (COCO annotations) or XML (VOC) file that does not parse: the file, the parser's position."""
    import json
    from xml.etree.ElementTree import ParseError
    if isinstance(err, json.JSONDecodeError):
        what, position = 'JSON', f'{err.msg}: line {err.lineno} column {err.colno} (char {err.pos})'
    elif isinstance(err, ParseError):
        what, position = 'XML', str(err)
    else:
        return None
    path = _file_of(err)
    name = f"annotation file '{path}'" if path else 'an annotation file'
    return f'{name} is not valid {what} ({position}); is it truncated? download or write it again'


def known_mistake(err: BaseException) -> Optional[str]:
    """One line for the mistakes mmengine and the data sets report with a long traceback: an unknown registry
    type (with the closest registered names), an unknown constructor argument (with the closest argument names),
    an annotation file that does not parse (named, with the parser's position); None for anything else."""
    for candidate in reversed(_exception_chain(err)):   # the innermost first
        if isinstance(candidate, KeyError):
            message = _unknown_type(candidate)
        elif isinstance(candidate, TypeError):
            message = _unknown_argument(candidate)
        else:
            message = _malformed_file(candidate)
        if message:
            return message
    return None


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


# ------------------------------------------------------------------------------------------------ interruption
class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the program was (``signum``: which)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum, frame):
    """The first SIGINT / SIGTERM stops the run; more (a launcher passing the signal on) are ignored while it
    ends."""
    import signal
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(signum)


#: options of tools/train.py that take a value (dropped with it from the resume command) / may take one
_VALUE_OPTIONS, _OPTIONAL_VALUE_OPTIONS = ('--launcher', '--local_rank', '--local-rank'), ('--resume', )


def resume_command(tool: str, argv: List[str]) -> str:
    """The command that continues this run from its last checkpoint: the same one with ``--resume`` (no path:
    the work dir's ``last_checkpoint``); for processes that ``tools/dist_train.sh`` started, the launcher's."""
    import shlex
    import shutil
    args, drop = [], 0
    for i, arg in enumerate(argv):
        if drop:
            drop -= 1
            continue
        name = arg.split('=', 1)[0]
        if name in _VALUE_OPTIONS + _OPTIONAL_VALUE_OPTIONS:
            takes_next = '=' not in arg and i + 1 < len(argv) and (
                name in _VALUE_OPTIONS or not argv[i + 1].startswith('-'))
            drop = 1 if takes_next else 0
            continue
        args.append(arg)
    args.append('--resume')
    if 'LOCAL_WORLD_SIZE' in os.environ:   # started by torchrun (tools/dist_train.sh)
        nodes = ''.join(f'{key}={os.environ[key]} ' for key in ('NNODES', 'NODE_RANK', 'MASTER_ADDR', 'PORT')
                        if os.environ.get('NNODES', '1') != '1' and key in os.environ)
        return f"{nodes}tools/dist_train.sh {shlex.join(args[:1] + [os.environ['LOCAL_WORLD_SIZE']] + args[1:])}"
    on_path = shutil.which('python')
    python = 'python' if on_path and osp.realpath(on_path) == osp.realpath(sys.executable) else sys.executable
    return shlex.join([python, tool] + args)


def _last_complete_checkpoint(work_dir: str) -> Optional[str]:
    """What ``--resume`` would continue from (``last_checkpoint``, written only after its checkpoint is)."""
    try:
        return resume_target(work_dir)
    except (OSError, ValueError):
        return None


def _iteration_reached() -> Optional[int]:
    """The training iteration the current mmengine run was in (its message hub), if any."""
    from mmengine.logging import MessageHub
    if not MessageHub._instance_dict:
        return None
    return MessageHub.get_current_instance().get_info('iter')


@contextmanager
def interruption_line(tool: str, work_dir: str, argv: List[str]):
    """Around a training run: SIGINT (Ctrl-C) and SIGTERM (a scheduler's stop) end it, at any moment, with one line
    on stderr naming the last complete checkpoint and the command that continues from it, exit status 128 +
    the signal's number (rank 0 says it; the other processes exit silently with the same status). A checkpoint
    being written when the signal comes is finished first (``mmoverlock.AtomicCheckpointHook``)."""
    import signal
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, _raise_interrupted)
        except ValueError:   # not the main thread
            pass
    try:
        yield
    except BaseException as err:   # KeyboardInterrupt, also inside an error raised while it unwound
        interrupt = next((e for e in _exception_chain(err) if isinstance(e, KeyboardInterrupt)), None)
        if interrupt is None or isinstance(err, SystemExit):
            raise
        signum = getattr(interrupt, 'signum', signal.SIGINT)
        from .launch import a_peer_failed
        if is_main_process() and not a_peer_failed():   # a failed process's own line says why (issue #33)
            checkpoint = _last_complete_checkpoint(work_dir)
            iteration = _iteration_reached()
            where = f' in iteration {iteration + 1}' if iteration is not None else ''
            if checkpoint:
                state = f'the last complete checkpoint is {checkpoint}; continue with: {resume_command(tool, argv)}'
            else:
                state = f'no checkpoint was written yet in {work_dir}; start again with the same command'
            print(f'{tool}: interrupted by {signal.Signals(signum).name}{where}; {state}', file=sys.stderr,
                  flush=True)
        raise SystemExit(128 + signum) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
