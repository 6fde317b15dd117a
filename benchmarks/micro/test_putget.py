"""Put/get tensor sweep: every rank moves its own key, overwritten each round (as SmartSim-Scaling does).

FOMs per op:

* ``<op>_latency_s``: mean over ranks of each rank's median round;
* ``<op>_GBps``: measured aggregate, the median over rounds of all ranks' bytes over the round's
  common window on one clock; ``<op>_GBps_per_rank``: the mean of each rank's own median rate;
* ``<op>_vs_raw``: that aggregate over the raw path's (``RawReference``: the fastest plain path the
  backend's transport offers), timed on the same bytes in the same rounds, alternately before
  and after the backend operation; ``<op>_vs_<ref>`` for each further named path (redis-py).

What a workflow does differently, measured by two variants:

* ``test_tensor_cold``: one put or get per round, timed after the rank has slept ``--simai-idle``
  seconds (after the round's barrier), as a component's first call after its step's work:
  ``cold_latency_s``, the mean over ranks of each rank's median round, at :data:`COLD_SIZES`
  (``neighbours=busy``: the odd ranks compute meanwhile, only the even ranks' calls are timed;
  ``neighbours=busy_warm``: as ``busy``, but the callers compute instead of sleeping, as the workflow's
  simulation at a sync point: see ``conftest.py``);
* ``test_tensor_cold_fresh_key``: as ``test_tensor_cold`` with ``neighbours=busy_warm``, but each round's
  put goes under a new key (the last round's is deleted before the round's barrier): the workflow's
  snapshot put at a sync point, beside the trainer (``--simai-trainer-size``) whose memory traffic
  slows a new key's page allocation and copy;
* ``test_tensor_fresh_key``: puts back to back, each under a new key (the previous round's key is
  deleted before the round's barrier, outside the timed call), as a workflow puts every snapshot:
  ``fresh_key_put_latency_s``, ``fresh_key_put_GBps_per_rank`` and the measured aggregate
  ``fresh_key_put_GBps``, as for ``put`` above.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from simai_core import mpi
from simai_core.bench.measure import PairedRounds, check_references, default_rounds, reference_op, sync_ranks
from simai_core.bench.record import LATENCY, paired_throughput, record
from simai_core.sizes import format_size
from simai_core.staging import registry

pytestmark = pytest.mark.micro
#: Sizes of the cold-call variant: a few, spanning the workflow's snapshots (debug 16 KiB to medium 2 MiB per rank).
COLD_SIZES = (4 * 1024, 64 * 1024, 2 * 1024 * 1024, 4 * 1024 * 1024)


@pytest.mark.parametrize("op", ["put", "get"])
def test_tensor(benchmark, backend, staging, staging_pool, simai_run, nbytes, op, pytestconfig):
    rounds = pytestconfig.getoption("--simai-rounds") or default_rounds(nbytes)
    key = f"micro.tensor.{mpi.rank()}"
    data = np.random.default_rng(mpi.rank()).integers(0, 256, nbytes, dtype=np.uint8)
    out = np.empty_like(data)
    address = staging_pool.address(backend)
    refs = {"raw": registry.raw_reference(backend, address), **registry.second_references(backend, address)}
    try:
        if op == "get":
            staging.put_tensor(key, data)
            for name, ref in refs.items():
                ref.put(f"{name}.{key}", memoryview(data))
        paths = {name: reference_op(ref, f"{name}.{key}", op, data, out) for name, ref in refs.items()}
        target = (lambda: staging.put_tensor(key, data)) if op == "put" else (lambda: staging.get_tensor(key, out=out))
        timing = PairedRounds(target, paths)
        benchmark.pedantic(timing.target, setup=timing.setup, rounds=rounds, warmup_rounds=1)
        timing.finish()
        if op == "get":  # each reference's get must bring every byte too
            check_references(refs, key, data, out)
    finally:
        for ref in refs.values():
            ref.close()

    # The transfer must be right, not only fast.
    out = staging.get_tensor(key) if op == "put" else staging.get_tensor(key, out=out)
    assert out is not None and np.array_equal(out, data)

    params = {"op": op, "nbytes": nbytes, "rounds": rounds, "raw": refs["raw"].description,
              "references": {name: ref.description for name, ref in refs.items() if name != "raw"}}
    record(benchmark, simai_run(backend, params), **paired_throughput(op, timing, nbytes / 1e9))


@pytest.mark.parametrize("cold_nbytes", COLD_SIZES, ids=[format_size(s) for s in COLD_SIZES])
@pytest.mark.parametrize("op", ["put", "get"])
def test_tensor_cold(benchmark, backend, staging, simai_run, cold_nbytes, op, cold_rounds, cold_idle_s, after_idle,
                     neighbour_params, cold_caller):
    key = f"micro.tensor.cold.{mpi.rank()}"
    data = np.random.default_rng(mpi.rank()).integers(0, 256, cold_nbytes, dtype=np.uint8)
    out = np.empty_like(data)
    staging.put_tensor(key, data)
    call = (lambda: staging.put_tensor(key, data)) if op == "put" else (lambda: staging.get_tensor(key, out=out))
    timing = PairedRounds(call if cold_caller else lambda: None)  # a busy neighbour computes, in the setup
    benchmark.pedantic(timing.target, setup=after_idle(timing), rounds=cold_rounds, warmup_rounds=1)
    sync_ranks()

    got = staging.get_tensor(key)
    assert got is not None and np.array_equal(got, data) and (op == "put" or not cold_caller or np.array_equal(out, data))
    staging.delete(key)
    params = {"op": op, "nbytes": cold_nbytes, "rounds": cold_rounds, "idle_s": cold_idle_s, **neighbour_params}
    local = {"cold_latency_s": timing.seconds() if cold_caller else []}
    record(benchmark, simai_run(backend, params), local, {"cold_latency_s": LATENCY})


@pytest.mark.parametrize("cold_nbytes", COLD_SIZES, ids=[format_size(s) for s in COLD_SIZES])
@pytest.mark.parametrize("neighbours", ["busy_warm"], indirect=True)  # the fixture: it skips a serial run
def test_tensor_cold_fresh_key(benchmark, backend, staging, simai_run, cold_nbytes, cold_rounds, cold_idle_s,
                               after_idle, neighbour_params, cold_caller):
    data = np.random.default_rng(mpi.rank()).integers(0, 256, cold_nbytes, dtype=np.uint8)
    keys = FreshKeys(f"micro.tensor.cold_fresh.{mpi.rank()}", staging.delete)
    timing = PairedRounds((lambda: staging.put_tensor(keys.current, data)) if cold_caller else lambda: None,
                          prepare=keys.next)
    try:
        benchmark.pedantic(timing.target, setup=after_idle(timing), rounds=cold_rounds, warmup_rounds=1)
        sync_ranks()
        got = staging.get_tensor(keys.current) if cold_caller else data
        assert got is not None and np.array_equal(got, data)
    finally:
        keys.next()  # deletes the last round's key
    params = {"op": "fresh_key_put", "nbytes": cold_nbytes, "rounds": cold_rounds, "idle_s": cold_idle_s,
              **neighbour_params}
    local = {"cold_latency_s": timing.seconds() if cold_caller else []}
    record(benchmark, simai_run(backend, params), local, {"cold_latency_s": LATENCY})


def test_tensor_fresh_key(benchmark, backend, staging, simai_run, nbytes, pytestconfig):
    rounds = pytestconfig.getoption("--simai-rounds") or default_rounds(nbytes)
    data = np.random.default_rng(mpi.rank()).integers(0, 256, nbytes, dtype=np.uint8)
    keys = FreshKeys(f"micro.tensor.fresh.{mpi.rank()}", staging.delete)
    timing = PairedRounds(lambda: staging.put_tensor(keys.current, data), prepare=keys.next)
    try:
        benchmark.pedantic(timing.target, setup=timing.setup, rounds=rounds, warmup_rounds=1)
        sync_ranks()
        got = staging.get_tensor(keys.current)
        assert got is not None and np.array_equal(got, data)
    finally:
        keys.next()  # deletes the last round's key

    params = {"op": "fresh_key_put", "nbytes": nbytes, "rounds": rounds}
    record(benchmark, simai_run(backend, params), **paired_throughput("fresh_key_put", timing, nbytes / 1e9))


class FreshKeys:
    """A new key per round: :meth:`next` (untimed, before the round) deletes the last round's key and names the next."""

    def __init__(self, prefix: str, delete: Callable[[str], object]) -> None:
        self.prefix, self._delete, self._n = prefix, delete, 0

    @property
    def current(self) -> str:
        """This round's key."""
        return f"{self.prefix}.{self._n}"

    def next(self) -> None:
        """Delete the current key (if it was written: deleting a missing key is a no-op) and move on."""
        self._delete(self.current)
        self._n += 1
