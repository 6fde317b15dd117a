"""Put/get tensor sweep: every rank moves its own key, overwritten each round (as SmartSim-Scaling does).

FOMs per op: ``<op>_latency_s`` (mean over ranks of each rank's median round),
``<op>_GBps`` (sum over ranks), and ``<op>_vs_raw``: that throughput over the
backend's raw path (``RawReference``), timed on the same bytes in the same rounds,
just before each backend operation.
"""

from __future__ import annotations

import numpy as np
import pytest

from simai_core import mpi
from simai_core.bench.measure import InterleavedReference, default_rounds, median
from simai_core.bench.record import AGGREGATE_GBPS, LATENCY, record
from simai_core.staging import registry

pytestmark = pytest.mark.micro


@pytest.mark.parametrize("op", ["put", "get"])
def test_tensor(benchmark, backend, staging, staging_pool, simai_run, nbytes, op, pytestconfig):
    rounds = pytestconfig.getoption("--simai-rounds") or default_rounds(nbytes)
    key = f"micro.tensor.{mpi.rank()}"
    data = np.random.default_rng(mpi.rank()).integers(0, 256, nbytes, dtype=np.uint8)
    out = np.empty_like(data)
    raw = registry.raw_reference(backend, staging_pool.address(backend))
    try:
        if op == "get":
            raw.put(f"raw.{key}", memoryview(data))
            staging.put_tensor(key, data)
        raw_op = (lambda: raw.put(f"raw.{key}", memoryview(data))) if op == "put" \
            else (lambda: raw.get(f"raw.{key}", memoryview(out)))
        reference = InterleavedReference(raw_op)
        target = (lambda: staging.put_tensor(key, data)) if op == "put" else (lambda: staging.get_tensor(key, out=out))
        benchmark.pedantic(target, setup=reference, rounds=rounds, warmup_rounds=1)
    finally:
        raw.close()

    # The transfer must be right, not only fast.
    if op == "put":
        out = staging.get_tensor(key)
    assert out is not None and np.array_equal(out, data)

    seconds = benchmark.stats.stats.median
    local = {f"{op}_latency_s": seconds, f"{op}_GBps": nbytes / seconds / 1e9,
             f"raw_{op}_GBps": nbytes / median(reference.samples) / 1e9}
    specs = {f"{op}_latency_s": LATENCY, f"{op}_GBps": AGGREGATE_GBPS, f"raw_{op}_GBps": AGGREGATE_GBPS}
    run = simai_run(backend, {"op": op, "nbytes": nbytes, "rounds": rounds, "raw": raw.description})
    record(benchmark, run, local, specs, ratios={f"{op}_vs_raw": (f"{op}_GBps", f"raw_{op}_GBps")})
