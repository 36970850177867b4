"""The orderly end of a distributed run: every process finishes its last collective, the data loaders' worker
processes are shut down, the logs are flushed and the process group is destroyed, so that exit status 0 means
success (issue #33; the cause of the abort it fixes and the evidence are in ``docs/reliability.md``).

:class:`DistributedEndHook` does it at the end of ``Runner.train()`` / ``test()`` / ``val()`` (``after_run``),
declared in the configs (``custom_hooks``) so that mmdet's, mmseg's and mmpretrain's own tools get it as well
as ours. A lone process is left alone.
"""
import atexit
import logging
import sys

import torch.distributed as dist
from mmengine.hooks import Hook

from ..registry import HOOKS


def distributed() -> bool:
    """Whether this process is one of a started process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shutdown_loader_workers(runner) -> int:
    """Stop the worker processes of the runner's train / val / test data loaders (``persistent_workers``
    keeps them alive between epochs and, at the end, until the interpreter's last garbage collection).
    Returns how many loaders had workers."""
    stopped = 0
    for name in ('_train_loop', '_val_loop', '_test_loop'):
        loader = getattr(getattr(runner, name, None), 'dataloader', None)
        iterator = getattr(loader, '_iterator', None)
        if iterator is not None and hasattr(iterator, '_shutdown_workers'):
            iterator._shutdown_workers()
            loader._iterator = None
            stopped += 1
    return stopped


def flush_logs() -> None:
    """Flush every handler of every logger (mmengine's log file included) and the standard streams; a handler
    whose stream is closed already is skipped."""
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)]
    from mmengine.logging import MMLogger
    loggers += list(MMLogger._instance_dict.values())
    streams = [handler for logger in loggers for handler in logger.handlers] + [sys.stdout, sys.stderr]
    for stream in streams:
        try:
            stream.flush()
        except ValueError:   # a closed stream (a handler left by an earlier run in this process): nothing to write
            pass


def destroy_process_group() -> None:
    """Destroy the default process group (all of them), if it still exists: an ``atexit`` function, so that it
    runs before the interpreter shuts down, while every thread may still run Python."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def end_distributed_run(runner=None) -> bool:
    """End this process's part of a distributed run in order: data loader workers stopped, logs flushed, a
    barrier (every process has finished its last collective and its writes, e.g. rank 0's checkpoint), and the
    process group destroyed at exit (not now: a script may run ``runner.test()`` after ``runner.train()``).
    Returns False, doing nothing, in a lone process."""
    if not distributed():
        return False
    if runner is not None:
        shutdown_loader_workers(runner)
    flush_logs()
    dist.barrier()
    atexit.unregister(destroy_process_group)
    atexit.register(destroy_process_group)
    return True


@HOOKS.register_module()
class DistributedEndHook(Hook):
    """Ends each process of a distributed run in order after the run (:func:`end_distributed_run`); nothing in
    a lone process. Declared in the configs::

        custom_hooks = [..., dict(type='mmoverlock.DistributedEndHook')]
    """
    priority = 'LOWEST'

    def after_run(self, runner) -> None:
        end_distributed_run(runner)
