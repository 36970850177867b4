"""Checkpoints that are never half-written, and a resume pointer that never points at a missing file.

mmengine 0.10's ``LocalBackend.put`` opens the final path and writes into it, and its ``CheckpointHook``
deletes the oldest checkpoint *before* writing the new one and writes ``last_checkpoint`` in place. A job
killed (SIGKILL, pre-emption, out of memory) in one of those windows leaves a truncated ``.pth``, or a
``last_checkpoint`` that is empty or names a deleted file, and ``--resume`` then fails or silently
restarts from scratch.

Here every file goes to a hidden temporary file in the same folder, is flushed and fsync'ed, and is
moved over the final name with ``os.replace`` (atomic on POSIX and Windows): a reader sees the old file
or the complete new one. :class:`AtomicCheckpointHook` also reorders the hook's steps: write the new
checkpoint, then ``last_checkpoint``, and only then delete what ``max_keep_ckpts`` drops.
"""
import glob
import os
import os.path as osp
import tempfile
from pathlib import Path
from typing import Union

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log

from ..registry import register_hook

#: name of the mmengine file backend (``backend_args=dict(backend=ATOMIC_BACKEND)``)
ATOMIC_BACKEND = 'atomic_local'
PARTIAL_SUFFIX = '.partial'


def atomic_write(filepath: Union[str, Path], data: bytes) -> None:
    """Write ``data`` to ``filepath`` so that no reader, and no crash, ever sees it half-written."""
    filepath = str(filepath)
    folder = osp.dirname(osp.abspath(filepath))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{osp.basename(filepath)}.', suffix=PARTIAL_SUFFIX)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        if osp.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    """Persist the rename itself (POSIX); a no-op where folders cannot be opened."""
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


def remove_partial_files(folder: str) -> list:
    """Delete temporaries that a killed :func:`atomic_write` left in ``folder``; returns their paths."""
    leftovers = glob.glob(osp.join(glob.escape(folder), f'.*{PARTIAL_SUFFIX}'))
    for path in leftovers:
        os.unlink(path)
    return leftovers


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend with :func:`atomic_write` for ``put`` and ``put_text``."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        atomic_write(filepath, obj)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        atomic_write(filepath, obj.encode(encoding))


register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


@register_hook
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` (same arguments) whose checkpoints survive a kill at any moment.

    * every checkpoint and ``last_checkpoint`` is written atomically (temp file + fsync + ``os.replace``);
    * the checkpoint dropped by ``max_keep_ckpts`` is deleted only after the new one and the pointer to it
      are on disk, so ``--resume`` always finds a complete checkpoint;
    * temporaries left by a killed run are removed when training starts.

    Remote storage (``backend_args`` naming another backend) is passed through unchanged.
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if self.file_client_args is None and type(self.file_backend) is LocalBackend:
            self.backend_args = dict(backend=ATOMIC_BACKEND)
            self.file_backend = AtomicLocalBackend()
        if is_main_process() and isinstance(self.file_backend, AtomicLocalBackend):
            for folder in {self.out_dir, runner.work_dir}:
                for path in remove_partial_files(folder):
                    print_log(f'removed {path}, a checkpoint left half-written by a killed run',
                              logger='current')

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        dropped = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                dropped.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir, ckpt_filename, self.file_client_args, save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
            backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        atomic_write(osp.join(runner.work_dir, 'last_checkpoint'), str(self.last_ckpt).encode())
        for old_step in dropped:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old_step))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):   # deepspeed writes folders
                self.file_backend.rmtree(path)


__all__ = ['atomic_write', 'remove_partial_files', 'AtomicLocalBackend', 'AtomicCheckpointHook',
           'ATOMIC_BACKEND']
