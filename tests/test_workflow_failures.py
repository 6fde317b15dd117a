"""End to end without MPI: the trainer (or the simulation) as a real separate process.

A killed peer must make the survivor fail with a clear error within its deadline, and
a complete serial run must converge with a complete time accounting.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from mpi4py import MPI

from simai_core.workflow.config import WorkflowConfig
from simai_core.workflow.driver import run_serial
from simai_core.workflow.launch import ComponentProcess
from simai_core.workflow.layout import serial_role
from simai_core.workflow.protocol import Keys, PeerTimeoutError

pytest.importorskip("torch")

PEER_TIMEOUT_S = 10.0
# A run that never converges on its own (an MSE tolerance no model meets) with fast steps: only a failure ends it.
ENDLESS = {"problem": {"size": "debug"},
           "simulation": {"step_time_s": 0.05, "criterion": "mse", "tolerance": 1e-12, "max_steps": 100_000},
           "peer_timeout_s": PEER_TIMEOUT_S, "startup_timeout_s": 120, "heartbeat_interval_s": 0.2}


@pytest.fixture
def staging(file_staging):
    return file_staging


def kill_when(proc: ComponentProcess, client, key: str, ready, deadline_s: float = 120) -> dict:
    """In a thread: SIGKILL ``proc`` once ``ready(status)`` holds for the array under ``key``."""
    killed: dict = {}

    def watch() -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            status = client.get_tensor(key)
            if status is not None and ready(status):
                proc.kill()
                killed["at"] = time.monotonic()
                return
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    return killed


def _run_component(role: str, cfg: WorkflowConfig, client) -> None:
    from simai_core.workflow.simulation import run_simulation
    from simai_core.workflow.trainer import run_trainer

    run = run_simulation if role == "sim" else run_trainer
    run(cfg, serial_role(role, MPI.COMM_SELF), client, time.time())


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("victim", "survivor", "ready"), [
    ("train", "sim", lambda status: status[0] >= 1),  # alive, has delivered a checkpoint, then gone
    ("sim", "train", lambda status: status[0] >= 20),  # twenty steps in
], ids=["killed-trainer-fails-simulation", "killed-simulation-fails-trainer"])
def test_killed_peer_fails_the_survivor(staging, tmp_path, victim, survivor, ready):
    client, address = staging
    cfg = WorkflowConfig.model_validate(ENDLESS)
    peer = ComponentProcess(victim, cfg, "filesystem", address, tmp_path, time.time())
    keys = Keys(cfg.run_id)
    try:
        killed = kill_when(peer, client, keys.train_status if victim == "train" else keys.sim_status, ready)
        with pytest.raises(PeerTimeoutError, match=f"{victim} component has been silent"):
            _run_component(survivor, cfg, client)
        noticed = time.monotonic()
    finally:
        peer.kill()
    assert "at" in killed, f"the {victim} component never got far enough to be killed"
    assert noticed - killed["at"] < PEER_TIMEOUT_S + 2.0
    assert not list(Path("/dev/shm").glob(f"mpich_shm_{peer.pid:x}_*")), "the killed peer's MPI segment is left"


@pytest.mark.timeout(120)
def test_trainer_that_never_starts_fails_the_simulation_at_its_start_deadline(staging):
    from simai_core.workflow.simulation import run_simulation

    client, _ = staging
    cfg = WorkflowConfig.model_validate({**ENDLESS, "startup_timeout_s": 1.5})
    start = time.monotonic()
    with pytest.raises(PeerTimeoutError, match=r"gave no sign of life within 1\.5 s"):
        run_simulation(cfg, serial_role("sim", MPI.COMM_SELF), client, time.time())
    assert time.monotonic() - start < 1.5 + 1.0


@pytest.mark.timeout(300)
def test_failing_trainer_is_reported_to_the_simulation(staging, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA, where asking the trainer for CUDA fails")
    _client, address = staging
    cfg = WorkflowConfig.model_validate({**ENDLESS, "trainer": {"device": "cuda"}})
    result = run_serial(cfg, "filesystem", address, tmp_path)
    assert any("device 'cuda' requested but none is visible" in e for e in result.errors)
    sim = next(r for r in result.reports if r.component == "sim")
    assert sim.error is not None and sim.error.startswith("PeerFailedError")


SEND_DELAY_S, LOAD_DELAY_S = 0.05, 0.1
# Per call, what a category may hold beyond the injected delay (a small put, a tiny TorchScript load, a busy node).
OWN_COST_S = 0.05


def inject_delays(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every snapshot send (staging traffic) and checkpoint load (coupling compute) of this process slower."""
    from simai_core.workflow import checkpoint, snapshots

    send, load = snapshots.StagedSender.send, checkpoint.from_bytes

    def slow_send(self, step, snapshot):
        time.sleep(SEND_DELAY_S)
        return send(self, step, snapshot)

    def slow_load(blob, device="cpu"):
        time.sleep(LOAD_DELAY_S)
        return load(blob, device)

    monkeypatch.setattr(snapshots.StagedSender, "send", slow_send)
    monkeypatch.setattr(checkpoint, "from_bytes", slow_load)


@pytest.mark.timeout(300)
def test_serial_workflow_converges_with_complete_accounting(staging, tmp_path, monkeypatch):
    client, address = staging
    inject_delays(monkeypatch)  # the simulation runs in this process, the trainer in another
    step_time = 0.1
    cfg = WorkflowConfig.model_validate({"problem": {"size": "debug"}, "simulation": {"step_time_s": step_time}})
    result = run_serial(cfg, "filesystem", address, tmp_path)
    result.raise_for_errors()
    assert result.outcome.converged and result.outcome.reason == "skill"
    assert result.outcome.skill >= cfg.simulation.min_skill > 0
    foms = result.local_foms()
    for report in result.reports:  # complete accounting; an absolute allowance for a descheduled short run
        assert report.unaccounted_s < max(0.02 * report.wall_s, 0.25), f"{report.component}: accounting gap"
    assert foms["epochs"] >= cfg.trainer.checkpoint_every and foms["steps"] == result.outcome.steps
    kinds = {e["kind"] for e in result.events()}
    assert {"step", "meta", "data", "checkpoint", "inference", "epoch", "wait"} <= kinds
    # The trainer deleted every snapshot it consumed and the driver cleaned the rest.
    assert client.clean(Keys(cfg.run_id).prefix) == 0
    # The injected delays are found in their own categories, and nowhere else.
    sim = next(r for r in result.reports if r.component == "sim")
    sends, loads = sim.counts["data"], sim.counts["checkpoint_load"]
    assert sends == -(-result.outcome.steps // cfg.simulation.train_interval) and loads >= 1
    for category, n, delay in (("data", sends, SEND_DELAY_S), ("checkpoint_load", loads, LOAD_DELAY_S)):
        assert n * delay <= sim.seconds[category] < n * (delay + OWN_COST_S), (category, sim.seconds[category])
    assert sim.seconds["compute"] < result.outcome.steps * (step_time + OWN_COST_S)
    assert sim.seconds["wait"] + sim.seconds["meta"] < 0.5 * (sends * SEND_DELAY_S + loads * LOAD_DELAY_S)
    assert foms["sim_overhead_pct"] >= 100 * sends * SEND_DELAY_S / sim.wall_s
    assert foms["sim_coupling_compute_pct"] >= 100 * loads * LOAD_DELAY_S / sim.wall_s


@pytest.mark.timeout(300)
def test_epochs_longer_than_the_deadline_keep_the_trainer_alive(staging, tmp_path):
    _client, address = staging
    # Medium problem (65,536 points), 8-sample batches, epochs not capped: one epoch (8192 batches) takes far
    # longer than the 2 s peer deadline.
    cfg = WorkflowConfig.model_validate({
        "problem": {"size": "medium"}, "simulation": {"step_time_s": 0.05},
        "trainer": {"mini_batch": 8, "epoch_batches": 1_000_000, "checkpoint_every": 1, "window": 1},
        "peer_timeout_s": 2.0, "heartbeat_interval_s": 0.2})
    result = run_serial(cfg, "filesystem", address, tmp_path)
    result.raise_for_errors()
    epochs = [e for e in result.events() if e["kind"] == "epoch"]
    assert max(e["dt_s"] for e in epochs) > cfg.peer_timeout_s
    assert result.outcome.converged and result.outcome.skill > 0
