"""Shared by the fault cases: tell the test (outside the MPI job) when a run is under way."""

import json
import os
import threading
import time
from typing import Any

from simai_core.workflow.config import WorkflowConfig
from simai_core.workflow.protocol import Keys


def announce_when_under_way(client: Any, cfg: WorkflowConfig, record: dict, checkpoints: int = 0) -> None:
    """Append ``record`` to $SIMAI_CASE_RECORD and print READY once the simulation has made 3 steps and
    the trainer has published its status with at least ``checkpoints`` checkpoints (a daemon thread)."""
    keys = Keys(cfg.run_id)

    def watch() -> None:
        while True:
            sim, train = client.get_tensor(keys.sim_status), client.get_tensor(keys.train_status)
            if train is not None and train[0] >= checkpoints and sim is not None and sim[0] >= 3:
                with open(os.environ["SIMAI_CASE_RECORD"], "a") as f:
                    f.write(json.dumps(record) + "\n")
                print("READY", flush=True)
                return
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
