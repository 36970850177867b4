"""Checkpoints that are never half-written, and a resume pointer that never points at a missing file.

mmengine 0.10's ``CheckpointHook`` writes a checkpoint straight to its final path, writes ``last_checkpoint``
in place, and, with ``max_keep_ckpts``, deletes the oldest checkpoint *before* writing the new one. A job
killed (SIGKILL, pre-emption, out of memory) in one of those windows leaves a truncated ``.pth``, or a
``last_checkpoint`` that is empty or names a deleted file, and ``--resume`` then fails or silently restarts
from scratch.

:class:`AtomicCheckpointHook` saves through mmengine's public API only (``Runner.save_checkpoint`` and the
hook's public ``after_train_epoch`` / ``after_train_iter``): each checkpoint is written to a hidden temporary
file in the same folder, fsync'ed and moved over its final name with ``os.replace`` (atomic on POSIX and
Windows), then ``last_checkpoint`` is replaced the same way, and only then are the checkpoints that
``max_keep_ckpts`` drops deleted. A reader sees the old files or the complete new ones.

SIGINT (Ctrl-C) and SIGTERM (a scheduler's stop) arriving during a save are acted on once the save is complete
(:func:`signals_deferred`): mmengine formats the config into the checkpoint with yapf under a bare ``except``,
which turns a Ctrl-C there into ``SyntaxError: Failed to format the config file``. A second Ctrl-C during the
save stops at once; what it leaves is a temporary that no resume reads and the next run deletes.
"""
import contextlib
import glob
import logging
import os
import os.path as osp
import signal
import tempfile
import threading
from pathlib import Path
from typing import Union

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.logging import MMLogger, print_log

from ..registry import HOOKS

PARTIAL_SUFFIX = '.partial'
#: message-hub key of the kept checkpoints' steps (mmengine's own name, so a resumed run keeps counting)
KEEP_KEY = 'keep_ckpt_ids'


def _fsync_dir(folder: str) -> None:
    """Persist a rename in ``folder`` (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _partial_name(filepath: str) -> str:
    folder = osp.dirname(osp.abspath(filepath))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{osp.basename(filepath)}.', suffix=PARTIAL_SUFFIX)
    os.close(fd)
    return tmp


def replace_atomically(tmp: str, filepath: str) -> None:
    """fsync ``tmp`` and move it over ``filepath`` in one step."""
    with open(tmp, 'rb+') as f:
        os.fsync(f.fileno())
    os.replace(tmp, filepath)
    _fsync_dir(osp.dirname(osp.abspath(filepath)))


def atomic_write(filepath: Union[str, Path], data: bytes) -> None:
    """Write ``data`` to ``filepath`` so that no reader, and no crash, ever sees it half-written."""
    filepath = str(filepath)
    os.makedirs(osp.dirname(osp.abspath(filepath)), exist_ok=True)
    tmp = _partial_name(filepath)
    try:
        with open(tmp, 'wb') as f:
            f.write(data)
        replace_atomically(tmp, filepath)
    except BaseException:
        if osp.exists(tmp):
            os.unlink(tmp)
        raise


def remove_partial_files(folder: str) -> list:
    """Delete temporaries that a killed write left in ``folder``; returns their paths."""
    leftovers = glob.glob(osp.join(glob.escape(folder), f'.*{PARTIAL_SUFFIX}'))
    for path in leftovers:
        os.unlink(path)
    return leftovers


#: the signals a save completes before acting on
DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_deferred(signals=DEFERRED_SIGNALS):
    """Inside, ``signals`` are recorded and acted on when the block ends, by the handlers in place before it
    (Python's KeyboardInterrupt, a tool's handler, or the default action). The same signal a second time acts at
    once. Outside the main thread (where Python cannot set handlers) a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in signals}
    received = []

    def restore():
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def record(signum, frame):
        if signum in received:   # asked twice: act now
            restore()
            signal.raise_signal(signum)
            return
        received.append(signum)

    for signum in signals:
        signal.signal(signum, record)
    try:
        yield
    finally:
        restore()
    for signum in received:   # after the block, as if the signal arrived now
        signal.raise_signal(signum)


class _UnusedFileClientNotices(logging.Filter):
    """Drops the deprecation notices mmengine 0.10 logs whenever it builds a ``FileClient``, which its
    ``CheckpointHook.before_train`` and ``save_checkpoint`` do on every run even without ``file_client_args``,
    and then do not use."""

    NOTICES = ('"FileClient" will be deprecated', '"HardDiskBackend" is the alias')

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOTICES)


@contextlib.contextmanager
def _quiet_unused_file_client(file_client_args):
    """Filter those notices from the current mmengine logger while inside; with ``file_client_args`` set the
    FileClient is used, and its notice stays."""
    notices = _UnusedFileClientNotices()
    logger = MMLogger.get_current_instance()
    if file_client_args is None:
        logger.addFilter(notices)
    try:
        yield
    finally:
        logger.removeFilter(notices)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` (same arguments) whose checkpoints survive a kill at any moment.

    * every checkpoint and ``last_checkpoint`` is written to a temporary file and moved into place;
    * the checkpoints dropped by ``max_keep_ckpts`` are deleted only after the new one and the pointer to it
      are on disk, so ``--resume`` always finds a complete checkpoint;
    * temporaries left by a killed run are removed when training starts.

    Remote storage (``backend_args`` naming another backend, or ``file_client_args``) is written as
    mmengine writes it, with the same deletion order. ``save_best`` is mmengine's.
    """

    def __init__(self, *args, max_keep_ckpts: int = -1, **kwargs):
        # the parent never deletes periodic checkpoints: this hook does, after the new one is written
        super().__init__(*args, max_keep_ckpts=-1, **kwargs)
        self.keep_count = max_keep_ckpts
        self.kept_steps: list = []

    def before_train(self, runner) -> None:
        with _quiet_unused_file_client(self.file_client_args):
            super().before_train(runner)
        self.kept_steps = list(runner.message_hub.get_info(KEEP_KEY) or [])
        if is_main_process() and self._local():
            for folder in {self.out_dir, runner.work_dir}:
                for path in remove_partial_files(folder):
                    print_log(f'removed {path}, a checkpoint left half-written by a killed run', logger='current')

    def after_train_epoch(self, runner) -> None:
        if self.by_epoch and (self.every_n_epochs(runner, self.interval, self.save_begin)
                              or (self.save_last and self.is_last_train_epoch(runner))):
            runner.logger.info(f'Saving checkpoint at {runner.epoch + 1} epochs')
            self.save(runner, runner.epoch + 1, dict(epoch=runner.epoch + 1, iter=runner.iter))

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self.by_epoch and (self.every_n_train_iters(runner, self.interval, self.save_begin)
                                  or (self.save_last and self.is_last_train_iter(runner))):
            runner.logger.info(f'Saving checkpoint at {runner.iter + 1} iterations')
            self.save(runner, runner.iter + 1, dict(epoch=runner.epoch, iter=runner.iter + 1))

    def _local(self) -> bool:
        return self.file_client_args is None and type(self.file_backend) is LocalBackend

    def save(self, runner, step: int, meta: dict) -> None:
        """Write the checkpoint of ``step``, then ``last_checkpoint``, then delete what is no longer kept."""
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        dropped = []
        if self.keep_count > 0 and step not in self.kept_steps:
            self.kept_steps.append(step)
            dropped, self.kept_steps = self.kept_steps[:-self.keep_count], self.kept_steps[-self.keep_count:]
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)   # stored in the checkpoint (resume)
        runner.message_hub.update_info(KEEP_KEY, list(self.kept_steps))
        with signals_deferred():
            self._write(runner, filename, meta)
            if not is_main_process():
                return
            for old in dropped:   # after the pointer to the new checkpoint is on disk
                path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
                if self.file_backend.isfile(path):
                    self.file_backend.remove(path)
                elif self.file_backend.isdir(path):   # deepspeed writes folders
                    self.file_backend.rmtree(path)

    def _write(self, runner, filename: str, meta: dict) -> None:
        """The checkpoint (to a temporary moved over ``self.last_ckpt``), then ``last_checkpoint``."""
        local = self._local() and is_main_process()
        target = _partial_name(self.last_ckpt) if local else filename
        try:
            with _quiet_unused_file_client(self.file_client_args):
                runner.save_checkpoint(
                    self.out_dir, osp.basename(target) if local else target, self.file_client_args,
                    save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
                    meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        except BaseException:
            if local and osp.exists(target):
                os.unlink(target)
            raise
        if not is_main_process():
            return
        if local:
            replace_atomically(target, self.last_ckpt)
        atomic_write(osp.join(runner.work_dir, 'last_checkpoint'), str(self.last_ckpt).encode())


__all__ = ['atomic_write', 'remove_partial_files', 'replace_atomically', 'signals_deferred',
           'AtomicCheckpointHook']
