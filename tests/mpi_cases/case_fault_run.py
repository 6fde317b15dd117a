"""Run explicitly by tests/test_faults.py under mpiexec: a mini run that only a fault ends.

Rank 0 appends a JSON record (the world's pids, the server's port and path) to $SIMAI_CASE_RECORD
and prints READY once the run is under way; the test then injects its fault from outside.
"""

import json
import os
import threading
import time

import pytest

from simai_core import mpi
from simai_core.workflow.config import WorkflowConfig
from simai_core.workflow.driver import run_mpi
from simai_core.workflow.protocol import Keys

ENDLESS = {"problem": {"size": "debug"},
           "simulation": {"step_time_s": 0.05, "criterion": "mse", "tolerance": 1e-12, "max_steps": 100_000},
           "peer_timeout_s": 30, "startup_timeout_s": 120, "heartbeat_interval_s": 0.2}


def announce_when_under_way(client, cfg: WorkflowConfig, record: dict) -> None:
    keys = Keys(cfg.run_id)

    def watch() -> None:
        while True:
            sim = client.get_tensor(keys.sim_status)
            if client.get_tensor(keys.train_status) is not None and sim is not None and sim[0] >= 3:
                with open(os.environ["SIMAI_CASE_RECORD"], "a") as f:
                    f.write(json.dumps(record) + "\n")
                print("READY", flush=True)
                return
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


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
