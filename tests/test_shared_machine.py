"""Another user on the same node must not be able to hurt a run (issue 14, points 1, 3 and 5).

Each test sets a trap as that user would (a directory or file of another uid, a mode open to
everyone, a pre-made symlink, a connection to the pair link) and checks that the run refuses
it with an error or warning that says what was refused, and that nothing was harmed. Tests
that need a second uid create its state with ``os.chown`` and run only as root (as in CI).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from simai_core.private import NotPrivateError, SharedMachineWarning, private_dir, write_private
from simai_core.staging import dragon
from simai_core.streaming import StreamError, StreamTimeoutError
from simai_core.streaming import pair as pair_mod
from simai_core.streaming.adios2_setup import unavailable_reason
from simai_core.streaming.harness import Plan
from simai_core.streaming.pair import PairLink, spawn_peer, stop_peer
from simai_core.streaming.sides import Bp5ReaderSide

ROOT = Path(__file__).resolve().parent.parent
OTHER_UID = 4242  # "another user": no account needed, only a number that is not ours
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent))
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="making another user's files and processes needs root (CI)")


def _other_users_file(path: Path, text: str = "another user's data\n") -> Path:
    path.write_text(text)
    os.chown(path, OTHER_UID, OTHER_UID)
    return path


# --- the shared helper ---------------------------------------------------------------------------------

@as_root
@pytest.mark.parametrize("trap", ["another user's", "writable by all", "a symlink"])
def test_a_private_directory_refuses_what_another_user_could_have_made(tmp_path: Path, trap: str) -> None:
    path, real = tmp_path / "private", tmp_path / "real"
    if trap == "a symlink":
        real.mkdir(mode=0o700)
        path.symlink_to(real)
    else:
        path.mkdir()
        if trap == "another user's":
            os.chown(path, OTHER_UID, OTHER_UID)
        path.chmod(0o700 if trap == "another user's" else 0o777)
    expected = {"another user's": f"owned by uid {OTHER_UID}", "writable by all": "writable by other users",
                "a symlink": "is a symlink"}[trap]
    with pytest.raises(NotPrivateError, match=expected):
        private_dir(path)


def test_a_private_directory_is_made_0700_and_an_old_0755_one_of_ours_narrowed(tmp_path: Path) -> None:
    made = private_dir(tmp_path / "new")
    old = tmp_path / "old"
    old.mkdir()
    old.chmod(0o755)
    private_dir(old)
    assert made.stat().st_mode & 0o777 == 0o700 and old.stat().st_mode & 0o777 == 0o700


def test_a_private_file_is_0600_even_under_umask_0_and_never_reuses_a_path(tmp_path: Path) -> None:
    umask = os.umask(0)
    try:
        write_private(tmp_path / "secret", "password")
    finally:
        os.umask(umask)
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    for existing in ("secret", "link"):
        with pytest.raises(NotPrivateError, match="already exists"):
            write_private(tmp_path / existing, "password")
    assert not (tmp_path / "elsewhere").exists()


# --- point 1: Dragon's run records and the orphan reaper ----------------------------------------------------

@pytest.fixture
def records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Dragon's records directory moved into the test's directory (not made yet)."""
    path = tmp_path / "simai-dragon-records"
    monkeypatch.setattr(dragon, "_RECORDS", path)
    return path


def _write_record(records: Path, pids: dict[str, object], shm: list[str]) -> Path:
    """A record of ours whose owner is gone (no process started at tick -1)."""
    private_dir(records)
    path = records / "99999999.json"
    path.write_text(json.dumps({"owner": os.getpid(), "owner_start": -1, "uid": os.geteuid(), "pids": pids,
                                "shm": shm}))
    return path


@as_root
@pytest.mark.parametrize("trap", ["another user's", "writable by all", "a symlink"])
def test_dragon_refuses_a_records_directory_another_user_could_write(records: Path, tmp_path: Path,
                                                                      trap: str) -> None:
    """The records directory has a predictable name: a user who makes it first must not feed the reaper."""
    victim = _other_users_file(tmp_path / "victim")
    target = records if trap != "a symlink" else tmp_path / "their-dir"
    target.mkdir()
    (target / "1.json").write_text(json.dumps({"owner": 1, "owner_start": 0, "uid": os.geteuid(), "pids": {},
                                               "shm": ["../.." + str(victim)]}))
    if trap == "a symlink":
        records.symlink_to(target)
    os.chown(target, OTHER_UID if trap != "writable by all" else 0, 0)
    target.chmod(0o777 if trap == "writable by all" else 0o700)
    with pytest.raises(NotPrivateError, match=r"simai-dragon-records must be a private directory"):
        dragon.reap_orphans()
    assert victim.exists()


@as_root
def test_dragon_writes_its_record_without_following_a_planted_link(records: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    victim = _other_users_file(tmp_path / "victim")
    private_dir(records)
    for name in (f"{os.getpid()}.tmp", f"{os.getpid()}.json.{os.getpid()}.tmp", f"{os.getpid()}.json"):
        (records / name).symlink_to(victim)
    monkeypatch.setattr(dragon._Runtime, "pids", {os.getpid()})
    monkeypatch.setattr(dragon._Runtime, "launcher_pid", None)
    dragon._Runtime.save_record()
    assert victim.read_text() == "another user's data\n"
    record = dragon._Runtime.record_path()
    assert not record.is_symlink() and record.stat().st_mode & 0o777 == 0o600
    assert json.loads(record.read_text())["owner"] == os.getpid()


@as_root
def test_dragon_reaper_removes_only_pool_files_of_ours_named_as_dragon_names_them(records: Path,
                                                                                  tmp_path: Path) -> None:
    victim = _other_users_file(tmp_path / "victim")
    ours, theirs = f"DD0{os.getpid() % 1000:03d}simaitest{os.getpid()}", f"DD0999simaitheirs{os.getpid()}"
    Path("/dev/shm", ours).write_bytes(b"pool")
    _other_users_file(Path("/dev/shm", theirs))
    try:
        _write_record(records, {}, [ours, theirs, "../.." + str(victim), f"DD0123/../../..{victim}"])
        with pytest.warns(SharedMachineWarning, match=r"refused to remove .*simaitheirs.*\.\./\.\."):
            reaped = dragon.reap_orphans()
        assert reaped["removed_shm_files"] == [ours]
        assert victim.exists() and Path("/dev/shm", theirs).exists() and not Path("/dev/shm", ours).exists()
    finally:
        for name in (ours, theirs):
            Path("/dev/shm", name).unlink(missing_ok=True)


@as_root
def test_dragon_shutdown_takes_only_this_users_pool_files_of_its_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """At shutdown the runtime's pool files are found by name; another user's file of that name is not ours."""
    launcher = 4242000 + os.getpid() % 1000
    prefix = dragon.runtime_pool_prefix(launcher)
    ours, theirs = f"{prefix}simaitest", f"{prefix}simaitheirs"
    other_launcher = f"{dragon.runtime_pool_prefix(launcher + 1)}simaitest"
    monkeypatch.setattr(dragon._Runtime, "launcher_pid", launcher)
    monkeypatch.setattr(dragon._Runtime, "shm_before", set(os.listdir("/dev/shm")))
    try:
        Path("/dev/shm", ours).write_bytes(b"pool")
        Path("/dev/shm", other_launcher).write_bytes(b"pool")
        _other_users_file(Path("/dev/shm", theirs))
        assert dragon._Runtime.shm_files() == {ours}
    finally:
        for name in (ours, theirs, other_launcher):
            Path("/dev/shm", name).unlink(missing_ok=True)


@pytest.fixture
def sleepers() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Three ``sleep`` processes: ours, another user's, and ours again (to be recorded with a wrong start)."""
    procs = {"ours": subprocess.Popen(["sleep", "120"]), "theirs": subprocess.Popen(["sleep", "120"], user=OTHER_UID),
             "reused": subprocess.Popen(["sleep", "120"])}
    try:
        yield procs
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


@as_root
def test_dragon_reaper_kills_only_the_recorded_processes_of_this_user(records: Path,
                                                                      sleepers: dict[str, subprocess.Popen[bytes]]) -> None:
    """A record lists PIDs; the reaper kills one only if it still has the recorded start time and is ours."""
    started = {name: dragon._started(p.pid) for name, p in sleepers.items()}
    assert all(v is not None for v in started.values())
    pids = {str(sleepers["ours"].pid): started["ours"], str(sleepers["theirs"].pid): started["theirs"],
            str(sleepers["reused"].pid): started["reused"] + 1}  # type: ignore[operator]
    _write_record(records, pids, [])
    reaped = dragon.reap_orphans()
    assert reaped["killed_pids"] == [sleepers["ours"].pid]
    assert sleepers["ours"].wait(10) == -9
    assert sleepers["theirs"].poll() is None and sleepers["reused"].poll() is None


def test_dragon_reaper_refuses_a_record_that_is_not_a_file_of_ours(records: Path, tmp_path: Path) -> None:
    private_dir(records)
    (records / "1.json").symlink_to(tmp_path / "their-record.json")
    (tmp_path / "their-record.json").write_text("{}")
    with pytest.warns(SharedMachineWarning, match="1.json refused: .* is a symlink"):
        assert dragon.reap_orphans() == {"killed_pids": [], "removed_shm_files": []}


# --- point 3: the stream pair link ----------------------------------------------------------------------

needs_adios2 = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")


def _frame(message: dict[str, str]) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack("!I", len(body)) + body


@needs_adios2
def test_the_pair_link_admits_only_the_peer_with_the_run_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process connects to the serial reader's link before its peer does and sends a path to remove."""
    victim = _other_users_file(tmp_path / "victim")
    intruders: list[socket.socket] = []
    listen = PairLink.listen

    def listen_then_intrude(interface: str = "lo") -> tuple[socket.socket, str]:
        server, address = listen(interface)
        host, port = address.rsplit(":", 1)
        intruder = socket.create_connection((host, int(port)), timeout=10)
        intruder.sendall(_frame({"file": str(victim)}))
        intruders.append(intruder)
        return server, address

    monkeypatch.setattr(PairLink, "listen", staticmethod(listen_then_intrude))
    workdir = tmp_path / "peer"
    workdir.mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        proc, link = spawn_peer(workdir, "lo", 60.0)
    try:
        assert _closed_by_the_other_end(intruders[0]), "the intruder's connection should have been closed"
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        token = next(v.split(b"=", 1)[1] for v in environ if v.startswith(pair_mod.TOKEN_ENV.encode() + b"="))
        assert token not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        link.send({"op": "quit"})
        assert stop_peer(proc, workdir, 30.0) == 0
    finally:
        link.close()
        intruders[0].close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert any(issubclass(w.category, SharedMachineWarning) and "refused a connection" in str(w.message)
               for w in caught), [str(w.message) for w in caught]
    assert victim.exists()


def _closed_by_the_other_end(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:  # closed with our bytes unread
        return True


def test_the_pair_link_names_the_connections_it_refused_when_its_peer_never_comes() -> None:
    from simai_core.streaming.pair import new_token

    server, address = PairLink.listen("lo")
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as intruder:
        intruder.sendall(b"x" * 64)
        refused = r"refused 1 connection\(s\) without this run's token: 127.0.0.1:\d+ \(wrong token\)"
        with pytest.warns(SharedMachineWarning), pytest.raises(StreamTimeoutError, match=refused):
            PairLink.accept(server, 1.0, new_token())


def test_the_pair_link_writer_presents_the_token() -> None:
    from simai_core.streaming.pair import new_token

    server, address = PairLink.listen("lo")
    token = new_token()
    writer = PairLink.connect(address, 5.0, token)
    reader = PairLink.accept(server, 5.0, token)
    try:
        writer.send({"hello": 1})
        assert reader.recv() == {"hello": 1}
    finally:
        writer.close()
        reader.close()


@pytest.fixture
def tcp_links() -> Iterator[tuple[PairLink, PairLink]]:
    """Two ends of a loopback TCP connection as pair links (a writer end and a reader end)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname()[:2], timeout=5)
        sock, _ = server.accept()
    writer, reader = PairLink(client, 5.0), PairLink(sock, 5.0)
    try:
        yield writer, reader
    finally:
        writer.close()
        reader.close()


@needs_adios2
@pytest.mark.parametrize("where", ["outside", "dot-dot", "symlink"])
def test_the_bp5_reader_removes_only_files_of_its_run(tmp_path: Path, tcp_links: tuple[PairLink, PairLink],
                                                      where: str) -> None:
    """Even from its authenticated writer, the reader takes no path outside the run's directory."""
    run = tmp_path / "run"
    run.mkdir()
    plan = Plan(kind="bp5", mode="sync", nbytes=1024, steps=2, rounds=1, directory=str(run), name="t")
    victim = _other_users_file(tmp_path / "victim", "v" * plan.nbytes * plan.steps) if os.geteuid() == 0 else None
    if victim is None:
        victim = tmp_path / "victim"
        victim.write_text("v" * plan.nbytes * plan.steps)
    name = {"outside": str(victim), "dot-dot": f"{run}/../victim", "symlink": str(run / "t-raw.bin")}[where]
    if where == "symlink":
        (run / "t-raw.bin").symlink_to(victim)
    writer, reader = tcp_links
    side = Bp5ReaderSide(reader, plan)
    side.open()
    writer.send({"file": name})
    with pytest.raises(StreamError, match=r"not a file of this run's directory .*refusing to read or remove it"):
        side.raw()
    assert victim.exists()


# --- point 5: per-rank temp dirs under MPI, and the Redis config -------------------------------------------

def _mpi_pytest(tmpdir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_", "MPI_"))}
    return subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-m", "pytest", "tests/test_config_and_registry.py",
                           "-q", "-k", "sizes"], cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env=env | {"TMPDIR": str(tmpdir)})


needs_mpiexec = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec: make setup (installs the mpich wheel)")


@as_root
@needs_mpiexec
def test_mpi_rank_temp_dirs_refuse_a_base_made_by_another_user(tmp_path: Path) -> None:
    """``pytest-of-<user>`` in the shared temp dir, made first by another user and open to all."""
    base = tmp_path / f"pytest-of-{_user()}"
    base.mkdir()
    os.chown(base, OTHER_UID, OTHER_UID)
    base.chmod(0o777)
    t0 = time.monotonic()
    proc = _mpi_pytest(tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert f"owned by uid {OTHER_UID}, not by you" in out and "per-rank temp dir" in out, out
    assert not list(base.iterdir()), "the run wrote into another user's directory"
    assert time.monotonic() - t0 < 120


@needs_mpiexec
def test_mpi_rank_temp_dirs_are_private(tmp_path: Path) -> None:
    proc = _mpi_pytest(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    base = tmp_path / f"pytest-of-{_user()}"
    [job] = base.glob("simai-mpi-*")
    for path in (base, job, *job.glob("rank*")):
        assert path.stat().st_mode & 0o777 == 0o700 and path.stat().st_uid == os.geteuid(), path


def _user() -> str:
    import getpass

    return getpass.getuser()


needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server: make setup")


@as_root
@needs_redis
def test_redis_config_is_never_written_through_a_planted_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A symlink where the config (with its password) will go, pointing at a file its maker can read."""
    from simai_core.net import free_port
    from simai_core.staging import redis as redis_mod

    port = free_port("127.0.0.1")
    monkeypatch.setattr(redis_mod, "free_port", lambda host: port)  # the trap needs the path before start()
    victim = _other_users_file(tmp_path / "victim")
    victim.chmod(0o666)
    (tmp_path / f"redis-{port}.conf").symlink_to(victim)
    server = redis_mod.RedisServer(tmp_path)
    try:
        with pytest.raises(NotPrivateError, match=f"redis-{port}.conf already exists"):
            server.start()
    finally:
        server.stop()
    assert server.password not in victim.read_text()


@needs_redis
def test_redis_leaves_no_password_file_behind(tmp_path: Path) -> None:
    from simai_core.staging.redis import RedisServer

    with RedisServer(tmp_path) as server:
        holding = [p for p in tmp_path.rglob("*") if p.is_file() and server.password in p.read_text(errors="replace")]
        assert not holding, f"the password is on disk in {holding}"


# --- the filesystem backend's orphan clean-up: this host's dead runs of ours, nothing else -------------


def test_orphan_cleanup_keeps_other_hosts_live_runs_and_other_users_directories(tmp_path: Path) -> None:
    from simai_core.staging.files import FileStagingArea

    dead = _dead_pid()
    here, host = socket.gethostname(), "another-node.example"
    other_node = tmp_path / f"simai-filesystem.{host}.{dead}.abc123"  # that pid may be alive over there
    ours_dead = tmp_path / f"simai-filesystem.{here}.{dead}.def456"
    ours_live = tmp_path / f"simai-filesystem.{here}.{os.getpid()}.ghi789"
    theirs_dead = tmp_path / f"simai-filesystem.{here}.{dead}.jkl012"
    for d in (other_node, ours_dead, ours_live, theirs_dead):
        d.mkdir()
    if os.getuid() == 0:
        os.chown(theirs_dead, OTHER_UID, OTHER_UID)
    with FileStagingArea("filesystem", tmp_path) as area:
        assert Path(area.address).name.startswith(f"simai-filesystem.{here}.{os.getpid()}.")
        assert not ours_dead.exists()
        assert other_node.exists() and ours_live.exists()
        assert theirs_dead.exists() or os.getuid() != 0


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- no secret on a command line ------------------------------------------------------------------


def test_a_serial_runs_trainer_gets_the_staging_password_in_its_environment_not_its_cmdline(tmp_path: Path) -> None:
    from simai_core.staging.redis import RedisServer
    from simai_core.workflow.config import WorkflowConfig
    from simai_core.workflow.launch import ADDRESS_ENV, ComponentProcess

    with RedisServer(tmp_path / "redis") as server:
        cfg = WorkflowConfig.model_validate({"problem": {"size": "debug"}, "startup_timeout_s": 5})
        trainer = ComponentProcess("train", cfg, "redis", server.address, tmp_path / "train", time.time())
        try:
            proc = Path(f"/proc/{trainer.pid}")
            deadline = time.monotonic() + 30
            while b"simai_core.workflow.launch" not in (proc / "cmdline").read_bytes():  # past its exec
                assert time.monotonic() < deadline, "the trainer never started"
                time.sleep(0.01)
            assert server.password.encode() not in (proc / "cmdline").read_bytes()
            assert f"{ADDRESS_ENV}={server.address}".encode() in (proc / "environ").read_bytes()  # readable by its user only
        finally:
            trainer.kill()
