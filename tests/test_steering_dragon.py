"""The steering loop's Dragon launcher in a real Dragon runtime: simulations as Dragon processes, a crash replaced,
nothing left running, and a runtime that ends under the run failing it at once instead of hanging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from simai_core import mpi
from simai_core.staging import registry
from simai_core.steering.config import SteeringConfig
from simai_core.steering.steerer import run_steering
from simai_core.steering.worker import SteerKeys

pytestmark = [pytest.mark.dragon, pytest.mark.skipif(mpi.size() > 1, reason="starts and stops its own Dragon runtime")]
pytest.importorskip("sklearn")
NEVER = 1e-9  # a tolerance no run reaches: every run goes to its budget
_REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dragon_staging() -> Iterator[tuple[Any, str]]:
    """A DDict in this process's Dragon runtime: ``(client, address)``, always destroyed."""
    if (reason := registry.unavailable_reason("dragon")) is not None:
        pytest.skip(reason)
    from simai_core.staging.dragon import DragonClient, DragonServer

    with DragonServer(total_mem=64 * 2**20) as server:
        client = DragonClient(server.address)
        yield client, server.address
        client.close()


def _simulations_of(run_id: str) -> list[int]:
    """PIDs of this user's simulation processes of run ``run_id`` (Dragon starts them, not this process)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "uids"]):
        cmd = proc.info["cmdline"] or []
        if "simai_core.steering.worker" in cmd and run_id in cmd and proc.info["uids"].real == os.getuid():
            found.append(proc.info["pid"])
    return found


def test_dragon_launcher_runs_simulations_replaces_a_crash_and_a_hang_and_leaves_none(dragon_staging, tmp_path):
    client, address = dragon_staging
    cfg = SteeringConfig(run_id=f"t{time.time_ns()}", field_bytes=16 * 2**10, tolerance=NEVER, launcher="dragon",
                         mode="streaming", policy="random", workers=2, budget=3, fail={1: "exit", 2: "hang"},
                         sim_timeout_s=60, deadline_s=400)
    result = run_steering(cfg, client, "dragon", address, tmp_path / "run")
    assert sorted(result.completed) == [0, 1, 2], result.failures
    errors = {f["sim"]: f["error"] for f in result.failures}
    assert "exit code 3" in errors[1] and "killed" in errors[2], errors  # the hung one ended at its timeout
    assert "dragon.native.process.Process" in result.launcher_detail
    assert all(result.sims[s].started >= result.sims[s].launched for s in result.completed)
    assert client.clean(SteerKeys(cfg.run_id).prefix) == 0, "the run left keys behind"
    deadline = time.monotonic() + 10
    while (left := _simulations_of(cfg.run_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"simulations left running: {left}"


def test_dragon_pool_is_one_process_group_that_serves_every_simulation(dragon_staging, tmp_path):
    client, address = dragon_staging
    cfg = SteeringConfig(run_id=f"t{time.time_ns()}", field_bytes=16 * 2**10, tolerance=NEVER, launcher="pool",
                         mode="batch", policy="random", workers=2, budget=4, fail={1: "raise"}, deadline_s=300)
    result = run_steering(cfg, client, "dragon", address, tmp_path / "run")
    assert sorted(result.completed) == [0, 1, 2, 3], result.failures
    assert [f["sim"] for f in result.failures] == [1] and "injected failure" in result.failures[0]["error"]
    assert "Dragon ProcessGroup of 2 processes" in result.launcher_detail
    deadline = time.monotonic() + 10
    while (left := _simulations_of(cfg.run_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"pool workers left running: {left}"


_RUNTIME_ENDS_SCRIPT = """
import json, os, signal, sys, time
from pathlib import Path
from simai_core.staging import dragon as b
from simai_core.steering.launchers import DragonLauncher, DragonRuntimeEndedError
srv = b.DragonServer(total_mem=32 * 2**20)
srv.start()
launcher = DragonLauncher("dragon", srv.address, "gone", 1, Path(sys.argv[2]))
os.kill(b._Runtime.launcher_pid, signal.SIGKILL)  # the runtime's launcher (its Local and Global Services) dies
b._Runtime.handle._proc.wait(timeout=30)
out = {}
for name, call in (("launch", lambda: launcher.launch(0)), ("close", launcher.close)):
    t0 = time.monotonic()
    try:
        call()
        out[name] = "returned"
    except DragonRuntimeEndedError as exc:
        out[name] = str(exc)
    out[name + "_s"] = time.monotonic() - t0
Path(sys.argv[1]).write_text(json.dumps(out))
os._exit(0)  # its runtime cannot be stopped any more: the test reaps what it left, as after a killed run
"""


def test_a_runtime_that_ends_fails_the_launcher_at_once_instead_of_hanging(tmp_path):
    """Dragon's calls wait on its services forever once they are gone; the launcher asks first and raises."""
    if (reason := registry.unavailable_reason("dragon")) is not None:
        pytest.skip(reason)
    from simai_core.staging.dragon import reap_orphans

    env = {k: v for k, v in os.environ.items() if not k.startswith("DRAGON")}
    out = tmp_path / "out.json"
    proc = subprocess.Popen([sys.executable, "-c", _RUNTIME_ENDS_SCRIPT, str(out), str(tmp_path)], cwd=_REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the launcher hung after its runtime ended: {err.decode()[-2000:]}")
    finally:
        reap_orphans()  # the runtime's orphaned processes and pool files
    assert out.exists(), err.decode()[-3000:]
    got = json.loads(out.read_text())
    assert "launcher exited with code -9" in got["launch"] and got["launch_s"] < 5, got
    assert "launcher exited with code -9" in got["close"] and got["close_s"] < 5, got
