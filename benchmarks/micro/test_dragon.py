"""Dragon DDict micro benchmarks: concurrent Dragon-managed clients, MPI ranks, batched puts, frozen reads.

The DDict is the staging pool's ``dragon`` server. Workers are Dragon-managed processes
(``dragon.native.process.Process``: started by the runtime, like start method ``dragon``, without
switching this pytest process's multiprocessing over to Dragon). FOMs: ``mp_put_GBps`` /
``mp_get_GBps`` measured over the workers' common window of each round (every round starts at a
barrier; median over rounds) and their mean latency; ``mpi_put_GBps`` /
``mpi_get_GBps`` the same for MPI ranks of an ``mpiexec`` started as a Dragon process and attached
to the serialized DDict (:mod:`simai_core.staging.dragon_mpi`); ``batch_put_GBps`` against
one-by-one puts of the same keys; ``frozen_get_GBps`` against gets of the same key unfrozen.
Note: the DDict orchestrator spins a core while idle (see ``backend_detail``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from simai_core.bench.measure import Window, median
from simai_core.bench.record import AGGREGATE_GBPS, LATENCY, PER_RANK_GBPS, aggregate_fom, record
from simai_core.fom import Fom, FomSpec

pytestmark = [pytest.mark.micro, pytest.mark.dragon, pytest.mark.backends("dragon")]
SIZES = [2**10, 2**20, 16 * 2**20]
IDS = ["1KiB", "1MiB", "16MiB"]
WORKERS = 2
BATCH = 8


def _rounds(size: int) -> int:
    return 20 if size <= 2**16 else 8 if size <= 2**22 else 4


def _timed(fn: Any, rounds: int) -> list[float]:
    fn()  # warm-up
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def _concurrent_foms(prefix: str, size: int, put_w: list[list[Window]], get_w: list[list[Window]]
                     ) -> tuple[dict[str, list[float]], dict[str, FomSpec], dict[str, Fom]]:
    """Per operation: the clients' measured aggregate over each round's common window, and their latencies."""
    local, specs, measured = {}, {}, {}
    for op, windows in (("put", put_w), ("get", get_w)):
        local[f"{prefix}_{op}_latency_s"] = [e - s for w in windows for s, e in w]
        specs[f"{prefix}_{op}_latency_s"] = LATENCY
        measured[f"{prefix}_{op}_GBps"] = aggregate_fom(windows, [size / 1e9] * len(windows), AGGREGATE_GBPS)
    return local, specs, measured


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_concurrent_workers(benchmark: Any, backend: Any, staging: Any, staging_pool: Any, simai_run: Any, size: Any) -> None:
    from dragon.native.barrier import Barrier
    from dragon.native.process import Process
    from dragon.native.queue import Queue

    from simai_core.staging.dragon import concurrent_worker

    rounds = _rounds(size)
    address = staging_pool.address(backend)
    results: list[tuple[int, float, float, bool]] = []

    def run_workers() -> None:
        barrier, queue = Barrier(WORKERS), Queue()
        procs = [Process(target=concurrent_worker, args=(address, w, size, rounds, barrier, queue))
                 for w in range(WORKERS)]
        for p in procs:
            p.start()
        results[:] = [queue.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            assert p.returncode == 0

    benchmark.pedantic(run_workers, rounds=1, iterations=1)
    assert len(results) == WORKERS and all(ok for *_, ok in results)
    run = simai_run(backend, {"workers": WORKERS, "nbytes": size, "rounds": rounds,
                              "processes": "dragon.native.process.Process"})
    local, specs, measured = _concurrent_foms("mp", size, [r[1] for r in results], [r[2] for r in results])
    record(benchmark, run, local, specs, measured=measured)


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_mpi_ranks(benchmark: Any, backend: Any, staging: Any, staging_pool: Any, simai_run: Any, tmp_path: Any,
                   size: Any) -> None:
    from simai_core.staging.dragon_mpi import run_clients

    rounds = _rounds(size)
    records: list[dict[str, Any]] = []

    def run_ranks() -> None:
        records[:] = run_clients(staging_pool.address(backend), WORKERS, size, rounds, tmp_path)

    benchmark.pedantic(run_ranks, rounds=1, iterations=1)
    assert len(records) == WORKERS and all(r["own_ok"] and r["neighbour_ok"] for r in records)
    run = simai_run(backend, {"mpi_ranks": WORKERS, "nbytes": size, "rounds": rounds,
                              "processes": "mpiexec -n 2 started as a Dragon process (ranks not Dragon-managed)"})
    local, specs, measured = _concurrent_foms("mpi", size, [r["put_windows"] for r in records],
                                              [r["get_windows"] for r in records])
    record(benchmark, run, local, specs, measured=measured)


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_batched_put(benchmark: Any, backend: Any, staging: Any, simai_run: Any, size: Any) -> None:
    ddict = staging.ddict
    rounds = max(2, _rounds(size) // 2)
    data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    keys = [f"micro.dragon.batch.{i}" for i in range(BATCH)]

    def one_by_one() -> None:
        for k in keys:
            ddict[k] = data

    def batched() -> None:
        ddict.start_batch_put()
        for k in keys:
            ddict[k] = data
        ddict.end_batch_put()

    single = _timed(one_by_one, rounds)
    benchmark.pedantic(batched, rounds=rounds, warmup_rounds=1)
    np.testing.assert_array_equal(ddict[keys[-1]], data)
    staging.clean("micro.dragon.batch.")
    total = size * BATCH
    local = {"batch_put_GBps": total / benchmark.stats.stats.median / 1e9,
             "single_put_GBps": total / median(single) / 1e9,
             "batch_put_latency_s": benchmark.stats.stats.median / BATCH}
    specs = {"batch_put_GBps": PER_RANK_GBPS, "single_put_GBps": PER_RANK_GBPS, "batch_put_latency_s": LATENCY}
    run = simai_run(backend, {"nbytes": size, "keys_per_batch": BATCH, "rounds": rounds})
    record(benchmark, run, local, specs, ratios={"batch_vs_single": ("batch_put_GBps", "single_put_GBps")})


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_frozen_get(benchmark: Any, backend: Any, staging: Any, simai_run: Any, size: Any) -> None:
    ddict = staging.ddict
    rounds = _rounds(size)
    data = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8)
    key = "micro.dragon.frozen"
    ddict[key] = data
    unfrozen = _timed(lambda: ddict[key], rounds)
    ddict.freeze()
    try:
        assert ddict.is_frozen
        benchmark.pedantic(lambda: ddict[key], rounds=rounds, warmup_rounds=1)
        np.testing.assert_array_equal(ddict[key], data)
    finally:
        ddict.unfreeze()
    staging.delete(key)
    local = {"frozen_get_GBps": size / benchmark.stats.stats.median / 1e9,
             "unfrozen_get_GBps": size / median(unfrozen) / 1e9,
             "frozen_get_latency_s": benchmark.stats.stats.median}
    specs = {"frozen_get_GBps": PER_RANK_GBPS, "unfrozen_get_GBps": PER_RANK_GBPS, "frozen_get_latency_s": LATENCY}
    run = simai_run(backend, {"nbytes": size, "rounds": rounds})
    record(benchmark, run, local, specs, ratios={"frozen_vs_unfrozen": ("frozen_get_GBps", "unfrozen_get_GBps")})
