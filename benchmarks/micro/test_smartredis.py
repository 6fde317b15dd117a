"""SmartRedis-specific micro benchmarks (smartsim backend only), through a bare ``smartredis.Client``.

* ``test_tensor``: ``put_tensor``/``get_tensor`` of ``nbytes`` (uint8), one key per rank, against
  two paths in the same rounds: ``raw`` (plain RESP SET/GET, the protocol's limit) and ``module``
  (AI.TENSORSET/AI.TENSORGET BLOB in plain RESP: the tensor module without SmartRedis).
  ``module_<op>_GBps / raw_<op>_GBps`` is what the module costs; ``<op>_vs_module``, the client.
* ``test_dataset``: put/get of a Dataset (one tensor of ``nbytes`` plus metadata: a string and
  two scalars), one key per rank overwritten each round; FOMs as the put/get sweep
  (``<op>_latency_s``, ``<op>_GBps``, ``<op>_vs_raw`` against plain RESP SET/GET on the same server).
* ``test_aggregation_list``: SmartSim-Scaling's data-aggregation pattern (datasets of 4 x 1 KiB
  tensors): ``append`` = put_dataset + append_to_list from every rank; ``get_list`` = every rank
  reads the whole list (``get_datasets_from_list``) once it holds ``DATASETS_PER_RANK`` per rank.
* ``test_poll_tensor``: put-to-visible latency with SmartRedis ``poll_tensor`` at a fixed poll
  period: each rank publishes a key its neighbour polls for (as ``test_metadata`` does with the
  staging client's backoff).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from simai_core import mpi
from simai_core.bench.measure import NeighbourPoll, PairedRounds, check_references, default_rounds, reference_op, sync_ranks
from simai_core.bench.record import AGGREGATE_GBPS, AGGREGATE_OPS, LATENCY, paired_throughput, record
from simai_core.staging import registry

pytestmark = [pytest.mark.micro, pytest.mark.backends("smartsim")]
AGG_TENSORS, AGG_TENSOR_BYTES, DATASETS_PER_RANK = 4, 1024, 8
POLL_TIMEOUT_S = 30.0


@pytest.fixture
def sr(backend: str, staging: Any, staging_pool: Any) -> Any:
    """A bare SmartRedis client of the session's Orchestrator (``staging`` starts it, or skips)."""
    from simai_core.staging.smartsim import quiet_smartredis

    quiet_smartredis()
    from smartredis import Client

    return Client(address=staging_pool.address(backend), cluster=False)


def make_dataset(name: str, tensors: dict[str, np.ndarray], step: int) -> Any:
    from smartredis import Dataset

    ds = Dataset(name)
    for tname, data in tensors.items():
        ds.add_tensor(tname, data)
    ds.add_meta_string("source", f"rank{mpi.rank()}")
    ds.add_meta_scalar("step", step)
    ds.add_meta_scalar("time", 0.5 * step)
    return ds


@pytest.mark.parametrize("op", ["put", "get"])
def test_tensor(benchmark, backend, sr, staging_pool, simai_run, nbytes, op, pytestconfig):
    from simai_core.staging.smartsim import TensorRespRaw

    rounds = pytestconfig.getoption("--simai-rounds") or default_rounds(nbytes)
    name = f"micro.srtensor.{mpi.rank()}"
    data = np.random.default_rng(mpi.rank()).integers(0, 256, nbytes, dtype=np.uint8)
    out = np.empty_like(data)
    address = staging_pool.address(backend)
    refs = {"raw": registry.raw_reference(backend, address), "module": TensorRespRaw(address)}
    fetched: list[Any] = []
    try:
        for ref_name, ref in refs.items():
            ref.put(f"{ref_name}.{name}", memoryview(data))
        sr.put_tensor(name, data)
        paths = {ref_name: reference_op(ref, f"{ref_name}.{name}", op, data, out) for ref_name, ref in refs.items()}
        target = (lambda: sr.put_tensor(name, data)) if op == "put" else (lambda: fetched.append(sr.get_tensor(name)))
        timing = PairedRounds(target, paths, prepare=fetched.clear)  # one fetched copy at a time
        benchmark.pedantic(timing.target, setup=timing.setup, rounds=rounds, warmup_rounds=1)
        timing.finish()
        check_references(refs, name, data, out)
    finally:
        for ref in refs.values():
            ref.close()

    assert np.array_equal(fetched[-1] if fetched else sr.get_tensor(name), data)
    run = simai_run(backend, {"op": op, "nbytes": nbytes, "rounds": rounds, "raw": refs["raw"].description,
                              "references": {"module": refs["module"].description}})
    record(benchmark, run, **paired_throughput(op, timing, nbytes / 1e9))


@pytest.mark.parametrize("op", ["put", "get"])
def test_dataset(benchmark, backend, sr, staging_pool, simai_run, nbytes, op, pytestconfig):
    rounds = pytestconfig.getoption("--simai-rounds") or default_rounds(nbytes)
    name = f"micro.dataset.{mpi.rank()}"
    data = np.random.default_rng(mpi.rank()).integers(0, 256, nbytes, dtype=np.uint8)
    ds = make_dataset(name, {"field": data}, step=7)
    out = np.empty_like(data)
    raw = registry.raw_reference(backend, staging_pool.address(backend))
    fetched: list[Any] = []
    try:
        if op == "get":
            raw.put(f"raw.{name}", memoryview(data))
            sr.put_dataset(ds)
        raw_op = (lambda: raw.put(f"raw.{name}", memoryview(data))) if op == "put" \
            else (lambda: raw.get(f"raw.{name}", memoryview(out)))
        target = (lambda: sr.put_dataset(ds)) if op == "put" else (lambda: fetched.append(sr.get_dataset(name)))
        timing = PairedRounds(target, {"raw": raw_op}, prepare=fetched.clear)  # one fetched copy at a time
        benchmark.pedantic(timing.target, setup=timing.setup, rounds=rounds, warmup_rounds=1)
        timing.finish()
    finally:
        raw.close()

    # The transfer must be right, not only fast (keep the Dataset alive while reading its metadata).
    got = fetched[-1] if fetched else sr.get_dataset(name)
    assert np.array_equal(got.get_tensor("field"), data)
    assert got.get_meta_strings("source") == [f"rank{mpi.rank()}"] and list(got.get_meta_scalars("step")) == [7]

    run = simai_run(backend, {"op": op, "nbytes": nbytes, "rounds": rounds, "raw": raw.description,
                              "metadata": "1 string + 2 scalars"})
    record(benchmark, run, **paired_throughput(op, timing, nbytes / 1e9))


@pytest.mark.parametrize("op", ["append", "get_list"])
def test_aggregation_list(benchmark, backend, sr, simai_run, op, pytestconfig):
    rounds = pytestconfig.getoption("--simai-rounds") or 20
    rank, size = mpi.rank(), mpi.size()
    list_name = "micro.aggregation"
    rng = np.random.default_rng(rank)
    tensors = {f"t{i}": rng.integers(0, 256, AGG_TENSOR_BYTES, dtype=np.uint8) for i in range(AGG_TENSORS)}
    counter = iter(range(10**9))

    def append() -> None:
        i = next(counter)
        sr.append_to_list(list_name, put(make_dataset(f"micro.agg.{rank}.{i}", tensors, step=i)))

    def put(ds: Any) -> Any:
        sr.put_dataset(ds)
        return ds

    if rank == 0:
        sr.delete_list(list_name)
    sync_ranks()
    if op == "append":
        timing = PairedRounds(append)
        datasets = 1
    else:
        for _ in range(DATASETS_PER_RANK):
            append()
        assert sr.poll_list_length(list_name, DATASETS_PER_RANK * size, 1, int(POLL_TIMEOUT_S * 1000))
        timing = PairedRounds(lambda: sr.get_datasets_from_list(list_name))
        datasets = DATASETS_PER_RANK * size
    benchmark.pedantic(timing.target, setup=timing.setup, rounds=rounds, warmup_rounds=1)
    sync_ranks()

    got = sr.get_datasets_from_list(list_name)
    assert len(got) == sr.get_list_length(list_name) >= (rounds + 1 if op == "append" else datasets)
    mine = next(d for d in got if d.get_meta_strings("source") == [f"rank{rank}"])
    assert all(np.array_equal(mine.get_tensor(t), tensors[t]) for t in tensors)
    sync_ranks()
    if rank == 0:
        sr.delete_list(list_name)  # the datasets themselves stay until the session's server stops

    nbytes = datasets * AGG_TENSORS * AGG_TENSOR_BYTES
    local = {f"{op}_latency_s": timing.seconds()}
    specs = {f"{op}_latency_s": LATENCY, f"{op}_datasets_per_s": AGGREGATE_OPS, f"{op}_GBps": AGGREGATE_GBPS}
    aggregates = {f"{op}_datasets_per_s": (timing.windows(), datasets), f"{op}_GBps": (timing.windows(), nbytes / 1e9)}
    params = {"op": op, "rounds": rounds, "tensors_per_dataset": AGG_TENSORS, "tensor_bytes": AGG_TENSOR_BYTES,
              "datasets_read": datasets if op == "get_list" else None}
    record(benchmark, simai_run(backend, params), local, specs, aggregates=aggregates)


@pytest.mark.parametrize("poll_ms", [1, 10])
def test_poll_tensor(benchmark, backend, sr, simai_run, poll_ms, pytestconfig):
    rounds = pytestconfig.getoption("--simai-rounds") or 50
    rank, size = mpi.rank(), mpi.size()
    value = np.array([rank], dtype=np.int64)
    tries = int(POLL_TIMEOUT_S * 1000 / poll_ms)
    poll = NeighbourPoll("micro.poll", lambda k: sr.put_tensor(k, value), sr.delete_tensor,
                         lambda k: sr.poll_tensor(k, poll_ms, tries))
    neighbour = poll.neighbour
    timing = PairedRounds(poll.round, prepare=poll.reset)
    benchmark.pedantic(timing.target, setup=timing.setup, rounds=rounds, warmup_rounds=1)
    sync_ranks()

    assert sr.get_tensor(neighbour).tolist() == [(rank - 1) % size]
    record(benchmark, simai_run(backend, {"op": "poll_tensor", "poll_ms": poll_ms, "rounds": rounds}),
           {"latency_s": timing.seconds()}, {"latency_s": LATENCY, "ops_per_s": AGGREGATE_OPS},
           aggregates={"ops_per_s": (timing.windows(), 1.0)})
