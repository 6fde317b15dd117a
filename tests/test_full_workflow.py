"""The full level's workflow pieces around the Devito solver: what is staged, and a dead trainer (serial, MPI)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("devito")
pytest.importorskip("torch")
import test_faults as faults
from mpi4py import MPI

from simai_core import mpi
from simai_core.staging.files import FileStagingArea
from simai_core.workflow.config import WorkflowConfig
from simai_core.workflow.launch import ComponentProcess
from simai_core.workflow.layout import serial_role
from simai_core.workflow.protocol import Keys, PeerTimeoutError
from simai_core.workflow.timers import Accounting

PEER_TIMEOUT_S = 60.0  # the workflow default: the trainer's start-up (torch, scripting the GNN) on a loaded 2-core node
SOLVER = {"problem": {"size": "debug", "dtype": "float32"},
          "simulation": {"solver": "acoustic", "step_time_s": 0.0, "max_steps": 400}}
# Never converges on its own (an MSE no model meets): only a failure ends it.
ENDLESS = {**SOLVER, "simulation": {**SOLVER["simulation"], "criterion": "mse", "tolerance": 1e-12,
                                    "max_steps": 50_000},
           "trainer": {"model": {"kind": "gnn", "residual": True}, "window": 50},
           "peer_timeout_s": PEER_TIMEOUT_S, "startup_timeout_s": 180, "heartbeat_interval_s": 0.2}


def test_staged_sample_equals_the_solver_fields(file_staging):
    from simai_core.workflow.simulation import make_fields
    from simai_core.workflow.snapshots import make_sender, make_source

    client, _ = file_staging
    cfg = WorkflowConfig.model_validate({**SOLVER, "simulation": {**SOLVER["simulation"], "train_interval": 10}})
    solver = make_fields(cfg, MPI.COMM_SELF)
    keys, k = Keys(cfg.run_id), cfg.simulation.acoustic.horizon_steps
    sender = make_sender(cfg, client, keys, 0)
    for step in range(31):
        u_n, u_prev = solver.local_u(step * k).copy(), solver.local_u(step * k - 1).copy()
        solver.advance(step, capture=step % 10 == 0)
        if step % 10 == 0:
            sender.send(step, solver.sample)
    source = make_source(cfg, client, keys, (0,), solver.sample.shape, Accounting("train", 0, time.time()))
    received = source.receive(30)[30][0]  # what the trainer gets
    assert received.dtype == np.float32 and received.shape == (solver.n_points, 4)
    np.testing.assert_array_equal(received[:, 0], u_n.ravel())
    np.testing.assert_array_equal(received[:, 1], u_prev.ravel())
    np.testing.assert_array_equal(received[:, 2], solver.sample[:, 2])
    np.testing.assert_array_equal(received[:, 3], solver.local_u(31 * k).ravel())
    assert np.abs(received[:, 3]).max() > 0 and set(np.unique(received[:, 2])) <= {1.5, 2.0, 2.5, 3.0}


# What a test's killed processes leave is watched, and what they could not remove is removed.
leftovers = faults.leftovers


@pytest.mark.timeout(600)
def test_killed_trainer_fails_the_solver_within_its_deadline(file_staging, tmp_path, leftovers):
    from simai_core.workflow.simulation import run_simulation

    client, address = file_staging
    cfg = WorkflowConfig.model_validate(ENDLESS)
    keys = Keys(cfg.run_id)
    trainer = ComponentProcess("train", cfg, "filesystem", address, tmp_path, time.time())
    killed: dict[str, float] = {}
    done = threading.Event()

    def kill_after_first_checkpoint() -> None:
        end = time.monotonic() + 400
        while time.monotonic() < end and not done.is_set():
            status = client.get_tensor(keys.train_status)
            if status is not None and status[0] >= 1:
                trainer.kill()
                killed["at"] = time.monotonic()
                return
            time.sleep(0.05)

    threading.Thread(target=kill_after_first_checkpoint, daemon=True).start()
    try:
        with pytest.raises(PeerTimeoutError, match="train component has been silent"):
            run_simulation(cfg, serial_role("sim", MPI.COMM_SELF), client, time.time())
        noticed = time.monotonic()
    finally:
        done.set()
        trainer.kill()
    assert "at" in killed, "the trainer never delivered a checkpoint, so it was never killed"
    assert noticed - killed["at"] < PEER_TIMEOUT_S + 2.0


CASE_PEER_TIMEOUT_S = 60.0  # the solver's deadline for a silent trainer: a trainer starved on a loaded node is not dead


@pytest.mark.timeout(900)
@pytest.mark.skipif(mpi.size() > 1, reason="starts its own mpiexec")
@pytest.mark.parametrize("name", ["redis", "nodelocal"])
def test_killed_trainer_ranks_end_the_mpi_job(name, tmp_path, leftovers):
    """SIGKILL both trainer ranks of a clustered ``mpiexec -n 4`` run (2 solver ranks): the job ends, nothing is left.

    MPICH's launcher ends every rank as soon as one is killed, so the solvers' own deadline for a
    silent trainer is not what ends this job (see test_stopped_trainer_ranks_fail_the_solver_ranks).
    Rank 0, killed too, cannot remove a nodelocal directory: the next nodelocal start on this host
    removes it (its owner's process is gone), and the test checks that it does.
    """
    faults.needs(name)
    proc, path = faults.start_case("case_full_fault.py", 4, tmp_path, SIMAI_CASE_BACKEND=name,
                                   SIMAI_CASE_PEER_TIMEOUT_S=str(CASE_PEER_TIMEOUT_S))
    record = faults.wait_ready(proc, path, timeout_s=600)  # start-up and a cold compile on a loaded node
    trainers = [r["pid"] for r in record["ranks"] if r["component"] == "train"]
    assert len(trainers) == 2 and len(record["ranks"]) == 4, record["ranks"]
    for pid in trainers:
        os.kill(pid, signal.SIGKILL)
    output, elapsed = faults.finish(proc, 30)
    print(f"\ntrainer ranks killed ({name}, -n 4, full debug): job ended {elapsed:.1f} s after the kill "
          f"(code {proc.returncode})\n{output[-1200:]}")
    assert proc.returncode != 0 and "BAD TERMINATION" in output and "signal 9" in output, output[-3000:]
    if name == "nodelocal":
        staged = Path(record["path"])
        assert staged.is_dir(), "the killed job's staging directory vanished: the test would prove nothing"
        nxt = FileStagingArea("nodelocal", staged.parent)
        nxt.start()
        nxt.stop()
    faults.check_gone(record, leftovers, tmp_path)


@pytest.mark.timeout(900)
@pytest.mark.skipif(mpi.size() > 1, reason="starts its own mpiexec")
def test_stopped_trainer_ranks_fail_the_solver_ranks(tmp_path, leftovers):
    """SIGSTOP both trainer ranks (alive but silent, as a hung trainer is: no launcher notices): every solver
    rank fails with the peer timeout within its deadline + a few seconds, and the job ends, leaving nothing."""
    faults.needs("redis")
    proc, path = faults.start_case("case_full_fault.py", 4, tmp_path, SIMAI_CASE_BACKEND="redis",
                                   SIMAI_CASE_PEER_TIMEOUT_S=str(CASE_PEER_TIMEOUT_S))
    record = faults.wait_ready(proc, path, timeout_s=600)
    trainers = [r["pid"] for r in record["ranks"] if r["component"] == "train"]
    assert len(trainers) == 2, record["ranks"]
    for pid in trainers:
        os.kill(pid, signal.SIGSTOP)
    output, elapsed = faults.finish(proc, CASE_PEER_TIMEOUT_S + 60)
    print(f"\ntrainer ranks stopped (redis, -n 4, full debug): job ended {elapsed:.1f} s after the stop "
          f"(code {proc.returncode})\n{output[-1500:]}")
    assert proc.returncode != 0
    assert re.search(r"PeerTimeoutError on sim rank \d: the train component has been silent for [\d.]+ s", output), \
        output[-3000:]
    assert elapsed < CASE_PEER_TIMEOUT_S + 10, f"the solver ranks took {elapsed:.1f} s to end the job"
    faults.check_gone(record, leftovers, tmp_path)
