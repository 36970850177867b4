"""mmoverlock.utils.timing, the project's one timing utility (the depthwise op's choice, the first-use check, the
GPU check and the benchmarks time through it)."""
import time

import pytest
import torch

from mmoverlock.utils import timing


def test_measure_counts_warmup_repeats_and_calls():
    calls = []
    result = timing.measure(lambda: calls.append(1), warmup=2, repeats=3, calls=4)
    assert len(calls) == 2 + 3 * 4
    assert len(result.times_ms) == len(result.cpu_ms) == 3 and result.peak_mib is None
    assert result.min <= result.median


def test_clocks_tell_wall_from_process_time():
    """A sleep takes wall time but no CPU time: the wall clock sees it (per call), the process clock does not."""
    wall = timing.measure(lambda: time.sleep(0.02), repeats=2, calls=2, clock='wall')
    assert wall.min >= 19 and max(wall.cpu_ms) < 10, wall
    process = timing.measure(lambda: time.sleep(0.02), repeats=2, clock='process')
    assert process.median < 10, process
    with timing.Stopwatch() as watch:
        time.sleep(0.02)
    assert watch.ms >= 19
    assert timing.min_ms('candidate', lambda: time.sleep(0.01), torch.device('cpu')) >= 9   # events: CPU falls back


def test_bad_arguments_are_one_line():
    with pytest.raises(ValueError, match=r"timing: clock='gpu' is not one of \('wall', 'process', 'events'\)"):
        timing.measure(lambda: None, clock='gpu')
    with pytest.raises(ValueError, match=r'timing: repeats=0 and calls=1 must both be >= 1'):
        timing.measure(lambda: None, repeats=0)
