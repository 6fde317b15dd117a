"""Run explicitly by tests/test_mpi_plumbing.py under ``mpiexec -n 2``: measured aggregates see a late rank.

Each rank times ``ROUNDS`` rounds of a 2 ms operation that moves one unit; rank 1 is made late by
50 ms per round, either inside its timed operation or just before it. The measured aggregate
(all units over each round's common window) must drop; a sum of per-rank medians would not
notice the late start at all.
"""

import statistics
import time

import pytest

from simai_core import mpi
from simai_core.bench.clock import global_clock
from simai_core.bench.measure import sync_ranks
from simai_core.bench.record import AGGREGATE_OPS, window_fom

ROUNDS, OP_S, DELAY_S = 8, 0.002, 0.05


def measure(delay_inside: bool, delay_before: bool) -> tuple[float, float]:
    """(measured aggregate ops/s, sum over ranks of each rank's median ops/s)."""
    late, clock, windows = mpi.rank() == 1, global_clock(), []
    for _ in range(ROUNDS + 1):  # the first round is a warm-up
        sync_ranks()
        if late and delay_before:
            time.sleep(DELAY_S)  # outside this rank's window: its own rate does not change
        start = clock.now()
        time.sleep(OP_S + (DELAY_S if late and delay_inside else 0.0))
        windows.append((start, clock.now()))
    windows = windows[1:]
    aggregate = window_fom(windows, 1.0, AGGREGATE_OPS).value
    summed = sum(mpi.gather_to_all(statistics.median(1.0 / (e - s) for s, e in windows)))
    return aggregate, summed


def test_a_late_rank_lowers_the_measured_aggregate():
    assert mpi.size() == 2
    clock = global_clock()
    assert clock.error_s < 0.005, f"clock offset error {clock.error_s} s"
    base_agg, base_sum = measure(False, False)
    inside_agg, _ = measure(True, False)
    before_agg, before_sum = measure(False, True)
    # two 2 ms ops side by side: about 2 ops per 2 ms; a 50 ms late rank stretches every round ~26x
    assert inside_agg < base_agg / 8, (base_agg, inside_agg)
    assert before_agg < base_agg / 8, (base_agg, before_agg)
    # ... which the sum of per-rank medians cannot see when the delay falls outside the rank's own window
    assert before_sum == pytest.approx(base_sum, rel=0.5), (base_sum, before_sum)
