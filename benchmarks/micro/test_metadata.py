"""Metadata traffic: the small messages a coupled workflow exchanges all the time.

* ``put_scalar``: store a one-element int64 tensor (a step counter, a flag);
* ``exists``: ask whether a key is present (how components look for new data);
* ``poll``: put-to-visible latency: each rank publishes a key that its neighbour polls for
  (with the client's backoff), so a round ends when the neighbour's value has been seen.
"""

from __future__ import annotations

import numpy as np
import pytest

from simai_core import mpi
from simai_core.bench.measure import sync_ranks
from simai_core.bench.record import LATENCY, record
from simai_core.fom import FomSpec

pytestmark = pytest.mark.micro
ROUNDS = 50
POLL_TIMEOUT_S = 30.0
OPS_PER_S = FomSpec(unit="ops/s", better="higher", combine="sum")


@pytest.mark.parametrize("op", ["put_scalar", "exists", "poll"])
def test_metadata(benchmark, backend, staging, simai_run, op, pytestconfig):
    rounds = pytestconfig.getoption("--simai-rounds") or ROUNDS
    rank, size = mpi.rank(), mpi.size()
    mine, neighbour = f"micro.meta.{rank}", f"micro.meta.{(rank - 1) % size}"
    value = np.array([rank], dtype=np.int64)
    staging.put_tensor(mine, value)

    def reset() -> None:
        sync_ranks()  # every neighbour has seen the last round's key...
        staging.delete(mine)
        sync_ranks()  # ...and every key is gone before any rank publishes again

    def publish_and_poll() -> None:
        staging.put_tensor(mine, value)
        if not staging.poll(neighbour, POLL_TIMEOUT_S):
            raise TimeoutError(f"{neighbour} not visible after {POLL_TIMEOUT_S} s")

    if op == "put_scalar":
        benchmark.pedantic(lambda: staging.put_tensor(mine, value), setup=sync_ranks, rounds=rounds, warmup_rounds=1)
    elif op == "exists":
        benchmark.pedantic(lambda: staging.exists(mine), setup=sync_ranks, rounds=rounds, warmup_rounds=1)
    else:
        benchmark.pedantic(publish_and_poll, setup=reset, rounds=rounds, warmup_rounds=1)
    sync_ranks()

    got = staging.get_tensor(neighbour)
    assert got is not None and got.tolist() == [(rank - 1) % size]
    seconds = benchmark.stats.stats.median
    local = {"latency_s": seconds, "ops_per_s": 1.0 / seconds}
    record(benchmark, simai_run(backend, {"op": op, "rounds": rounds}), local,
           {"latency_s": LATENCY, "ops_per_s": OPS_PER_S})
