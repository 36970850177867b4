"""A training run stopped by SIGINT / SIGTERM ends in one line: the last complete checkpoint and the command that
continues from it."""
import os
import os.path as osp
import sys
from contextlib import contextmanager
from typing import List, Optional

from .checks import resume_target
from .device import is_main_process
from .errors import exception_chain


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
        interrupt = next((e for e in exception_chain(err) if isinstance(e, KeyboardInterrupt)), None)
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
