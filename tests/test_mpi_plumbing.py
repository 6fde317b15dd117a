"""The suite under mpiexec: one JSON from rank 0, a world-size check, and no hang when a rank fails.

Each test launches a real ``mpiexec`` job of the venv's MPI and inspects what it leaves.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_faults import hydra_files

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec: make setup (installs the mpich wheel)")


def run(args: list[str], timeout: float = 240, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_", "MPI_"))}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=clean | (env or {}))


def test_only_rank_zero_writes_the_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = run([MPIEXEC, "-n", "2", sys.executable, "-m", "pytest", "benchmarks/micro/test_metadata.py",
                "-m", "micro and nodelocal", "-k", "exists and not cold", "--simai-rounds", "3", "-q",
                "--benchmark-json", str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (proc.stdout + proc.stderr).count("Wrote benchmark data") == 1
    data = json.loads(out.read_text())
    assert data["machine_info"]["simai"]["world_size"] == 2
    [bench] = data["benchmarks"]
    simai, fom = bench["extra_info"]["simai"], bench["extra_info"]["fom"]
    assert simai["world_size"] == 2 and simai["backend"] == "nodelocal" and simai["level"] == "micro"
    assert fom["latency_s"]["unit"] == "s" and fom["latency_s"]["better"] == "lower"
    ops = fom["ops_per_s"]  # measured over each round's common window: one sample per round, value their median
    assert len(ops["samples"]) == 3 and ops["value"] == pytest.approx(sorted(ops["samples"])[1])
    assert len(fom["latency_s"]["samples"]) == 3 * 2 and fom["latency_s"]["samples_layout"] == "ranks_x_rounds"
    assert ops["samples_layout"] == "rounds"
    assert fom["latency_s"]["ranks"]["min"] <= fom["latency_s"]["value"] <= fom["latency_s"]["ranks"]["max"]


def test_a_mismatched_launcher_is_refused():
    """What a foreign mpiexec looks like to mpi4py: the launcher says 3 ranks, MPI sees 1."""
    proc = run([sys.executable, "-m", "pytest", "tests/test_config_and_registry.py", "-q", "-k", "sizes"],
               env={"OMPI_COMM_WORLD_SIZE": "3"})
    assert proc.returncode != 0
    assert "MPI sees a world of 1" in proc.stdout + proc.stderr and ".venv/bin/mpiexec" in proc.stdout + proc.stderr


def mpich_segments() -> set[Path]:
    return set(Path("/dev/shm").glob("mpich_shm_*"))


def in_use(path: Path) -> bool:
    """Whether any process still maps or holds ``path`` open."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(path) in (proc / "maps").read_text():
                return True
            if any(os.readlink(fd) == str(path) for fd in (proc / "fd").iterdir()):
                return True
        except OSError:  # the process ended, or is not ours to read
            continue
    return False


def test_measured_aggregates_see_a_late_rank():
    proc = run([MPIEXEC, "-n", "2", sys.executable, "-m", "pytest", "tests/mpi_cases/case_window_aggregate.py", "-q"],
               timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_failing_rank_aborts_the_job():
    before, files_before = mpich_segments(), hydra_files()
    proc = run([MPIEXEC, "-n", "2", sys.executable, "-m", "pytest", "tests/mpi_cases/case_rank_failure.py", "-q"], timeout=120)
    assert proc.returncode != 0
    assert "rank 1 gives up" in proc.stderr
    assert "aborting all ranks" in proc.stderr
    for path in hydra_files() - files_before:  # an aborted job's hydra leaves its topology file (MPICH 4)
        path.unlink(missing_ok=True)
    # MPI_Abort skips MPICH's clean-up of its shared-memory segment: remove the one this job left.
    # Killed ranks may still be exiting when mpiexec returns: wait for them to let go.
    for leftover in mpich_segments() - before:
        deadline = time.monotonic() + 10
        while in_use(leftover) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not in_use(leftover):
            leftover.unlink(missing_ok=True)


LAST_WORDS = """
import sys, time
from mpi4py import MPI
from simai_core import mpi
mpi.world()  # every rank: MPICH's shared-memory names released, so the aborted job leaves none in /dev/shm
if MPI.COMM_WORLD.Get_rank() == 1:
    sys.stderr.write("rank 1: last words\\n")
    mpi.abort_world(3)
time.sleep(30)  # the others: busy elsewhere when the job is torn down
"""


def test_a_failing_ranks_last_words_reach_the_output():
    """MPICH's launcher may drop what a rank wrote just before MPI_Abort (1 of 40 here): abort_world waits for it."""
    lost, before = 0, hydra_files()
    try:
        for _ in range(20):
            proc = run([MPIEXEC, "-n", "4", sys.executable, "-c", LAST_WORDS], timeout=60)
            assert proc.returncode != 0
            lost += "rank 1: last words" not in proc.stderr + proc.stdout
    finally:
        for path in hydra_files() - before:  # an aborted job's hydra leaves its topology file (MPICH 4)
            path.unlink(missing_ok=True)
    assert lost == 0, f"the failing rank's message was lost in {lost} of 20 jobs"


@pytest.mark.dragon
@pytest.mark.timeout(900)
def test_the_workflow_runs_on_mpi_ranks_that_a_dragon_runtime_starts(tmp_path):
    """4 ranks of an mpiexec the runtime started split into simulation and trainer and stage through one DDict."""
    from simai_core.profiles import load_profile
    from simai_core.staging import registry
    from simai_core.staging.dragon_mpi import run_workflow
    from simai_core.workflow.config import WorkflowConfig
    from simai_core.workflow.protocol import Keys

    reason = registry.unavailable_reason("dragon")
    if reason is not None:
        pytest.skip(reason)
    pytest.importorskip("torch")
    pytest.importorskip("mpipartition")
    cfg = WorkflowConfig.model_validate({"problem": {"size": "debug"}, "heartbeat_interval_s": 0.2,
                                         "simulation": {"step_time_s": 0.05, "max_steps": 40}})
    server = registry.make_server("dragon", load_profile("local"), tmp_path)
    server.start()
    try:
        result = run_workflow(cfg, server.address, 4, tmp_path, timeout_s=600)
        client = registry.connect("dragon", server.address)
        leftovers = client.clean(Keys(cfg.run_id).prefix)
        client.close()
    finally:
        server.stop()
    result.raise_for_errors()
    assert result.mode == "mpi" and len(result.reports) == 4
    assert sorted((r.component, r.rank) for r in result.reports) == [("sim", 0), ("sim", 1), ("train", 0), ("train", 1)]
    assert result.outcome.steps > 0 and leftovers == 0, "the simulation head cleans the run's keys"
    sent = {e["rank"] for e in result.events() if e["component"] == "sim" and e["kind"] == "data"}
    assert sent == {0, 1}, "both simulation ranks staged snapshots in the DDict"
