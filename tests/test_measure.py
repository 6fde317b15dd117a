"""Round timing: references alternate around the operation; aggregates come from round windows."""

from __future__ import annotations

import pytest

from simai_core.bench.measure import PairedRounds
from simai_core.bench.record import AGGREGATE_GBPS, aggregate_fom, round_rates


def run_rounds(timing: PairedRounds, rounds: int, warmup: int = 1) -> None:
    """What ``benchmark.pedantic(timing.target, setup=timing.setup, ...)`` does, then ``finish``."""
    for _ in range(warmup + rounds):
        timing.setup()
        timing.target()
    timing.finish()


@pytest.mark.parametrize("rounds", [4, 5])
def test_references_alternate_before_and_after_the_operation(rounds):
    log: list[str] = []
    timing = PairedRounds(lambda: log.append("B"), {"raw": lambda: log.append("R")})
    run_rounds(timing, rounds)
    pairs = ["".join(log[i:i + 2]) for i in range(0, len(log), 2)]
    assert pairs == ["RB", "BR"] * ((rounds + 1) // 2) + ["RB"] * ((rounds + 1) % 2)
    assert len(timing.windows()) == len(timing.windows("raw")) == rounds  # warm-up dropped on both


def test_prepare_runs_before_every_round_untimed():
    log: list[str] = []
    timing = PairedRounds(lambda: log.append("B"), prepare=lambda: log.append("p"))
    run_rounds(timing, 3)
    assert log == ["p", "B"] * 4


def test_round_rates_divide_all_bytes_by_the_common_window():
    # round 0: both clients overlap exactly; round 1: client 1 starts when client 0 ends
    windows = [[(0.0, 1.0), (10.0, 11.0)], [(0.0, 1.0), (11.0, 12.0)]]
    assert round_rates(windows, [2.0, 2.0]) == [4.0, 2.0]


def test_a_late_client_lowers_the_aggregate_but_not_its_own_rate():
    on_time = [[(float(r), r + 0.01) for r in range(5)] for _ in range(2)]
    late = [on_time[0], [(r + 0.05, r + 0.06) for r in range(5)]]
    fast, slow = aggregate_fom(on_time, [1.0, 1.0], AGGREGATE_GBPS), aggregate_fom(late, [1.0, 1.0], AGGREGATE_GBPS)
    assert fast.value == pytest.approx(200.0) and slow.value == pytest.approx(2 / 0.06)
    # each client's own rate is the same: only the window shows the delay
    assert fast.ranks.model_dump() == pytest.approx(slow.ranks.model_dump())
    assert slow.samples is not None and len(slow.samples) == 5 and slow.samples_layout == "rounds"


def test_clients_that_move_nothing_do_not_enter_the_spread():
    windows = [[(0.0, 0.5)], [(0.0, 0.001)]]
    fom = aggregate_fom(windows, [1.0, 0.0], AGGREGATE_GBPS)
    assert fom.value == pytest.approx(2.0) and fom.ranks.min == fom.ranks.max == pytest.approx(2.0)
