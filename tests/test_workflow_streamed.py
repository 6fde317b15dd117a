"""The workflow with its snapshots on ADIOS2 SST streams (serial: the trainer is a separate process).

Sync streams must lose nothing; async streams must count every step they discard; a killed
trainer must fail a streaming simulation within its deadline, and no contact file stays behind.
"""

from __future__ import annotations

import time

import pytest

from simai_core.workflow.config import WorkflowConfig
from simai_core.workflow.driver import WorkflowResult, run_serial, with_stream_directory
from simai_core.workflow.launch import ComponentProcess
from simai_core.workflow.protocol import Keys

pytest.importorskip("torch")
pytest.importorskip("adios2")
pytestmark = pytest.mark.adios2

FAST = {"problem": {"size": "debug"}, "simulation": {"step_time_s": 0.1}}


def streamed(mode: str, **extra: object) -> WorkflowConfig:
    return WorkflowConfig.model_validate({**FAST, "streamed_data": {"mode": mode}, **extra})


def run_converged(mode: str, address: str, tmp_path) -> tuple[WorkflowConfig, WorkflowResult, dict, int]:
    """A serial streamed run that must converge: config, result, trainer counters, sync steps written."""
    cfg = streamed(mode)
    result = run_serial(cfg, "filesystem", address, tmp_path)
    result.raise_for_errors()
    assert result.outcome.converged and result.outcome.skill > 0
    counters = next(r.detail for r in result.reports if r.component == "train")
    sync_steps = -(-result.outcome.steps // cfg.simulation.train_interval)
    assert counters["stream_steps_written"] == sync_steps
    return cfg, result, counters, sync_steps


@pytest.mark.timeout(300)
def test_sync_stream_converges_and_loses_no_step(file_staging, tmp_path):
    client, address = file_staging
    cfg, result, counters, sync_steps = run_converged("sync", address, tmp_path)
    assert counters["stream_steps_received"] == sync_steps
    assert counters["stream_discarded_steps"] == 0 == result.discarded_from_events()
    assert result.local_foms()["discarded_steps"] == 0
    assert result.detail()["data_path"]["kind"] == "adios2-sst"
    sent = [e["nbytes"] for e in result.events() if e["kind"] == "data" and e.get("step") is not None and "what" not in e]
    got = [e["nbytes"] for e in result.events() if e.get("what") == "stream_step"]
    # Every step arrived whole; the last ones may come after the stop (drained, not trained on).
    assert len(sent) == sync_steps and len(got) == sync_steps - counters["stream_steps_late"]
    assert set(got) == set(sent)
    assert not list((tmp_path / "streams").iterdir()), "a contact file was left behind"
    assert client.clean(Keys(cfg.run_id).prefix) == 0, "the data went through the staging area"


@pytest.mark.timeout(300)
def test_async_stream_counts_every_discarded_step(file_staging, tmp_path):
    _, result, counters, _ = run_converged("async", file_staging[1], tmp_path)
    # Two independent counts: gaps in the stream's step ids against the count the writer published,
    # and the simulation's own send events against the payloads the trainer read or drained.
    assert counters["stream_discarded_steps"] == result.discarded_from_events() == result.local_foms()["discarded_steps"]
    # The writer does not wait for the trainer to start: its first steps find no reader.
    assert counters["stream_discarded_before_join"] <= counters["stream_discarded_steps"]


@pytest.mark.timeout(300)
def test_killed_trainer_fails_a_streaming_simulation(file_staging, tmp_path):
    client, address = file_staging
    peer_timeout = 10.0
    endless = {"step_time_s": 0.05, "criterion": "mse", "tolerance": 1e-12, "max_steps": 100_000}
    cfg = with_stream_directory(streamed("sync", simulation=endless, peer_timeout_s=peer_timeout,
                                         heartbeat_interval_s=0.2), tmp_path)
    start = time.time()
    sim = ComponentProcess("sim", cfg, "filesystem", address, tmp_path / "sim", start)
    trainer = ComponentProcess("train", cfg, "filesystem", address, tmp_path / "train", start)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the trainer has delivered a checkpoint
            status = client.get_tensor(Keys(cfg.run_id).train_status)
            if status is not None and status[0] >= 1:
                break
            time.sleep(0.05)
        trainer.kill()
        killed = time.monotonic()
        report = sim.wait(timeout_s=peer_timeout + 60)
    finally:
        sim.kill()
        trainer.kill()
    assert report.error is not None and "PeerTimeoutError" in report.error, report.error
    assert time.monotonic() - killed < peer_timeout + 10
    assert not list((tmp_path / "streams").glob("*.sst")), "the killed run left a contact file"


@pytest.mark.timeout(300)
def test_a_sync_writer_blocked_on_a_full_queue_counts_as_waiting(file_staging, tmp_path):
    """A trainer whose epochs outlast a sync interval keeps a one-step queue full: the writer waits, it does not send."""
    cfg = WorkflowConfig.model_validate({
        "problem": {"size": "debug"}, "simulation": {"step_time_s": 0.02, "max_steps": 80},
        "trainer": {"mini_batch": 8, "epoch_batches": 2000, "checkpoint_every": 1},
        "streamed_data": {"mode": "sync", "queue_limit": 1}})
    result = run_serial(cfg, "filesystem", file_staging[1], tmp_path)
    result.raise_for_errors()
    sim = next(r for r in result.reports if r.component == "sim")
    sends = [e for e in result.events() if e["component"] == "sim" and e["kind"] == "data"]
    blocked, total = sum(e["waited_s"] for e in sends), sum(e["dt_s"] for e in sends)
    assert blocked > 1.0, f"the writer never waited ({blocked:.2f} s): the test did not fill the queue"
    assert sim.seconds["wait"] >= blocked
    assert sim.seconds["data"] < 0.25 * total  # handing a 8 KiB step over is quick; the rest was waiting
