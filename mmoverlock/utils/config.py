"""Config rewrites shared by the tools and the library (ONNX export, model analysis): a config's task from its
``default_scope``, and the rewrites that make a GPU recipe build where there is no CUDA."""
from typing import Any

from mmengine.config import Config

#: default_scope -> task name
TASKS = {'mmdet': 'det', 'mmseg': 'seg', 'mmpretrain': 'cls'}


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


__all__ = ['TASKS', 'task_of', 'sync_bn_to_bn', 'amp_to_fp32']
