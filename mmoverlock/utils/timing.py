"""The project's one timing utility: how long a callable takes, on a CPU or a CUDA device.

Used by the depthwise op's measured choice (:mod:`mmoverlock.ops.selection`), the fused kernels' first-use check
(:mod:`mmoverlock.ops.selfcheck`), the GPU check (:mod:`mmoverlock.analysis.gpu_check`) and the benchmark tools
(``tools/analysis/benchmark*.py``). Three clocks (``clock=``):

* ``'wall'`` -- ``time.perf_counter``; on CUDA the device is synchronised before and after each run, so a run's
  time includes its kernels;
* ``'process'`` -- ``time.process_time``: CPU time of this process, robust on a shared machine (host-side
  costs, CPU kernels);
* ``'events'`` -- CUDA events recorded around each run on the current stream (no device-wide synchronisation:
  what the op's choice uses during training); on a CPU device it falls back to ``'wall'``.

Imports torch only.
"""
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch

__all__ = ['CLOCKS', 'Timing', 'measure', 'synchronize', 'Stopwatch', 'min_ms']

#: the clocks :func:`measure` reads
CLOCKS = ('wall', 'process', 'events')


def synchronize(device: Optional[torch.device]) -> None:
    """Wait for ``device``'s queued work (CUDA); nothing elsewhere."""
    if device is not None and torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Milliseconds of each timed run by the clock asked for (``times_ms``, per call when runs batch several
    calls), the process CPU milliseconds of the same runs (``cpu_ms``) and, for CUDA devices measured with
    ``memory=True``, the peak memory growth in MiB over what was allocated before."""
    times_ms: List[float] = field(default_factory=list)
    cpu_ms: List[float] = field(default_factory=list)
    peak_mib: Optional[float] = None

    @property
    def min(self) -> float:
        return min(self.times_ms)

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_ms)


def _check_clock(clock: str) -> None:
    if clock not in CLOCKS:
        raise ValueError(f"timing: clock={clock!r} is not one of {CLOCKS}")


def measure(fn: Callable[[], object], device: Optional[torch.device] = None, warmup: int = 0, repeats: int = 1,
            calls: int = 1, clock: str = 'wall', memory: bool = False) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then time ``repeats`` runs of ``calls`` calls each with ``clock``.

    Args:
        fn: the work, called without arguments.
        device: where its kernels run (None: the CPU); CUDA work is synchronised (``'wall'``) or bracketed by
            events (``'events'``).
        warmup: untimed calls first (compilation, caches).
        repeats: timed runs (>= 1).
        calls: calls per timed run; each run's time is divided by it (host time per call of cheap functions).
        clock: ``'wall'``, ``'process'`` or ``'events'`` (module docstring).
        memory: record the peak memory growth over the timed runs (CUDA devices only).
    Returns:
        :class:`Timing`: ``repeats`` times in milliseconds (per call) by ``clock`` and by the process clock, and
        the peak memory growth.
    """
    _check_clock(clock)
    if repeats < 1 or calls < 1:
        raise ValueError(f'timing: repeats={repeats} and calls={calls} must both be >= 1')
    device = torch.device('cpu') if device is None else torch.device(device)
    cuda = device.type == 'cuda'
    for _ in range(warmup):
        fn()
    if cuda and clock != 'events':
        synchronize(device)
    base = None
    if memory and cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times, cpu = [], []
    for _ in range(repeats):
        cpu_begin = time.process_time()
        if clock == 'events' and cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / calls)
            cpu.append((time.process_time() - cpu_begin) * 1e3 / calls)
            continue
        now = time.process_time if clock == 'process' else time.perf_counter
        if cuda:
            synchronize(device)
        begin = now()
        for _ in range(calls):
            fn()
        if cuda:
            synchronize(device)
        times.append((now() - begin) * 1e3 / calls)
        cpu.append((time.process_time() - cpu_begin) * 1e3 / calls)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20 if base is not None else None
    return Timing(times, cpu, peak)


def min_ms(name: str, fn: Callable[[], object], device: torch.device, repeats: int = 3) -> float:
    """The fastest of ``repeats`` runs of ``fn`` in milliseconds, CUDA events on the current stream (the process
    clock's wall time elsewhere, e.g. the Triton interpreter's CPU tensors): the timer the depthwise op's measured
    choice is given by default (:func:`mmoverlock.ops.selection.select`); ``name`` (the candidate) is unused
    here, for timers that report per candidate."""
    return measure(fn, device, repeats=repeats, clock='events').min


class Stopwatch:
    """The time of a block: ``with Stopwatch(device) as watch: ...`` then ``watch.ms`` (wall clock; CUDA work in
    the block is waited for when it ends, when ``device`` is a CUDA device)."""

    def __init__(self, device: Optional[torch.device] = None, clock: str = 'wall'):
        _check_clock(clock)
        self.device, self.clock, self.ms = device, clock, float('nan')
        self._now = time.process_time if clock == 'process' else time.perf_counter

    def __enter__(self) -> 'Stopwatch':
        self._begin = self._now()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.ms = (self._now() - self._begin) * 1e3
