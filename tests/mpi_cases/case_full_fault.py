"""Run by tests/test_full_workflow.py under ``mpiexec -n 4``: a clustered full-level run that only a fault ends.

Two ranks run the Devito solver, two train. Rank 0 appends a JSON record (every rank's pid and
role, MPICH's segments, the staging server's port or path) to $SIMAI_CASE_RECORD and prints
READY once the trainer has delivered a checkpoint and the solver has made 3 steps; the test then
acts on the trainer ranks from outside. The backend comes from $SIMAI_CASE_BACKEND (nodelocal)
and the peer deadline from $SIMAI_CASE_PEER_TIMEOUT_S (60 s).
"""

import os

import pytest
from underway import announce_when_under_way  # beside this file: pytest puts its directory on sys.path

from simai_core import mpi
from simai_core.workflow.config import WorkflowConfig
from simai_core.workflow.driver import run_mpi
from simai_core.workflow.layout import plan_layout

# An MSE no model meets: the run never converges on its own.
ENDLESS = {"problem": {"size": "debug", "dtype": "float32"}, "graph": {"k": 4}, "deployment": "clustered",
           "simulation": {"solver": "acoustic", "step_time_s": 0.0, "criterion": "mse", "tolerance": 1e-12,
                          "max_steps": 50_000},
           "trainer": {"model": {"kind": "gnn", "residual": True}, "window": 50},
           "peer_timeout_s": float(os.environ.get("SIMAI_CASE_PEER_TIMEOUT_S", "60")), "startup_timeout_s": 600,
           "heartbeat_interval_s": 0.2, "finish_timeout_s": 10}


@pytest.mark.backends(os.environ.get("SIMAI_CASE_BACKEND", "nodelocal"))
def test_endless_full_run(staging, staging_pool, backend, tmp_path):
    server = staging_pool._servers.get(backend)
    cfg = mpi.world().bcast(WorkflowConfig.model_validate(ENDLESS), root=0)
    role = plan_layout(mpi.world(), cfg.deployment, cfg.sim_fraction)
    role.comm.Free()
    ranks = mpi.gather_to_all({"pid": os.getpid(), "component": role.component})
    mapped = mpi.gather_to_all(mpi.mapped_shm_segments())
    if mpi.rank() == 0:
        record = {"pids": [r["pid"] for r in ranks], "ranks": ranks,
                  "shm": sorted({segment for segments in mapped for segment in segments}),
                  "port": getattr(server, "port", None), "path": str(getattr(server, "path", "") or "")}
        announce_when_under_way(staging, cfg, record, checkpoints=1)
    result = run_mpi(cfg, backend, staging_pool.address(backend), mpi.world(), workdir=tmp_path)
    result.raise_for_errors()
