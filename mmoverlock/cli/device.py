"""Device and process set-up of the tools: a GPU recipe adapted to a machine without CUDA (BN for SyncBN, fp32 for
AMP, DDP over gloo), the launcher's environment, and which process is the one that speaks."""
import os
from contextlib import contextmanager
from typing import Optional

import torch
from mmengine.config import Config, ConfigDict

from ..utils.config import amp_to_fp32, sync_bn_to_bn


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
