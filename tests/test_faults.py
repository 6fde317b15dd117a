"""Fault injection: one test per fault, each on a real run; a clear error within its deadline, nothing left behind.

Serial faults run the mini workflow as ``run_serial`` does (the simulation in this process, the
trainer a real child process) on a real staging server, and inject the fault from a thread once
the run is under way. MPI faults run ``tests/mpi_cases/case_fault_*.py`` under ``.venv/bin/mpiexec``
and act on the job from outside. After each, :class:`Leftovers` checks that no process the test
started is alive, no server port listens, and nothing of the run is in ``/dev/shm`` or the temp dir.
The time from the fault to the clean exit is printed (``-s``) and checked against a bound.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from simai_core import mpi
from simai_core.errors import StagingFullError
from simai_core.profiles import load_profile
from simai_core.staging import registry
from simai_core.workflow.config import WorkflowConfig
from simai_core.workflow.driver import WorkflowResult, run_serial
from simai_core.workflow.protocol import Keys

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = Path(sys.executable).parent / "mpiexec"
pytestmark = pytest.mark.skipif(mpi.size() > 1, reason="injects faults into runs it starts itself")

PEER_TIMEOUT_S = 30.0  # generous: a trainer starved for CPU on a loaded node must not pass for a dead one
# A run that never converges on its own (an MSE no model meets) with fast steps: only the fault ends it.
ENDLESS = {"problem": {"size": "debug"},
           "simulation": {"step_time_s": 0.05, "criterion": "mse", "tolerance": 1e-12, "max_steps": 100_000},
           "peer_timeout_s": PEER_TIMEOUT_S, "startup_timeout_s": 120, "heartbeat_interval_s": 0.2,
           "finish_timeout_s": 10}
# After a failure the serial driver waits this long for the trainer process, then kills it: the run's own deadline.
# (A quiet node takes 2-8 s; one running 30 processes on 2 cores, up to 41 s.)
RUN_DEADLINE_S = ENDLESS["finish_timeout_s"] + PEER_TIMEOUT_S + 5


def needs(backend: str) -> None:
    if (reason := registry.unavailable_reason(backend)) is not None:
        pytest.skip(reason)


# ---------------------------------------------------------------- what must be gone afterwards
def hydra_files() -> set[Path]:
    """The topology files MPICH's hydra writes while it runs and removes when it ends (not when SIGKILLed or aborted)."""
    return set(Path(tempfile.gettempdir()).glob("hydra_hwloc_xmlfile_*"))


def pyg_sources() -> set[Path]:
    """PyG's generated GNN modules in the temp dir that another process wrote: each removes its own at exit, a
    SIGKILLed one cannot (:func:`simai_core.models.gnn._remove_generated_source_at_exit`)."""
    gnn = sys.modules.get("simai_core.models.gnn")
    own = {Path(p) for p in getattr(gnn, "_REMOVE_AT_EXIT", ())}
    return set(Path(tempfile.gettempdir()).glob("simai_core.models.gnn_*_propagate_*.py")) - own


class Leftovers:
    """Watches the processes this test starts; afterwards finds what of them, their ports and files remains."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.before = {p.pid for p in self.me.children(recursive=True)}
        self.shm_before = set(os.listdir("/dev/shm"))
        self.seen: dict[int, str] = {os.getpid(): "pytest"}
        self.ports: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            for child in self.me.children(recursive=True):
                if child.pid not in self.before and child.pid not in self.seen:
                    with contextlib.suppress(psutil.Error):
                        self.seen[child.pid] = " ".join(child.cmdline())[:120]
            self._stop.wait(0.05)

    def remaining(self, wait_s: float = 30.0) -> list[str]:
        """What is left once ``wait_s`` has passed (or sooner, once nothing is)."""
        deadline = time.monotonic() + wait_s
        while True:
            found = self._find()
            if not found or time.monotonic() > deadline:
                self._stop.set()
                return found
            time.sleep(0.1)

    def _find(self) -> list[str]:
        found = [f"process {pid}: {cmd}" for pid, cmd in self.seen.items() if pid != os.getpid() and _alive(pid)]
        found += [f"port {port} still listening" for port in self.ports if not _port_free(port)]
        pids = set(self.seen)
        for name in set(os.listdir("/dev/shm")) - self.shm_before:
            owner = _shm_owner(name)
            if owner in pids:
                found.append(f"/dev/shm/{name}")
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"pytest-of-{os.environ.get('USER', 'root')}"
        found += [f"private dir {d}" for d in tmp.glob("simai-mpi-*") if int(d.name.rsplit("-", 1)[1]) in pids]
        return found


def _cmdline(pid: int) -> str:
    """``pid``'s command line now ('' once it is gone); a sample taken at fork time shows the parent's."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _shm_owner(name: str) -> int | None:
    """The pid a /dev/shm entry of the run is named after: MPICH's segments (hex) or a staging directory."""
    if m := re.match(r"mpich_shm_([0-9a-f]+)_", name):
        return int(m[1], 16)
    if m := re.match(r"simai-\w+\..+\.(\d+)\.[^.]+$", name):
        return int(m[1])
    return None


@pytest.fixture
def leftovers() -> Iterator[Leftovers]:
    watch, files_before = Leftovers(), hydra_files() | pyg_sources()
    yield watch
    watch._stop.set()
    while _JOBS:
        job = _JOBS.pop()
        if job.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.pid, signal.SIGKILL)
        job.communicate()
    # What the killed processes could not remove: an aborted job's hydra topology file (MPICH 4), a
    # SIGKILLed trainer's PyG module.
    for path in (hydra_files() | pyg_sources()) - files_before:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------- serial faults
def when_under_way(client: Any, cfg: WorkflowConfig, fault: Callable[[], None], stop: threading.Event,
                   deadline_s: float = 120) -> tuple[threading.Thread, dict]:
    """A thread that runs ``fault`` once the trainer is alive and the simulation has made 3 steps (or ``stop``)."""
    keys, done = Keys(cfg.run_id), {}

    def watch() -> None:
        end = time.monotonic() + deadline_s
        while not stop.is_set() and time.monotonic() < end:
            train, sim = client.get_tensor(keys.train_status), client.get_tensor(keys.sim_status)
            if train is not None and sim is not None and sim[0] >= 3:
                done["at"] = time.monotonic()
                fault()
                return
            stop.wait(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, done


def run_with_fault(backend: str, server: Any, tmp_path: Path, fault: Callable[[], None],
                   cfg: WorkflowConfig | None = None) -> tuple[WorkflowResult, float]:
    """A serial mini run with ``fault`` injected under way; (result, seconds from the fault to the run's return)."""
    cfg = cfg or WorkflowConfig.model_validate(ENDLESS)
    watcher, stop = registry.connect(backend, server.address), threading.Event()
    thread, injected = when_under_way(watcher, cfg, fault, stop)
    try:
        result = run_serial(cfg, backend, server.address, tmp_path / "run")
        returned = time.monotonic()
    finally:
        stop.set()
        thread.join(timeout=30)
        with contextlib.suppress(Exception):
            watcher.close()
    assert "at" in injected, f"the run ended before the fault: {result.errors}"
    elapsed = returned - injected["at"]
    print(f"\n{backend}: fault to return {elapsed:.1f} s; errors: {result.errors}")
    return result, elapsed


def kill_server_processes(backend: str, server: Any) -> None:
    """SIGKILL the staging server (the DB process itself, not its launcher)."""
    if backend == "redis":
        os.kill(server.pid, signal.SIGKILL)
        return
    for pid in server.processes():
        if "redis-server" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", ["redis", "smartsim"])
def test_server_killed_mid_run(name, tmp_path, leftovers, monkeypatch):
    needs(name)
    monkeypatch.setenv("SR_CMD_TIMEOUT", "3")  # SmartRedis's retry window (the trainer inherits it)
    monkeypatch.setenv("SR_CONN_TIMEOUT", "3")
    server = registry.make_server(name, load_profile("local"), tmp_path / "server")
    server.start()
    if server.port:  # a SmartSim DB on one node has none: a Unix socket, which stop() removes
        leftovers.ports.add(server.port)
    try:
        result, elapsed = run_with_fault(name, server, tmp_path, lambda: kill_server_processes(name, server))
    finally:
        server.stop()
    where = f"127.0.0.1:{server.port}" if name == "redis" else str(server.socket)  # SmartRedis names the socket
    assert {r.component for r in result.reports if r.error} == {"sim", "train"}, result.errors
    for report in result.reports:  # each names the server it lost, not a peer timeout
        assert where in str(report.error) and "silent" not in str(report.error), report.error
    assert elapsed < RUN_DEADLINE_S
    assert leftovers.remaining() == []
    assert name == "redis" or not os.path.lexists(server.socket)  # stop() removes a killed DB's socket


def _remove_tree(path: Path) -> None:
    """``rm -rf path``, again while the run writes into it: rmtree fails if a file appears before its last rmdir."""
    while path.exists():
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", ["nodelocal", "filesystem"])
def test_staging_directory_removed_mid_run(name, tmp_path, leftovers):
    needs(name)
    server = registry.make_server(name, load_profile("local"), tmp_path / "server")
    server.start()
    path = Path(server.path)
    try:
        result, elapsed = run_with_fault(name, server, tmp_path, lambda: _remove_tree(path))
    finally:
        server.stop()
    assert {r.component for r in result.reports if r.error} == {"sim", "train"}, result.errors
    assert elapsed < RUN_DEADLINE_S
    assert not path.exists() and leftovers.remaining() == []
    assert all(f"staging directory {path} was removed" in e for e in result.errors), result.errors


@pytest.fixture
def small_tmpfs(tmp_path) -> Iterator[Path]:
    """A 1 MiB tmpfs, mounted for the test (root only)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.timeout(240)
def test_full_node_local_store(small_tmpfs, tmp_path, leftovers):
    from simai_core.staging.files import FileStagingArea

    server = FileStagingArea("nodelocal", small_tmpfs)
    server.start()
    client = registry.connect("nodelocal", server.address)
    try:
        # Staged data already there, filling the store up to 48 KiB: a snapshot no longer fits.
        free = shutil.disk_usage(small_tmpfs).free
        kept = np.random.default_rng(0).integers(0, 255, free - 48 * 1024, dtype=np.uint8)
        client.put_bytes("fault/kept", kept.tobytes())
        with pytest.raises(StagingFullError, match=r"No space left in .* for 'fault/too-big'"):
            client.put_bytes("fault/too-big", bytes(64 * 1024))
        start = time.monotonic()
        result = run_serial(WorkflowConfig.model_validate(ENDLESS), "nodelocal", server.address, tmp_path / "run")
        print(f"\nfull store: run ended after {time.monotonic() - start:.1f} s; errors: {result.errors}")
        sim = next(r for r in result.reports if r.component == "sim")
        assert sim.error and sim.error.startswith("StagingFullError"), result.errors
        assert re.search(rf"No space left in {re.escape(server.address)} for 'simai/\w+/data/0/\d+'", sim.error)
        assert time.monotonic() - start < RUN_DEADLINE_S + 60  # the trainer's start-up included
        assert client.get_bytes("fault/kept") == kept.tobytes()  # no data lost
        assert not client.exists("fault/too-big")
        assert not [n for n in os.listdir(server.path) if n.endswith(".tmp")], "a failed put left a partial file"
    finally:
        client.close()
        server.stop()
    assert leftovers.remaining() == []


@pytest.mark.timeout(240)
def test_corrupted_checkpoint(tmp_path, leftovers, file_staging):
    """The trainer's checkpoint blob is cut in half on its way: the simulation reports a bad checkpoint."""
    client, address = file_staging
    cfg = WorkflowConfig.model_validate(ENDLESS)
    keys = Keys(cfg.run_id)
    real_get = type(client).get_bytes

    def corrupting_get(self, key):
        blob = real_get(self, key)
        return blob[: len(blob) // 2] if key == keys.model and blob else blob

    start = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:  # this process is the simulation: its reads of the model are cut
        mp.setattr(type(client), "get_bytes", corrupting_get)
        result = run_serial(cfg, "filesystem", address, tmp_path / "run")
    elapsed = time.monotonic() - start
    print(f"\ncorrupted checkpoint: run ended after {elapsed:.1f} s; errors: {result.errors}")
    sim = next(r for r in result.reports if r.component == "sim")
    assert sim.error is not None and "train" in {r.component for r in result.reports if r.error}, result.errors
    assert leftovers.remaining() == []
    assert re.search(r"checkpoint .*not a loadable TorchScript module", sim.error), sim.error


# ---------------------------------------------------------------- faults under mpiexec
def start_case(case: str, n: int, tmp_path: Path, **env: str) -> tuple[subprocess.Popen[str], Path]:
    """``mpiexec -n n pytest tests/mpi_cases/<case>``; the job's temp dirs under ``tmp_path``."""
    if not MPIEXEC.exists():
        pytest.skip("no mpiexec in the venv: make setup (installs the mpich wheel)")
    record = tmp_path / "record.jsonl"
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "SIMAI_CASE_RECORD": str(record), "TMPDIR": str(tmp_path / "tmp"), **env}
    args = [str(MPIEXEC), "-n", str(n), sys.executable, "-m", "pytest", f"tests/mpi_cases/{case}", "-q", "-s",
            "-p", "no:cacheprovider", *env.pop("PYTEST_ARGS", "").split()]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: a failed test ends the whole job
    _JOBS.append(proc)
    return proc, record


_JOBS: list[subprocess.Popen[str]] = []  # ended by the leftovers fixture if a test failed before they did


def wait_ready(proc: subprocess.Popen[str], record: Path, timeout_s: float = 120) -> dict:
    """Wait for the case's READY line; its record (the world's pids, MPICH segments, the server)."""
    import json

    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    lines: list[str] = []
    while "READY" not in (line := proc.stdout.readline()):
        lines.append(line)
        if not line or time.monotonic() > deadline:
            pytest.fail("the case never got under way:\n" + "".join(lines[-40:]))
    return dict(json.loads(record.read_text().splitlines()[-1]))


def finish(proc: subprocess.Popen[str], timeout_s: float) -> tuple[str, float]:
    """The job's remaining output and the seconds it took to end (killed and failed past ``timeout_s``)."""
    start = time.monotonic()
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the job was still running {timeout_s:g} s after the fault:\n{output[-3000:]}")
    return output, time.monotonic() - start


def check_gone(record: dict, leftovers: Leftovers, tmp_path: Path) -> None:
    leftovers.seen.update(dict.fromkeys(record["pids"], "rank"))
    if record.get("port"):
        leftovers.ports.add(record["port"])
    assert leftovers.remaining() == []
    assert [s for s in record["shm"] if Path(s).exists()] == [], "MPICH's segments are left in /dev/shm"
    assert not (record.get("path") and Path(record["path"]).exists()), "the staging directory is left"
    assert list(tmp_path.rglob("redis-*.conf")) == [], "the Redis config (with its password) is left"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", ["redis", "nodelocal"])
def test_ctrl_c_to_mpiexec_mid_run(name, tmp_path, leftovers):
    needs(name)
    proc, path = start_case("case_fault_run.py", 4, tmp_path, SIMAI_CASE_BACKEND=name)
    record = wait_ready(proc, path)
    proc.send_signal(signal.SIGINT)
    output, elapsed = finish(proc, 30)
    print(f"\nCtrl-C ({name}, -n 4): job ended {elapsed:.1f} s after the signal (code {proc.returncode})")
    assert proc.returncode != 0 and "KeyboardInterrupt" in output, output[-3000:]
    check_gone(record, leftovers, tmp_path)


@pytest.mark.timeout(240)
def test_server_killed_under_mpiexec(tmp_path, leftovers):
    needs("redis")
    proc, path = start_case("case_fault_run.py", 4, tmp_path, SIMAI_CASE_BACKEND="redis")
    record = wait_ready(proc, path)
    port = record["port"]
    server = [pid for pid in leftovers.seen if f"redis-server 127.0.0.1:{port}" in _cmdline(pid)]
    assert len(server) == 1, leftovers.seen
    os.kill(server[0], signal.SIGKILL)
    output, elapsed = finish(proc, 30)
    print(f"\nredis-server killed (-n 4): job ended {elapsed:.1f} s after the kill (code {proc.returncode})")
    assert proc.returncode != 0
    assert f"redis-server at 127.0.0.1:{record['port']}" in output and "aborting all ranks" in output, output[-3000:]
    check_gone(record, leftovers, tmp_path)


@pytest.mark.timeout(240)
def test_rank_hung_in_a_collective(tmp_path, leftovers):
    """The last rank never reaches an allgather: the job's timeout ends the job, and its server with it."""
    needs("redis")
    job_timeout_s = 20  # from the start of the case's test: its server start included
    proc, path = start_case("case_fault_hang.py", 4, tmp_path, PYTEST_ARGS=f"--timeout {job_timeout_s}")
    record = wait_ready(proc, path)
    output, elapsed = finish(proc, job_timeout_s + 30)
    print(f"\nhung rank (-n 4): job ended {elapsed:.1f} s after the hang (timeout {job_timeout_s} s)")
    # The rank whose timer fires first ends the job; ranks other than 0 print nothing (their stdout is closed).
    assert proc.returncode != 0 and ("Timeout" in output or "BAD TERMINATION" in output), output[-3000:]
    check_gone(record, leftovers, tmp_path)
