"""The SmartSim backend against a real SmartSim Orchestrator, the real SmartRedis client and the
sstensor module (or a real RedisAI where one is installed): wire format, client semantics,
lifecycle (nothing outlives ``stop``) and the platform traps from the SmartSim notes."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from contextlib import suppress
from pathlib import Path

import numpy as np
import pytest

from simai_core import mpi
from simai_core.errors import BackendUnavailableError, StagingFullError
from simai_core.private import NotPrivateError, SharedMachineWarning
from simai_core.profiles import load_profile
from simai_core.staging import registry
from simai_core.staging import smartsim as backend

pytestmark = pytest.mark.skipif(mpi.size() > 1, reason="starts and stops its own servers")
SR_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "float32", "float64"]
SR_SHAPES = [(1,), (7,), (3, 5), (2, 3, 4), (1, 1, 1, 9)]
RUNTIME_COMMANDS = ["AI.MODELEXECUTE", "AI.MODELRUN", "AI.SCRIPTSET", "AI.SCRIPTSTORE", "AI.SCRIPTRUN",
                    "AI.SCRIPTEXECUTE", "AI.DAGRUN", "AI.DAGEXECUTE", "AI.INFO"]
NO_RUNTIME = "not available: the sstensor stand-in has no RedisAI runtime"


def _reason() -> str | None:
    try:
        backend.check_available()
    except BackendUnavailableError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real Orchestrator for the module, always stopped."""
    if (reason := _reason()) is not None:
        pytest.skip(reason)
    with backend.make_server("smartsim", load_profile("local"), tmp_path_factory.mktemp("smartsim")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    c = backend.connect("smartsim", server.address)
    yield c
    c.close()


@pytest.fixture(scope="module")
def sr(server):
    """A bare SmartRedis client, as any SmartSim application would make it."""
    from smartredis import Client

    return Client(address=server.address, cluster=False)


@pytest.fixture(scope="module")
def raw(server):
    import redis

    with redis.Redis(**backend.redis_kwargs(server.address)) as r:
        yield r


@pytest.fixture
def stand_in(server):
    if server.detail()["redisai"] != "stand-in":
        pytest.skip("a real RedisAI is loaded, not the sstensor stand-in")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def processes_mentioning(*needles: str) -> list[str]:
    """Command lines of live (non-zombie) processes that contain any needle (checked independently of the backend)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(proc, "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmd = Path(proc, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace") + " "
        except (OSError, IndexError):
            continue
        if int(proc.name) != os.getpid() and any(n in cmd for n in needles):
            found.append(cmd)
    return found


def leftovers(srv: backend.SmartSimServer) -> list[str]:
    """What of ``srv`` is still there: processes naming its socket (or port), its socket and config, its port."""
    if srv.socket is not None:
        found = processes_mentioning(str(srv.socket.with_suffix("")))
        return found + [str(p) for p in (srv.socket, srv.socket.with_suffix(".conf")) if os.path.lexists(p)]
    found = processes_mentioning(f":{srv.port} ", f"+port={srv.port} ") if srv.port else []
    return found + ([f"port {srv.port} listening"] if srv.port and not port_free(srv.port) else [])


def assert_gone(srv: backend.SmartSimServer) -> None:
    deadline = time.monotonic() + 5
    while leftovers(srv):
        assert time.monotonic() < deadline, leftovers(srv)
        time.sleep(0.05)
    assert not processes_mentioning("telemetrymonitor", str(srv.exp_path))


def tcp_listening_ports(pids: list[int]) -> set[int]:
    """TCP ports any of ``pids`` listens on: their socket inodes (/proc/PID/fd) found in /proc/net/tcp and tcp6."""
    inodes = set()
    for pid in pids:
        with suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with suppress(OSError):
                    if (link := os.readlink(fd)).startswith("socket:["):
                        inodes.add(link[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# ---------------------------------------------------------------- the module's replies through SmartRedis
@pytest.mark.parametrize("shape", SR_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", SR_DTYPES)
def test_every_smartredis_dtype_and_shape(sr, client, raw, server, dtype, shape):
    array = (np.random.default_rng(0).standard_normal(shape) * 50).astype(dtype)
    sr.put_tensor(f"sr.{dtype}", array)
    got = sr.get_tensor(f"sr.{dtype}")
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)
    client.put_tensor(f"c.{dtype}", array)  # the backend's native path is the same single tensor
    np.testing.assert_array_equal(client.get_tensor(f"c.{dtype}"), array)
    if server.detail()["redisai"] == "stand-in":
        assert raw.type(f"c.{dtype}") == b"sstensorT"


def test_tensorget_replies_have_redisai_layout(raw, stand_in):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert raw.execute_command("AI.TENSORSET", "lay", "FLOAT", 3, 4, "BLOB", a.tobytes()) == b"OK"
    assert raw.execute_command("AI.TENSORGET", "lay", "META") == [b"dtype", b"FLOAT", b"shape", [3, 4]]
    reply = raw.execute_command("AI.TENSORGET", "lay", "META", "BLOB")
    assert reply[:5] == [b"dtype", b"FLOAT", b"shape", [3, 4], b"blob"] and reply[5] == a.tobytes()
    assert raw.execute_command("AI.TENSORGET", "lay", "BLOB") == a.tobytes()
    assert [float(v) for v in raw.execute_command("AI.TENSORGET", "lay", "VALUES")] == list(range(12))
    raw.execute_command("AI.TENSORSET", "vals", "INT16", 2, "VALUES", -3, 7)
    assert raw.execute_command("AI.TENSORGET", "vals", "META", "VALUES")[-1] == [-3, 7]
    assert raw.execute_command("AI.TENSORGET", "vals", "BLOB") == np.array([-3, 7], np.int16).tobytes()
    assert raw.execute_command("AI.TENSORSET", "zeros", "INT32", 2, 3) == b"OK"  # no data: zero-filled
    assert raw.execute_command("AI.TENSORGET", "zeros", "META", "BLOB")[3:] == [[2, 3], b"blob", bytes(24)]
    assert raw.execute_command("AI.TENSORGET", "zeros", "VALUES") == [0] * 6


@pytest.mark.parametrize(("command", "message"), [
    (("AI.TENSORGET", "no.such.key", "META", "BLOB"), "tensor key is empty"),
    (("AI.TENSORSET", "bad", "FLOAT", 3, "BLOB", b"12"), "data length does not match"),
    (("AI.TENSORSET", "bad", "COMPLEX", 3), "invalid data type"),
    (("AI.TENSORSET", "bad", "INT8", 1, "VALUES", 300), "invalid value"),
    (("AI.MODELGET", "no.such.model", "BLOB"), "model key is empty"),
    (("AI.MODELSTORE", "bad", "NOSUCH", "CPU", "BLOB", b"x"), "unsupported backend"),
    # Sizes that would wrap or exhaust memory are refused, not allocated (the server would abort).
    (("AI.TENSORSET", "bad", "UINT8", 2**40, 2**40), "shape too large"),
    (("AI.TENSORSET", "bad", "UINT8", 2**40), "larger than 512 MiB"),
    (("AI.MODELSTORE", "bad", "TORCH", "CPU", "INPUTS", 2**32 - 1, "a", "BLOB", b"x"), "invalid AI.MODELSTORE"),
])
def test_module_errors(raw, stand_in, command, message):
    import redis

    with pytest.raises(redis.ResponseError, match=message):
        raw.execute_command(*command)


@pytest.mark.parametrize("nbytes", [1, 65_537, 3 * 2**20 + 7])
def test_tensor_resp_path_round_trips_every_byte(server, sr, nbytes):
    """The module's own path in plain RESP (the SmartRedis benchmark's reference) stores what SmartRedis reads."""
    from simai_core.staging.resp import RespError

    data = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    ref = backend.TensorRespRaw(server.address)
    try:
        ref.put("resp.t", memoryview(data))
        np.testing.assert_array_equal(sr.get_tensor("resp.t"), data)
        sr.put_tensor("resp.s", data[::-1].copy())
        out = np.zeros_like(data)
        ref.get("resp.s", memoryview(out))
        np.testing.assert_array_equal(out, data[::-1])
        with pytest.raises(RespError, match="tensor key is empty"):
            ref.get("resp.missing", memoryview(out))
        ref.put("resp.t", memoryview(data))  # the connection is still in step after an error reply
    finally:
        ref.close()


def test_raw_references_use_the_same_unix_socket(server, raw, tmp_path):
    """The put/get sweep's references reach the DB as SmartRedis does (like for like), and say so."""
    from simai_core.staging.resp import RespConnection

    refs = {"raw": backend.raw_reference("smartsim", server.address),
            **backend.second_references("smartsim", server.address)}
    data = np.random.default_rng(9).integers(0, 256, 300_001, dtype=np.uint8)
    try:
        for name, ref in refs.items():
            out = np.zeros_like(data)
            ref.put(f"ref.{name}", memoryview(data))
            ref.get(f"ref.{name}", memoryview(out))
            np.testing.assert_array_equal(out, data)
        assert all(c["addr"].startswith(str(server.socket)) for c in raw.client_list())  # no TCP client at all
        assert "Unix domain socket" in refs["raw"].description and "Unix domain socket" in refs["module"].description
    finally:
        for ref in refs.values():
            ref.close()
    with pytest.raises(ConnectionError, match=r"Cannot reach the redis-server at unix://.*gone\.sock"):
        RespConnection(f"unix://{tmp_path}/gone.sock")


def test_wrong_type_is_refused(raw, stand_in):
    import redis

    raw.set("plain.string", b"x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        raw.execute_command("AI.TENSORGET", "plain.string", "META", "BLOB")


@pytest.mark.parametrize("command", RUNTIME_COMMANDS)
def test_runtime_commands_say_there_is_no_runtime(raw, stand_in, command):
    import redis

    with pytest.raises(redis.ResponseError, match=NO_RUNTIME):
        raw.execute_command(command, "k", "INPUTS", 1, "x")


def test_run_model_through_smartredis_names_the_stand_in(sr, stand_in):
    from smartredis.error import RedisReplyError

    sr.put_tensor("rm.in", np.ones(3, np.float32))
    sr.set_model("rm.model", b"not a model", "TORCH", "CPU")
    with pytest.raises(RedisReplyError, match=NO_RUNTIME):
        sr.run_model("rm.model", ["rm.in"], ["rm.out"])


def test_model_blobs_round_trip_through_smartredis(sr, raw, stand_in):
    blob = np.random.default_rng(3).bytes(10_000)
    sr.set_model("mdl", blob, "TORCH", "CPU", tag="v1", batch_size=4)
    assert sr.model_exists("mdl") and sr.get_model("mdl") == blob
    meta = raw.execute_command("AI.MODELGET", "mdl", "META")
    fields = dict(zip(meta[::2], meta[1::2], strict=True))
    assert (fields[b"backend"], fields[b"device"], fields[b"tag"], fields[b"batchsize"]) == (b"TORCH", b"CPU", b"v1", 4)
    sr.delete_model("mdl")
    assert not sr.model_exists("mdl")


def test_modelget_rechunks_like_redisai(raw, stand_in):
    blob = bytes(range(256)) * 10
    raw.execute_command("AI.MODELSTORE", "chunked", "TORCH", "CPU", "BLOB", blob[:700], blob[700:1900], blob[1900:])
    try:
        raw.execute_command("AI.CONFIG", "MODEL_CHUNK_SIZE", 1000)
        assert raw.execute_command("AI.CONFIG", "GET", "MODEL_CHUNK_SIZE") == 1000
        assert raw.execute_command("AI.MODELGET", "chunked", "BLOB") == [blob[:1000], blob[1000:2000], blob[2000:]]
    finally:
        raw.execute_command("AI.CONFIG", "MODEL_CHUNK_SIZE", 511 * 2**20)
    assert raw.execute_command("AI.MODELGET", "chunked", "BLOB") == blob


def test_large_tensor_is_stored_once(client, raw, stand_in):
    array = np.random.default_rng(4).random(4 * 2**20, dtype=np.float32)  # 16 MiB
    client.put_tensor("big", array)
    assert raw.memory_usage("big") < array.nbytes * 1.05  # the argument string is kept, not copied
    np.testing.assert_array_equal(client.get_tensor("big"), array)
    client.delete("big")


def test_module_values_survive_rdb_and_aof(tmp_path):
    """The module's RDB save/load and AOF rewrite, on a standalone redis-server (DEBUG is off under SmartSim)."""
    if shutil.which("redis-server") is None or shutil.which("gcc") is None:
        pytest.skip("needs redis-server and gcc")
    import redis

    module = backend.build_sstensor()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "yes", "--aof-use-rdb-preamble", "no", "--enable-debug-command", "yes",
                             "--dir", str(tmp_path), "--loadmodule", str(module)],
                            executable=str(Path(shutil.which("redis-server")).resolve()), stdout=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while port_free(port) and time.monotonic() < deadline:
            time.sleep(0.02)
        a = np.arange(6, dtype=np.int64).reshape(2, 3)
        r.execute_command("AI.TENSORSET", "t", "INT64", 2, 3, "BLOB", a.tobytes())
        r.execute_command("AI.TENSORSET", "v", "DOUBLE", 2, "VALUES", 1.5, -2)  # the module's own buffers,
        r.execute_command("AI.TENSORSET", "z", "UINT8", 3, 1)  # not a kept argument string
        r.execute_command("AI.MODELSTORE", "m", "ONNX", "CPU", "TAG", "x", "INPUTS", 1, "i", "BLOB", b"ab", b"cd")

        def values() -> list:
            return [*(r.execute_command("AI.TENSORGET", k, "META", "BLOB") for k in ("t", "v", "z")),
                    r.execute_command("AI.MODELGET", "m", "META", "BLOB")]

        want = values()
        r.execute_command("DEBUG", "RELOAD")
        assert values() == want
        r.bgrewriteaof()
        while r.info("persistence")["aof_rewrite_in_progress"] or r.info("persistence")["aof_rewrite_scheduled"]:
            time.sleep(0.05)
        r.execute_command("DEBUG", "LOADAOF")
        assert values() == want
    finally:
        proc.terminate()
        proc.wait(10)


# ---------------------------------------------------------------- client semantics
@pytest.mark.parametrize(("dtype", "shape"), [("bool", (3, 4)), ("float16", (5,)), ("complex128", (2, 2)),
                                              ("uint64", (3,)), ("float32", ()), ("int32", (0,)), (">f4", (4,))])
def test_values_smartredis_cannot_carry_are_datasets(client, sr, dtype, shape):
    array = np.asarray(np.random.default_rng(5).standard_normal(shape) * 10).astype(dtype)
    client.put_tensor(f"ds.{dtype}", array)
    assert sr.dataset_exists(f"ds.{dtype}") and not sr.tensor_exists(f"ds.{dtype}")
    got = client.get_tensor(f"ds.{dtype}")
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def test_huge_values_are_chunked(client, monkeypatch):
    monkeypatch.setattr(backend, "CHUNK_BYTES", 1000)
    array = np.arange(1250, dtype=np.float32)  # 5 chunks of at most 1000 bytes
    client.put_tensor("chunks", array)
    np.testing.assert_array_equal(client.get_tensor("chunks"), array)
    blob = bytes(range(256)) * 9
    client.put_bytes("chunks.b", blob)
    assert client.get_bytes("chunks.b") == blob


@pytest.mark.parametrize("view", ["slice", "frombuffer", "reshape"])
def test_views_are_stored_as_they_are(client, sr, view):
    """Views (``base`` set) go to SmartRedis's binding without its Python-side copy: the bytes must still be right."""
    base = np.random.default_rng(7).standard_normal(3000).astype(np.float32)
    array = {"slice": base[100:2100], "frombuffer": np.frombuffer(base.tobytes(), np.float32),
             "reshape": base.reshape(30, 100)}[view]
    assert array.base is not None and array.flags.c_contiguous
    client.put_tensor(f"view.{view}", array)
    got = sr.get_tensor(f"view.{view}")
    assert got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def test_bytes_are_uint8_tensors(client, sr):
    blob = np.random.default_rng(6).bytes(1_000_003)
    client.put_bytes("blob", memoryview(blob))
    assert sr.tensor_exists("blob") and client.get_bytes("blob") == blob
    client.put_bytes("blob.empty", b"")
    assert client.get_bytes("blob.empty") == b""


def test_overwrite_switches_representation(client):
    client.put_tensor("sw", np.ones(3, np.float16))  # dataset
    client.put_tensor("sw", np.ones(2, np.int8))  # plain tensor
    np.testing.assert_array_equal(client.get_tensor("sw"), np.ones(2, np.int8))
    client.put_tensor("sw", np.zeros(4, np.bool_))  # dataset again: the plain tensor must not shadow it
    np.testing.assert_array_equal(client.get_tensor("sw"), np.zeros(4, np.bool_))
    client.delete("sw")
    assert not client.exists("sw") and client.get_tensor("sw") is None


def test_missing_keys_are_none_and_silent(client, capfd):
    assert client.get_tensor("missing.t") is None
    assert client.get_bytes("missing.b") is None
    assert client.get_tensor("missing.t", out=np.empty(3)) is None
    assert not client.exists("missing.t")
    client.delete("missing.t")
    assert capfd.readouterr().out == ""  # SmartRedis logs nothing to stdout


def test_get_into_out(client):
    array = np.arange(20, dtype=np.float64).reshape(4, 5)
    client.put_tensor("out", array)
    out = np.empty_like(array)
    assert client.get_tensor("out", out=out) is out
    np.testing.assert_array_equal(out, array)
    with pytest.raises(ValueError, match="float64"):
        client.get_tensor("out", out=np.empty((5, 4)))


def test_poll_sees_late_values_and_keeps_its_deadline(client):
    timer = threading.Timer(0.2, client.put_tensor, ("late", np.ones(2)))
    timer.start()
    t0 = time.monotonic()
    try:
        assert client.poll("late", timeout_s=5.0)
    finally:
        timer.join()
    assert 0.15 < time.monotonic() - t0 < 1.0
    client.put_tensor("late.ds", np.ones(2, np.float16))
    assert client.poll("late.ds", timeout_s=1.0)  # a dataset-stored value is seen too
    t0 = time.monotonic()
    assert not client.poll("never", timeout_s=0.2)
    assert 0.2 <= time.monotonic() - t0 < 0.6


def test_clean_counts_plain_and_dataset_values(client):
    for i in range(3):
        client.put_tensor(f"cl.{i}", np.array([i]))
    client.put_tensor("cl.ds", np.array([True]))
    client.put_bytes("other", b"x")
    assert client.clean("cl.") == 4
    assert not client.exists("cl.0") and not client.exists("cl.ds") and client.exists("other")


def test_full_server_raises_staging_full(client, raw):
    limit = raw.config_get("maxmemory")["maxmemory"]
    raw.config_set("maxmemory", raw.info("memory")["used_memory"] + 2**20)
    try:
        with pytest.raises(StagingFullError, match="memory limit"):
            client.put_tensor("too.big", np.zeros(2**21, np.float32))
    finally:
        raw.config_set("maxmemory", limit)


# ---------------------------------------------------------------- lifecycle
@pytest.mark.parametrize("deployment", ["clustered", "colocated"])
def test_nothing_outlives_stop(tmp_path, deployment):
    if (reason := _reason()) is not None:
        pytest.skip(reason)
    srv = backend.make_server("smartsim", load_profile("local"), tmp_path, deployment=deployment)
    srv.start()
    try:
        assert srv.socket is not None and srv.socket.is_socket() and srv.address == f"unix://{srv.socket}"
        assert srv.processes() and tcp_listening_ports(srv.processes()) == set()
        assert backend.our_processes(0) == []  # port 0 names no DB (never another run's entrypoint)
        assert srv.exp_path.is_dir() and srv.exp_path.is_relative_to(tmp_path)
        lock = backend._entrypoint_lock(srv.processes())  # a colocated DB's entrypoint holds one in the temp dir
        assert (lock is not None and lock.is_file()) == (deployment == "colocated")
        c = backend.connect("smartsim", srv.address)
        c.put_tensor("x", np.arange(3))
        np.testing.assert_array_equal(c.get_tensor("x"), np.arange(3))
        c.close()
    finally:
        srv.stop()
    assert_gone(srv)  # the socket and its config too
    assert lock is None or not lock.exists()
    srv.stop()  # twice is harmless


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_failed_or_interrupted_start_leaves_nothing(tmp_path, monkeypatch, error):
    if (reason := _reason()) is not None:
        pytest.skip(reason)
    launched = backend.SmartSimServer._start_orchestrator

    def launch_then_fail(self):
        launched(self)
        raise error("after the DB was launched")

    monkeypatch.setattr(backend.SmartSimServer, "_start_orchestrator", launch_then_fail)
    srv = backend.make_server("smartsim", load_profile("local"), tmp_path)
    with pytest.raises(error):
        srv.start()
    assert srv.socket is not None and not srv.processes()
    assert_gone(srv)


def test_a_db_that_answers_late_still_starts(tmp_path, monkeypatch):
    """SmartSim checks a launched DB with one PING; a DB whose socket opens after it must still start."""
    if (reason := _reason()) is not None:
        pytest.skip(reason)
    real, asked = backend._answers, []

    def late(address: str) -> bool:  # the first five PINGs (0.25 s at the start) go unanswered
        asked.append(address)
        return len(asked) > 5 and real(address)

    monkeypatch.setattr(backend, "_answers", late)
    srv = backend.make_server("smartsim", load_profile("local"), tmp_path)
    srv.start()
    try:
        assert len(asked) > 5 and real(srv.address)
    finally:
        srv.stop()
    assert_gone(srv)


def test_local_launcher_refuses_shards_clearly(tmp_path):
    if (reason := _reason()) is not None:
        pytest.skip(reason)
    srv = backend.make_server("smartsim", load_profile("local"), tmp_path, db_nodes=3)
    with pytest.raises(BackendUnavailableError, match="single-shard"):
        srv.start()
    assert_gone(srv)


def test_detail_names_the_stack(server):
    import smartsim

    detail = server.detail()
    assert detail["redisai"] in ("redisai", "stand-in")
    assert detail["smartsim"] == smartsim.__version__ and detail["smartredis"] == "0.6.1"
    assert int(detail["redis_server"].split(".")[0]) >= 7
    assert (detail["launcher"], detail["interface"], detail["deployment"]) == ("local", "lo", "clustered")


# ---------------------------------------------------------------- platform traps
def test_redis_binaries_are_copies_smartsim_can_run(server):
    from smartsim._core.config import CONFIG

    exe = Path(CONFIG.database_exe)  # SmartSim resolves symlinks: the file must itself be redis-server
    assert exe == backend.core_dir() / "bin" / "redis-server" and exe.is_file() and not exe.is_symlink()
    assert "Redis server v=" in subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout
    assert Path(CONFIG.database_cli).name == "redis-cli"


def test_loaded_module_is_the_one_reported(server, raw):
    names = {m[b"name"] for m in raw.execute_command("MODULE", "LIST")}
    assert (b"sstensor" in names) == (server.detail()["redisai"] == "stand-in")
    assert os.environ["RAI_PATH"] == server.detail()["rai_path"]


def test_rai_path_prefers_a_real_redisai(tmp_path, monkeypatch, server):
    fake = tmp_path / "redisai.so"
    fake.write_bytes(b"\x7fELF")
    monkeypatch.setenv("RAI_PATH", str(fake))
    assert backend.redisai_path() == fake
    monkeypatch.setenv("RAI_PATH", str(backend.SSTENSOR_SO))  # the stand-in is never taken for RedisAI
    assert backend.redisai_path() in (None, backend.core_dir() / "lib" / "redisai.so")


def test_telemetry_is_off(server):
    assert os.environ["SMARTSIM_FLAG_TELEMETRY"] == "0" and server.detail()["telemetry"] is False
    assert not processes_mentioning("telemetrymonitor")


def test_numpy_below_2(monkeypatch):
    assert int(np.__version__.split(".")[0]) < 2
    monkeypatch.setattr(np, "__version__", "2.1.0")
    with pytest.raises(BackendUnavailableError, match="numpy < 2"):
        backend.check_available()


@pytest.mark.parametrize("module", ["smartsim", "smartredis"])
def test_missing_package_gives_the_install_hint(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # the next import raises ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install -e '\.\[smartsim\]'"):
        backend.check_available()
    assert "pip install -e '.[smartsim]'" in str(registry.unavailable_reason("smartsim"))


def test_missing_redis_server_gives_the_apt_hint(monkeypatch):
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "redis-server" else which(name, *a, **k))
    with pytest.raises(BackendUnavailableError, match="apt-get install redis-server"):
        backend.check_available()


# ---------------------------------------------------------------- shared machine (issue 14, point 4)
OTHER_UID = 65534  # nobody: another user on the node


def redis_cli(*target: str, uid: int | None = None) -> str:
    """``redis-cli TARGET ping``, as this user or (root only) as ``uid``: its answer or its error."""
    as_user = {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
    done = subprocess.run([shutil.which("redis-cli") or "redis-cli", *target, "ping"], capture_output=True, text=True,
                          timeout=30, **as_user)
    return (done.stdout + done.stderr).strip()


def test_db_has_no_tcp_port_and_a_private_socket(server, raw):
    with socket.socket() as control:  # the /proc reading sees a listening socket of a process
        control.bind(("127.0.0.1", 0))
        control.listen()
        assert control.getsockname()[1] in tcp_listening_ports([os.getpid()])
    pids = server.processes()
    assert any("redis-server" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace") for pid in pids), pids
    assert tcp_listening_ports(pids) == set()
    assert raw.config_get("port") == {"port": "0"} and raw.config_get("unixsocketperm") == {"unixsocketperm": "700"}
    sock, folder = os.stat(server.socket), os.stat(server.socket.parent)
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o700 and sock.st_uid == os.geteuid()
    assert stat.S_IMODE(folder.st_mode) == 0o700 and folder.st_uid == os.geteuid()
    assert server.socket.parent == Path(tempfile.gettempdir()) / f"simai-smartsim-{getpass.getuser()}"
    detail = server.detail()
    assert (detail["transport"], detail["socket"], detail["tcp_port"], detail["bind"]) == ("unix", str(server.socket),
                                                                                             0, None)
    assert (detail["socket_mode"], detail["socket_dir_mode"], detail["socket_owner_uid"]) == ("0700", "0700",
                                                                                              os.geteuid())
    assert detail["auth"] is False and "SmartRedis 0.6.1 cannot send" in detail["auth_note"]
    assert "no TCP port" in detail["access"] and detail["protected_mode"] is True


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
def test_another_user_on_the_node_cannot_reach_the_db(server):
    assert redis_cli("-s", str(server.socket)) == "PONG"  # the probe gets in as the DB's own user
    ports = tcp_listening_ports(server.processes()) | ({server.port} - {0})
    for target in [("-s", str(server.socket)), *(("-h", "127.0.0.1", "-p", str(port)) for port in ports)]:
        answer = redis_cli(*target, uid=OTHER_UID)
        assert "PONG" not in answer, f"another user reached the DB via {target}: {answer}"
    assert "Permission denied" in redis_cli("-s", str(server.socket), uid=OTHER_UID)
    server.socket.parent.chmod(0o755)  # with the directory open, the socket's own mode still holds
    try:
        assert "Permission denied" in redis_cli("-s", str(server.socket), uid=OTHER_UID)
    finally:
        server.socket.parent.chmod(0o700)


@pytest.mark.parametrize("trap", ["another_users_dir", "symlink", "group_writable"])
def test_socket_directory_refuses_what_another_user_could_have_made(tmp_path, monkeypatch, trap):
    if (reason := _reason()) is not None:
        pytest.skip(reason)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    planted, elsewhere = tmp_path / f"simai-smartsim-{getpass.getuser()}", tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    if trap == "symlink":
        planted.symlink_to(elsewhere)
    else:
        planted.mkdir(mode=0o700)
        if trap == "group_writable":
            planted.chmod(0o770)
        elif os.geteuid() == 0:
            os.chown(planted, OTHER_UID, OTHER_UID)
        else:
            pytest.skip("making a directory of another user needs root")
    srv = backend.make_server("smartsim", load_profile("local"), tmp_path / "run")
    try:
        with pytest.raises(NotPrivateError, match=r"simai-smartsim-.* must be a private directory of yours"):
            srv.start()
    finally:
        srv.stop()  # a start that wrongly succeeded leaves nothing running
    assert srv.socket is None and not srv.processes()
    assert not any(elsewhere.iterdir()) and (trap == "symlink" or not any(planted.iterdir()))


def test_socket_path_too_long_for_the_kernel_is_refused(tmp_path, monkeypatch):
    if (reason := _reason()) is not None:
        pytest.skip(reason)
    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    srv = backend.make_server("smartsim", load_profile("local"), tmp_path / "run")
    try:
        with pytest.raises(BackendUnavailableError, match=r"longer than 100 bytes.*set TMPDIR"):
            srv.start()
    finally:
        srv.stop()
    assert not srv.processes()


def test_smartredis_has_no_way_to_send_a_password(tmp_path, monkeypatch):
    """Why ``auth`` is false: against a server that needs a password, SmartRedis 0.6.1 is refused, with the
    password in the address too. When a SmartRedis release can send one, this fails: turn auth on then."""
    from smartredis import Client
    from smartredis.error import RedisReplyError

    if (reason := registry.unavailable_reason("redis")) is not None:
        pytest.skip(reason)
    monkeypatch.setenv("SR_CONN_TIMEOUT", "1")
    with registry.make_server("redis", load_profile("local"), tmp_path) as srv:
        host_port = f"{srv.host}:{srv.port}"
        for address in (host_port, f":{srv.password}@{host_port}", f"tcp://:{srv.password}@{host_port}"):
            with pytest.raises((RedisReplyError, RuntimeError)) as refused:
                Client(address=address, cluster=False).put_tensor("x", np.arange(3))
            message = str(refused.value)  # refused by the server, or the address refused before any connection
            assert "NOAUTH Authentication required" in message or "invalid because of character @" in message, message


def test_a_db_off_loopback_warns_that_it_has_no_password(tmp_path):
    srv = backend.SmartSimServer(tmp_path, interface="hsn0")  # as the Polaris and Aurora profiles ask
    assert srv.transport == "tcp"  # other nodes' ranks reach it: no Unix socket
    srv._address = "10.1.2.3:6780"
    with pytest.warns(SharedMachineWarning, match=r"10\.1\.2\.3:6780 .*no password.*anyone who can reach"):
        srv._guard_access()
    detail = srv.detail()
    assert detail["auth"] is False and detail["protected_mode"] is False
    assert (detail["transport"], detail["tcp_port"], detail["bind"], detail["socket"]) == ("tcp", 6780, "10.1.2.3",
                                                                                          None)
    assert "anyone who can reach the address" in detail["access"]
    with warnings.catch_warnings(record=True) as seen:  # shown on every such run, but never fails one
        warnings.simplefilter("error")
        srv._guard_access()
    assert [w.category for w in seen] == [SharedMachineWarning]
