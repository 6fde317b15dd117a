"""The plain-RESP path: every byte round-trips, errors are clear, and nothing waits forever."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from simai_core.staging import redis as redis_backend
from simai_core.staging.registry import unavailable_reason
from simai_core.staging.resp import RedisPyRaw, RespConnection, RespError, RespRaw

pytestmark = pytest.mark.skipif(unavailable_reason("redis") is not None, reason=str(unavailable_reason("redis")))

# Around the reader's 256 KiB receive size and the socket buffers, and not multiples of either.
SIZES = [0, 1, 16 * 1024 + 1, 256 * 1024 - 3, 256 * 1024 + 7, 3 * 2**20 + 5]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with redis_backend.RedisServer(tmp_path_factory.mktemp("resp"), maxmemory_bytes=256 * 2**20) as srv:
        yield srv


@pytest.mark.parametrize("reference", [RespRaw, RedisPyRaw])
@pytest.mark.parametrize("nbytes", SIZES)
def test_raw_paths_round_trip_every_byte(server, reference, nbytes):
    data = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    out = np.zeros_like(data)
    ref = reference(server.address)
    try:
        ref.put("rt", memoryview(data))
        ref.get("rt", memoryview(out))
    finally:
        ref.close()
    assert np.array_equal(out, data)


def test_raw_and_redispy_read_each_others_values(server):
    data = np.arange(100_003, dtype=np.uint8)
    out = np.zeros_like(data)
    fast, plain = RespRaw(server.address), RedisPyRaw(server.address)
    try:
        plain.put("x", memoryview(data))
        fast.get("x", memoryview(out))
        assert np.array_equal(out, data)
        out[:] = 0
        fast.put("y", memoryview(data[::-1].copy()))
        plain.get("y", memoryview(out))
        assert np.array_equal(out, data[::-1])
    finally:
        fast.close()
        plain.close()


def test_a_missing_key_or_a_wrong_size_is_an_error_and_the_connection_stays_usable(server):
    ref = RespRaw(server.address)
    try:
        with pytest.raises(KeyError):
            ref.get("nothing-here", memoryview(bytearray(4)))
        ref.put("five", memoryview(b"12345"))
        with pytest.raises(ValueError, match="holds 5 bytes"):
            ref.get("five", memoryview(bytearray(4)))
        out = bytearray(5)
        ref.get("five", memoryview(out))  # the skipped reply left the stream in step
        assert out == b"12345"
    finally:
        ref.close()


def test_a_wrong_password_is_refused_clearly(server):
    wrong = server.address.replace(server.password, "not-the-password")
    with pytest.raises(ConnectionError, match="refused the password"):
        RespConnection(wrong)


def test_an_error_reply_raises_with_the_servers_words(server):
    conn = RespConnection(server.address)
    try:
        with pytest.raises(RespError, match="unknown command"):
            conn.command("NOSUCHCOMMAND")
        assert conn.command("PING") == "PONG"
    finally:
        conn.close()


def test_a_server_that_goes_away_is_a_clear_error_not_a_hang(tmp_path):
    with redis_backend.RedisServer(tmp_path) as srv:
        conn = RespConnection(srv.address, timeout_s=10)
        assert conn.command("PING") == "PONG"
    try:  # stopped: the next command fails at once, well before the socket's deadline
        with pytest.raises(ConnectionError, match=r"(Lost the|closed the connection).*|.*redis-server at .* closed"):
            conn.command("SET", "k", memoryview(bytes(2**20)))
            conn.command("PING")
    finally:
        conn.close()


def test_a_server_that_does_not_answer_hits_the_deadline(server):
    conn = RespConnection(server.address, timeout_s=0.5)
    try:
        with pytest.raises(TimeoutError, match=r"did not answer within 0.5 s"):
            conn.command("BLPOP", "never-pushed", 5)  # the server holds the reply for 5 s
    finally:
        conn.close()


def test_a_chunked_read_never_mixes_two_writes(server, monkeypatch):
    monkeypatch.setattr(redis_backend, "CHUNK_BYTES", 4096)
    writer, reader = redis_backend.RedisClient(server.address), redis_backend.RedisClient(server.address)
    values = [np.full(4096 * 5 + 11, v, np.uint8) for v in (1, 2)]
    writer.put_tensor("torn", values[0])
    stop = threading.Event()

    def rewrite() -> None:
        i = 0
        while not stop.is_set():
            writer.put_tensor("torn", values[i % 2])
            i += 1

    thread = threading.Thread(target=rewrite)
    thread.start()
    try:
        seen = set()
        for _ in range(300):
            try:
                got = reader.get_tensor("torn")
            except RuntimeError as exc:  # rewritten during every try: allowed, but must say so
                assert "rewritten" in str(exc)
                continue
            assert got is not None
            assert len(np.unique(got)) == 1, "a read mixed chunks of two writes"
            seen.add(int(got[0]))
    finally:
        stop.set()
        thread.join(timeout=30)
        writer.close()
        reader.close()
    assert seen <= {1, 2} and seen
