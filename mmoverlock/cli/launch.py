"""torchrun, ending a failed run in one line: ``python -m mmoverlock.cli.launch [torchrun options] SCRIPT ...``.

It is PyTorch's launcher (``torch.distributed.run``: the same options, processes, rendezvous and stopping of
the other processes when one fails); only a failure ends differently. torchrun raises ``ChildFailedError`` and
prints its own traceback and a failure table under the failed process's output; here that is one line naming
the process and how it ended, and the exit status is 1. The failed process's own one-line error
(:func:`mmoverlock.cli.runtime.rank_failures`) is above it. ``tools/dist_train.sh``, ``tools/dist_test.sh`` and
``tools/demo.py`` start their processes with it.
"""
import logging
import signal
import sys
from typing import List, Optional

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

#: torchrun's log lines that the one line replaces: the failure itself and the stopping of the other processes
REPLACED_LOG_LINES = ('failed (exitcode', 'Sending process')


class _ReplacedLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(REPLACED_LOG_LINES)


def failure_line(err: ChildFailedError, launcher: str = 'torchrun') -> str:
    """One line for torchrun's ``ChildFailedError``: the first process that failed, its exit status or signal,
    and how many failed."""
    rank, failure = err.get_first_failure()
    code = failure.exitcode
    if code is not None and code < 0:
        try:
            how = f'was killed by {signal.Signals(-code).name}'
        except ValueError:
            how = f'was killed by signal {-code}'
    else:
        how = f'exited with status {code}'
    stopped = -signal.SIGTERM
    others = sum(1 for r, f in err.failures.items() if r != rank and f.exitcode != stopped)
    more = f'; {others} more failed' if others > 0 else ''
    return (f'{launcher}: error: process {rank} (pid {failure.pid}) {how}{more}; the launcher stopped the other '
            f'processes')


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
