"""Run explicitly by tests/test_faults.py under mpiexec: a mini run that only a fault ends.

Rank 0 appends a JSON record (the world's pids, the server's port and path) to $SIMAI_CASE_RECORD
and prints READY once the run is under way; the test then injects its fault from outside.
"""

import os

import pytest
from underway import announce_when_under_way  # beside this file: pytest puts its directory on sys.path

from simai_core import mpi
from simai_core.workflow.config import WorkflowConfig
from simai_core.workflow.driver import run_mpi

ENDLESS = {"problem": {"size": "debug"},
           "simulation": {"step_time_s": 0.05, "criterion": "mse", "tolerance": 1e-12, "max_steps": 100_000},
           "peer_timeout_s": 30, "startup_timeout_s": 120, "heartbeat_interval_s": 0.2}


@pytest.mark.backends(os.environ.get("SIMAI_CASE_BACKEND", "redis"))
def test_endless_mini_run(staging, staging_pool, backend, tmp_path):
    server = staging_pool._servers.get(backend)
    cfg = mpi.world().bcast(WorkflowConfig.model_validate(ENDLESS), root=0)
    pids, mapped = mpi.gather_to_all(os.getpid()), mpi.gather_to_all(mpi.mapped_shm_segments())
    shm = sorted({segment for segments in mapped for segment in segments})
    if mpi.rank() == 0:
        record = {"pids": pids, "shm": shm, "port": getattr(server, "port", None),
                  "path": str(getattr(server, "path", "") or "")}
        announce_when_under_way(staging, cfg, record)
    result = run_mpi(cfg, backend, staging_pool.address(backend), mpi.world(), workdir=tmp_path)
    result.raise_for_errors()
