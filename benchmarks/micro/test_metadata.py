"""Metadata traffic: the small messages a coupled workflow exchanges all the time.

* ``put_scalar``: store a one-element int64 tensor (a step counter, a flag);
* ``exists``: ask whether a key is present (how components look for new data);
* ``poll``: put-to-visible latency: each rank publishes a key that its neighbour polls for
  (with the client's backoff), so a round ends when the neighbour's value has been seen.

``ops_per_s`` is measured: all ranks' operations over each round's common window, median over rounds.

``test_metadata_cold`` times one call per round after the rank has slept ``--simai-idle`` seconds
(after the round's barrier), as a workflow's component makes its first call after a step's work:
``cold_latency_s`` (``put_scalar``, ``get_scalar``: an 8-byte tensor, ``exists``), where the back-to-back
rounds above find the client and the server awake; ``neighbours=busy``: the odd ranks compute meanwhile
and only the even ranks' calls are timed; ``neighbours=busy_warm``: as ``busy``, but the callers compute
instead of sleeping, as the workflow's simulation at a sync point (see ``conftest.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

from simai_core import mpi
from simai_core.bench.measure import NeighbourPoll, PairedRounds, sync_ranks
from simai_core.bench.record import AGGREGATE_OPS, LATENCY, record

pytestmark = pytest.mark.micro
ROUNDS = 50
POLL_TIMEOUT_S = 30.0


@pytest.mark.parametrize("op", ["put_scalar", "exists", "poll"])
def test_metadata(benchmark, backend, staging, simai_run, op, pytestconfig):
    rounds = pytestconfig.getoption("--simai-rounds") or ROUNDS
    rank, size = mpi.rank(), mpi.size()
    value = np.array([rank], dtype=np.int64)
    poll = NeighbourPoll("micro.meta", lambda k: staging.put_tensor(k, value), staging.delete,
                         lambda k: staging.poll(k, POLL_TIMEOUT_S))
    mine, neighbour = poll.mine, poll.neighbour
    staging.put_tensor(mine, value)

    ops = {"put_scalar": lambda: staging.put_tensor(mine, value), "exists": lambda: staging.exists(mine),
           "poll": poll.round}
    timing = PairedRounds(ops[op], prepare=poll.reset if op == "poll" else None)
    benchmark.pedantic(timing.target, setup=timing.setup, rounds=rounds, warmup_rounds=1)
    sync_ranks()

    got = staging.get_tensor(neighbour)
    assert got is not None and got.tolist() == [(rank - 1) % size]
    local = {"latency_s": timing.seconds()}
    record(benchmark, simai_run(backend, {"op": op, "rounds": rounds}), local,
           {"latency_s": LATENCY, "ops_per_s": AGGREGATE_OPS}, aggregates={"ops_per_s": (timing.windows(), 1.0)})


@pytest.mark.parametrize("op", ["put_scalar", "get_scalar", "exists"])
def test_metadata_cold(benchmark, backend, staging, simai_run, op, cold_idle_s, cold_rounds, after_idle, neighbour_params,
                       cold_caller):
    rounds = cold_rounds
    rank = mpi.rank()
    key, value, out = f"micro.cold.{rank}", np.array([rank], dtype=np.int64), np.empty(1, dtype=np.int64)
    staging.put_tensor(key, value)
    ops = {"put_scalar": lambda: staging.put_tensor(key, value), "get_scalar": lambda: staging.get_tensor(key, out=out),
           "exists": lambda: staging.exists(key)}
    timing = PairedRounds(ops[op] if cold_caller else lambda: None)  # a busy neighbour computes, in the setup
    benchmark.pedantic(timing.target, setup=after_idle(timing), rounds=rounds, warmup_rounds=1)
    sync_ranks()

    got = staging.get_tensor(key)
    assert got is not None and got.tolist() == [rank]
    staging.delete(key)
    params = {"op": op, "rounds": rounds, "idle_s": cold_idle_s, **neighbour_params}
    record(benchmark, simai_run(backend, params), {"cold_latency_s": timing.seconds() if cold_caller else []},
           {"cold_latency_s": LATENCY})
