"""The demo's console: each phase is one line with a progress bar; the tools it runs write to log files.

``tools/demo.py`` runs ``tools/test.py`` and ``tools/train.py`` as child processes. Their whole output (the
config dumps, mmengine's environment block, every loss line) goes to a log file; this module follows that file
and turns mmengine's progress lines into a `rich <https://rich.readthedocs.io>`_ progress bar (rich comes with
mmengine). On a terminal the bar moves; in a file or a pipe each phase prints its final line once.

mmengine's ``LoggerHook`` writes lines such as::

    ... Epoch(train) [2][130/200]  base_lr: 1.8e-02 lr: 1.8e-02  eta: 0:04:40  time: 0.2214 ... loss: 1.3 ...
    ... Epoch(val) [3][15/15]    coco/bbox_mAP: 0.61  coco/bbox_mAP_50: 0.82 ...
    ... Epoch(test) [10/15]    eta: 0:00:05  time: 0.45 ...
"""
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Dict, List, Optional, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
from rich.text import Text

TRAIN_LINE = re.compile(r'Epoch\(train\)\s*\[(\d+)\]\[\s*(\d+)/(\d+)\]')
EVAL_LINE = re.compile(r'Epoch\((val|test)\)\s*(?:\[(\d+)\])?\[\s*(\d+)/(\d+)\]')
LOSS = re.compile(r'\sloss: ([0-9.]+(?:e[-+]?\d+)?)')
METRIC = re.compile(r'(coco/\w+): (-?[0-9.]+)')
#: how often the log file is read (s)
POLL_INTERVAL = 0.5
#: lines of a failed phase's log shown on the console
FAILURE_TAIL = 15


@dataclass
class LogProgress:
    """What mmengine's log lines say about a run so far.

    Args:
        max_epochs (int, optional): a training run's epochs; the total is ``max_epochs x`` the iterations per
            epoch its log lines give. ``None`` for a test run (the total is its batches).
    """
    max_epochs: Optional[int] = None
    done: int = 0
    total: Optional[int] = None
    loss: Optional[float] = None
    #: the last validation / test metrics logged, e.g. {'coco/bbox_mAP_50': 0.82}, and the epoch of a validation
    metrics: Dict[str, float] = field(default_factory=dict)
    metrics_epoch: Optional[int] = None

    def feed(self, line: str) -> None:
        """Update from one log line (lines that are not mmengine progress lines are ignored)."""
        train = TRAIN_LINE.search(line)
        if train and self.max_epochs:
            epoch, it, per_epoch = (int(g) for g in train.groups())
            self.done, self.total = (epoch - 1) * per_epoch + it, self.max_epochs * per_epoch
            loss = LOSS.search(line)
            if loss:
                self.loss = float(loss.group(1))
            return
        evaluation = EVAL_LINE.search(line)
        if evaluation:
            mode, epoch, it, total = evaluation.groups()
            if mode == 'test' and not self.max_epochs:
                self.done, self.total = int(it), int(total)
            metrics = {k: float(v) for k, v in METRIC.findall(line)}
            if metrics:
                self.metrics, self.metrics_epoch = metrics, int(epoch) if epoch else None

    def status(self) -> str:
        """A short text for the end of the progress line: the running loss and the last AP50."""
        parts = []
        if self.loss is not None:
            parts.append(f'loss {self.loss:.3f}')
        if 'coco/bbox_mAP_50' in self.metrics:
            where = f' (epoch {self.metrics_epoch})' if self.metrics_epoch else ''
            parts.append(f"bbox AP50 {self.metrics['coco/bbox_mAP_50']:.3f}{where}")
        return '  '.join(parts)


class LogFollower:
    """Reads the complete lines a running process has appended to ``path`` since the last call."""

    def __init__(self, path: str):
        self.path = path
        self._offset = 0
        self._partial = ''

    def new_lines(self) -> List[str]:
        if not os.path.exists(self.path):
            return []
        with open(self.path, encoding='utf-8', errors='replace') as f:
            f.seek(self._offset)
            chunk = f.read()
            self._offset = f.tell()
        lines = (self._partial + chunk).split('\n')
        self._partial = lines.pop()
        return lines

    def rest(self) -> List[str]:
        """Everything left, the unterminated last line included (once the process has ended)."""
        lines = self.new_lines()
        if self._partial:
            lines, self._partial = lines + [self._partial], ''
        return lines


class PhaseFailed(RuntimeError):
    """A child process of the demo ended with a non-zero exit code."""


#: the line width when the output is a file or a pipe (rich's default there is 80)
FILE_WIDTH = 120


def make_console() -> Console:
    """The console the demo writes to: stdout; plain text, ``FILE_WIDTH`` wide, when it is not a terminal."""
    console = Console(highlight=False, soft_wrap=True)   # printed lines are not cut to the width
    if not console.is_terminal:
        console = Console(highlight=False, soft_wrap=True, width=FILE_WIDTH)
    return console


class TimeColumn(ProgressColumn):
    """``0:01:10 (ETA 0:04:30)`` while a phase runs, its time once it has finished."""

    def render(self, task) -> Text:
        elapsed = timedelta(seconds=int(task.finished_time if task.finished else task.elapsed or 0))
        if task.finished or task.time_remaining is None:
            return Text(str(elapsed))
        return Text(f'{elapsed} (ETA {timedelta(seconds=int(task.time_remaining))})')


def progress_bar(console: Console) -> Progress:
    """One phase's progress line: label, bar, done / total, time (and ETA), status (loss, AP)."""
    return Progress(TextColumn('{task.description:<10}'), BarColumn(bar_width=28), MofNCompleteColumn(),
                    TextColumn('{task.fields[unit]}'), TimeColumn(), TextColumn('{task.fields[status]}'),
                    console=console)


def tail(path: str, count: int = FAILURE_TAIL) -> str:
    with open(path, encoding='utf-8', errors='replace') as f:
        return ''.join(f.readlines()[-count:])


def failed(label: str, returncode: int, log_file: str) -> PhaseFailed:
    """The error of a phase that ended with ``returncode``: which phase, and the end of its log."""
    return PhaseFailed(f'demo: {label} failed (exit code {returncode}); the last lines of {log_file}:\n'
                       f'{tail(log_file)}')


def run_verbose(console: Console, label: str, commands: Sequence[Sequence[str]], log_file: str,
                cwd: Optional[str], env: Optional[dict]) -> None:
    """``commands`` one after the other, their output on the terminal; ``log_file`` says where it went."""
    with open(log_file, 'w') as log:
        log.write(f'(--verbose: the output of the {label} phase went to the terminal)\n')
    for cmd in commands:
        console.print(f'\n$ {" ".join(cmd)}')
        returncode = subprocess.run(list(cmd), cwd=cwd, env=env).returncode
        if returncode:
            raise PhaseFailed(f'demo: {label} failed (exit code {returncode}): {" ".join(cmd)}')


def run_phase(console: Console, label: str, cmd: Sequence[str], log_file: str, *, unit: str,
              max_epochs: Optional[int] = None, cwd: Optional[str] = None, env: Optional[dict] = None,
              verbose: bool = False) -> LogProgress:
    """Run ``cmd`` as one phase of the demo and return what its log said.

    Without ``verbose`` the process's stdout and stderr go to ``log_file`` and the console shows one progress
    line (``label``, a bar over ``unit``s, the elapsed time, the loss and last AP50); with it, the output streams
    to the terminal as it comes. Raises :class:`PhaseFailed` (with the log's last lines) on a non-zero exit.
    """
    os.makedirs(os.path.dirname(log_file) or '.', exist_ok=True)
    progress = LogProgress(max_epochs=max_epochs)
    if verbose:
        run_verbose(console, label, [cmd], log_file, cwd, env)
        return progress
    follower = LogFollower(log_file)
    with open(log_file, 'w') as log, progress_bar(console) as bar:
        task = bar.add_task(label, total=None, unit=unit, status='starting')
        process = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        while True:
            finished = process.poll() is not None
            for line in (follower.rest() if finished else follower.new_lines()):
                progress.feed(line)
            if progress.total:
                bar.update(task, total=progress.total, completed=progress.done, status=progress.status())
            if finished:
                break
            time.sleep(POLL_INTERVAL)
        if process.returncode == 0 and progress.total:
            bar.update(task, completed=progress.total)
    if process.returncode:
        raise failed(label, process.returncode, log_file)
    return progress


class BackgroundSteps:
    """Commands that run in processes of their own while the demo goes on, and end as one phase.

    :meth:`start` launches commands at once (each with its output in a temporary file); :meth:`wait` shows the
    phase -- a bar over all the commands started, advancing as each ends --, writes their outputs to
    ``log_file`` in the order they were started and raises :class:`PhaseFailed` if one failed; :meth:`close`
    stops what is still running (a demo that fails elsewhere). With ``verbose`` nothing runs in the background:
    :meth:`wait` runs the commands one after the other, their output on the terminal.
    """

    def __init__(self, console: Console, label: str, log_file: str, *, cwd: Optional[str] = None,
                 env: Optional[dict] = None, verbose: bool = False):
        self.console, self.label, self.log_file = console, label, log_file
        self.cwd, self.env, self.verbose = cwd, env, verbose
        self._steps = []   # (command, process or None, output file or None)

    def start(self, commands: Sequence[Sequence[str]]) -> None:
        for cmd in commands:
            if self.verbose:
                self._steps.append((list(cmd), None, None))
                continue
            output = tempfile.TemporaryFile('w+', encoding='utf-8')
            process = subprocess.Popen(list(cmd), cwd=self.cwd, env=self.env, stdout=output,
                                       stderr=subprocess.STDOUT)
            self._steps.append((list(cmd), process, output))

    def wait(self) -> None:
        os.makedirs(os.path.dirname(self.log_file) or '.', exist_ok=True)
        if self.verbose:
            run_verbose(self.console, self.label, [cmd for cmd, _, _ in self._steps], self.log_file, self.cwd,
                        self.env)
            return
        with progress_bar(self.console) as bar:
            task = bar.add_task(self.label, total=len(self._steps), unit='steps', status='')
            while True:
                ended = sum(process.poll() is not None for _, process, _ in self._steps)
                bar.update(task, completed=ended)
                if ended == len(self._steps):
                    break
                time.sleep(POLL_INTERVAL)
        returncode = 0
        with open(self.log_file, 'w') as log:
            for cmd, process, output in self._steps:
                output.seek(0)
                log.write(f'$ {" ".join(cmd)}\n{output.read()}')
                output.close()
                returncode = returncode or process.returncode
        self._steps = []
        if returncode:
            raise failed(self.label, returncode, self.log_file)

    def close(self) -> None:
        """Stop the commands still running and drop their output."""
        for _, process, output in self._steps:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
            if output is not None:
                output.close()
        self._steps = []
