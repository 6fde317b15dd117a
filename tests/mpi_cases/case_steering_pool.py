"""Run by tests/test_steering_mpi.py under ``mpiexec -n 3``: the pool's workers are ranks 1 and 2 of the job.

Rank 0 steers on a real redis-server; the two worker ranks finish each batch at the same
moment, and one simulation fails on its worker and is replaced.
"""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

from simai_core import mpi
from simai_core.bench.pool import StagingPool
from simai_core.profiles import load_profile
from simai_core.steering.collective import run_collective, uses_rank_pool
from simai_core.steering.config import SteeringConfig


@pytest.fixture
def redis_pool(tmp_path):
    """A redis-server started on rank 0, a client on every rank."""
    pool = StagingPool(load_profile("local"), tmp_path)
    try:
        yield pool
    finally:
        pool.close()


def test_pool_ranks_finish_at_once_and_every_result_counts_once(redis_pool, tmp_path):
    assert mpi.size() == 3
    cfg = SteeringConfig(run_id=f"mpi{time.time_ns()}", launcher="pool", mode="batch", policy="random", workers=2,
                         budget=8, tolerance=1e-9, field_bytes=16 * 2**10, release_after_s=2.0, fail={5: "raise"},
                         deadline_s=120)
    assert uses_rank_pool(cfg, mpi.size())
    client = redis_pool.client("redis")
    result = run_collective(cfg, client, "redis", redis_pool.address("redis"), tmp_path / "run")
    if mpi.rank() != 0:
        assert result is None
        return
    assert result is not None and result.reason == "budget"
    assert sorted(result.completed) == list(range(8))
    assert [f["sim"] for f in result.failures] == [5]
    staged = defaultdict(list)
    for sim in result.completed:
        if result.sims[sim].attempts == 1:
            staged[result.sims[sim].decision].append(result.sims[sim].staged)
    spreads = [max(v) - min(v) for v in staged.values() if len(v) == 2]
    assert spreads and min(spreads) < 0.5, f"no batch finished at once: {spreads}"
    assert "ranks 1..2 of this MPI job" in result.launcher_detail
