"""Redis backend specifics: large-value chunking, a full store, and the server's lifecycle."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from simai_core.errors import StagingFullError
from simai_core.profiles import load_profile
from simai_core.staging import redis as redis_backend
from simai_core.staging.registry import unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason("redis") is not None, reason=str(unavailable_reason("redis")))


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.fixture
def server(tmp_path):
    with redis_backend.RedisServer(tmp_path, maxmemory_bytes=64 * 2**20) as srv:
        yield srv


def test_values_past_the_chunk_size_are_split(server, monkeypatch):
    monkeypatch.setattr(redis_backend, "CHUNK_BYTES", 1000)
    client = redis_backend.RedisClient(server.address)
    array = np.arange(1001, dtype=np.float64)  # 8008 bytes: 9 chunks
    client.put_tensor("big", array)
    np.testing.assert_array_equal(client.get_tensor("big"), array)
    out = np.empty_like(array)
    np.testing.assert_array_equal(client.get_tensor("big", out=out), array)
    client.delete("big")
    assert client.command("DBSIZE") == 0
    client.close()


def test_a_full_store_raises_a_clear_error(server):
    client = redis_backend.RedisClient(server.address)
    block = np.zeros(16 * 2**20, np.uint8)
    with pytest.raises(StagingFullError, match=r"staging\.memory_bytes"):
        for i in range(10):
            client.put_tensor(f"fill.{i}", block)
    client.close()


def test_server_stops_when_the_body_fails(tmp_path):
    srv = redis_backend.RedisServer(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), srv:
        pid, port = srv.pid, srv.port
        raise RuntimeError("boom")
    assert not pid_alive(pid)
    assert port_is_free(port)
    srv.stop()  # twice is harmless


def test_server_dies_with_a_killed_owner(tmp_path):
    """A SIGKILLed pytest cannot run its teardown; the kernel still ends its server."""
    script = (
        "import sys, time; from pathlib import Path; from simai_core.staging.redis import RedisServer\n"
        f"s = RedisServer(Path({str(tmp_path)!r})); s.start(); print(s.pid, s.port, flush=True); time.sleep(60)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    with owner.stdout:
        pid, port = map(int, owner.stdout.readline().split())
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)
    assert port_is_free(port)


def test_server_refuses_clients_without_the_password(server):
    import redis

    stranger = redis.Redis(host=server.host, port=server.port)
    with pytest.raises(redis.AuthenticationError):
        stranger.set("k", "v")
    stranger.close()


def test_make_server_follows_the_profile(tmp_path):
    server = redis_backend.make_server("redis", load_profile("local"), tmp_path)
    assert server.host == "127.0.0.1"
    assert server.maxmemory_bytes == load_profile("local").staging.memory_bytes
