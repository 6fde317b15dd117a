"""Put/get tensor sweep: every rank moves its own key, overwritten each round (as SmartSim-Scaling does).

FOMs per op:

* ``<op>_latency_s``: mean over ranks of each rank's median round;
* ``<op>_GBps``: measured aggregate, the median over rounds of all ranks' bytes over the round's
  common window on one clock; ``<op>_GBps_per_rank``: the mean of each rank's own median rate;
* ``<op>_vs_raw``: that aggregate over the raw path's (``RawReference``: the fastest plain path the
  backend's transport offers), timed on the same bytes in the same rounds, alternately before
  and after the backend operation; ``<op>_vs_<ref>`` for each further named path (redis-py).
"""

from __future__ import annotations

import numpy as np
import pytest

from simai_core import mpi
from simai_core.bench.measure import PairedRounds, check_references, default_rounds, reference_op
from simai_core.bench.record import paired_throughput, record
from simai_core.staging import registry

pytestmark = pytest.mark.micro


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
