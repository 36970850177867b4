"""The two sides of a multi-process run's end (issue #33; docs/reliability.md).

The launcher: ``python -m mmoverlock.cli.launch [torchrun options] SCRIPT ...`` is torchrun
(``torch.distributed.run``: the same options, processes, rendezvous and stopping of the other processes when
one fails); only a failure ends differently. torchrun raises ``ChildFailedError`` and prints its own traceback
and a failure table under the failed process's output; here that is one line naming the process and how it
ended, and the exit status is 1. ``tools/dist_train.sh``, ``tools/dist_test.sh`` and ``tools/demo.py`` start
their processes with it.

The processes: ``tools/train.py`` and ``tools/test.py`` run inside :func:`rank_failures` (a process that raises
prints one line, above the launcher's, and exits 1) and end with :func:`end_of_run` (exit 0 after the last
barrier and the flush, without the interpreter's shutdown). Both do nothing in a lone process.
"""
import logging
import os
import os.path as osp
import signal
import sys
import traceback
from contextlib import contextmanager
from typing import List, Optional

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

#: torchrun's log lines that the one line replaces: the failure itself and the stopping of the other processes
REPLACED_LOG_LINES = ('failed (exitcode', 'Sending process')
#: the exit status of a process that failed after another had (its collectives broke, or the same error):
#: the launcher's line names the process that failed first (exit status 1), not this one
PEER_FAILED_STATUS = 3


class _ReplacedLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(REPLACED_LOG_LINES)


def failure_line(err: ChildFailedError, launcher: str = 'torchrun') -> str:
    """One line for torchrun's ``ChildFailedError``: the process that failed on its own (not stopped by the
    launcher, not failing because another had: :data:`PEER_FAILED_STATUS`) and first, its exit status or signal,
    and how many more failed on their own. Processes that exit within one of torchrun's polls are reported
    together, so its own "first failure" may be a process that only followed another."""
    stopped = (-signal.SIGTERM, 128 + signal.SIGTERM)   # killed by the launcher's SIGTERM, or ended on it
    followers = stopped + (PEER_FAILED_STATUS, )
    own = {r: f for r, f in err.failures.items() if f.exitcode not in followers}
    if own:
        rank = min(own, key=lambda r: (own[r].timestamp, r))
        failure = own[rank]
    else:
        rank, failure = err.get_first_failure()
    code = failure.exitcode
    if code is not None and code < 0:
        try:
            how = f'was killed by {signal.Signals(-code).name}'
        except ValueError:
            how = f'was killed by signal {-code}'
    else:
        how = f'exited with status {code}'
    others = sum(1 for r in own if r != rank)
    more = f'; {others} more failed' if others > 0 else ''
    return (f'{launcher}: error: process {rank} (pid {failure.pid}) {how}{more}; the launcher stopped the other '
            f'processes')


# ---------------------------------------------------------------------------------------------- the processes
#: the launcher's store key counting the processes that failed: the first one says why, the others are quiet
FAILED_KEY = 'mmoverlock/failed_processes'


def _world_size() -> int:
    return int(os.environ.get('WORLD_SIZE', os.environ.get('SLURM_NTASKS', '1')))


def _rank() -> int:
    return int(os.environ.get('RANK', os.environ.get('SLURM_PROCID', '0')))


def _first_to_fail() -> bool:
    """Whether this process is the first of the run to fail: a counter in the process group's store (torchrun's
    agent holds it, so it outlives the processes). Before the process group exists, process 0 speaks."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return _rank() == 0
    try:
        from torch.distributed.distributed_c10d import _get_default_store
        return _get_default_store().add(FAILED_KEY, 1) == 1
    except (RuntimeError, ValueError, OSError):   # the store is gone with the process that held it
        return True


def a_peer_failed() -> bool:
    """Whether another process of this distributed run has failed already (:func:`rank_failures` counted it):
    then this one is being stopped because of it (the launcher's SIGTERM, a broken collective) and has nothing
    to add to that process's line. False in a lone process or when the store cannot be reached."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return False
    try:
        from torch.distributed.distributed_c10d import _get_default_store
        return _get_default_store().add(FAILED_KEY, 0) > 0
    except (RuntimeError, ValueError, OSError):
        return False


def one_line(err: BaseException) -> str:
    """``Type: message`` on one line (messages with newlines, e.g. mmengine's registry errors, are joined; a
    KeyError's message without the quotes ``str`` gives it)."""
    text = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str) \
        else str(err)
    message = ' '.join(text.split())
    return f'{type(err).__name__}: {message}' if message else type(err).__name__


@contextmanager
def rank_failures(tool: str, work_dir: Optional[str]):
    """Around a distributed run (a no-op in a lone process): an error raised in one process ends it in one line
    on stderr, ``TOOL: error: process R of N: Type: message (traceback: FILE)``, with the traceback written to
    ``WORK_DIR/process_R_error.log``, and exit status 1. Only the first process to fail prints; the others
    (a config error fails every process, a failed peer breaks the others' collectives) write their traceback
    and exit silently with :data:`PEER_FAILED_STATUS`. The launcher (torchrun) stops the processes still
    running as soon as one exits non-zero. A ``SystemExit`` (a one-line error, or an interruption's status)
    prints its message and exits with its status the same way; ``KeyboardInterrupt`` passes through."""
    if _world_size() <= 1:
        yield
        return
    try:
        yield
    except SystemExit as err:
        if isinstance(err.code, str):
            print(err.code, file=sys.stderr)
        exit_process(err.code if isinstance(err.code, int) else int(err.code is not None))
    except Exception as err:   # noqa: B902  (any error of a process: one line, the traceback to a file)
        rank, world = _rank(), _world_size()
        path = None
        if work_dir:
            try:
                os.makedirs(work_dir, exist_ok=True)
                path = osp.join(work_dir, f'process_{rank}_error.log')
                with open(path, 'w') as f:
                    f.write(''.join(traceback.format_exception(err)))
            except OSError:
                path = None
        first = _first_to_fail()
        if first:
            where = f' (traceback: {path})' if path else ''
            print(f'{tool}: error: process {rank} of {world}: {one_line(err)}{where}', file=sys.stderr)
        exit_process(1 if first else PEER_FAILED_STATUS)


def exit_process(status: int) -> None:
    """End a process of a distributed run now with ``status``, after flushing every log handler and stream:
    ``os._exit``, without the interpreter's shutdown, in which gloo's threads -- still running, since the DDP
    model keeps the process group alive after ``destroy_process_group`` -- may be ended by CPython mid-way and
    abort the process (``terminate called without an active exception``; docs/reliability.md). A no-op in a
    lone process. Called by the tools once the run is over (:func:`end_of_run`) or has failed."""
    if _world_size() <= 1:
        return
    from mmoverlock.engine.dist_end import flush_logs
    flush_logs()
    os._exit(status)


def end_of_run() -> None:
    """The end of a tool's distributed run that succeeded: every process has passed the run's last barrier
    (``mmoverlock.DistributedEndHook``, or here when the config lacks it), then exits 0 (:func:`exit_process`).
    A no-op in a lone process."""
    if _world_size() <= 1:
        return
    from mmoverlock.engine.dist_end import distributed
    if distributed():
        import torch.distributed as dist
        dist.barrier()
    exit_process(0)


# ---------------------------------------------------------------------------------------------- the launcher
def main(argv: Optional[List[str]] = None, launcher: str = 'torchrun') -> None:
    from torch.distributed.run import parse_args, run
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.getLogger('torch.distributed.elastic.multiprocessing.api').addFilter(_ReplacedLines())
    try:
        run(args)
    except ChildFailedError as err:
        raise SystemExit(failure_line(err, launcher)) from None


if __name__ == '__main__':
    main()
