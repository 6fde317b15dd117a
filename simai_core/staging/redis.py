"""Redis backend: a real redis-server started for the run, reached with redis-py + hiredis.

A value is a plain string key holding the data (so the server stores it as SET would, without a
copy), a metadata key beside it (dtype, shape, chunk count) and, past Redis's 512 MB bulk-string
limit, further chunk keys. One MSET writes them all atomically and one MGET reads them, so a put
or a get is one round trip. Blobs use the same layout without a shape.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import numpy as np

from simai_core.errors import BackendUnavailableError, StagingFullError
from simai_core.net import free_port, interface_address
from simai_core.profiles import MachineProfile
from simai_core.staging.base import ArrayLike, RawReference, StagingClient, StagingServer, as_numpy, check_out

CHUNK_BYTES = 256 * 2**20  # well under proto-max-bulk-len (512 MB)
_START_TIMEOUT_S = 20.0


def check_available(name: str) -> None:
    """Raise when redis-py or the redis-server binary is missing."""
    import redis  # noqa: F401  (ImportError is turned into an install hint by the registry)

    if shutil.which("redis-server") is None:
        raise BackendUnavailableError(
            "Backend 'redis' needs the redis-server binary: run `make setup` (installs Debian's redis-server as root) "
            "or `apt-get install redis-server`, or put a redis-server >= 6 on PATH"
        )


def make_server(name: str, profile: MachineProfile, workdir: Path) -> RedisServer:
    """A redis-server for this profile: its interface, its memory limit."""
    host = interface_address(profile.staging.network_interface)
    return RedisServer(workdir, host=host, maxmemory_bytes=profile.staging.memory_bytes)


def connect(name: str, address: str) -> RedisClient:
    """A client for the server at ``address`` (``redis://:password@host:port``)."""
    return RedisClient(address)


def raw_reference(name: str, address: str) -> RawReference:
    """redis-py SET/GET of the raw buffer on the same server."""
    return RedisRaw(address)


def die_with_parent() -> None:
    """In a child before exec: ask Linux to send SIGTERM when the parent dies (PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class RedisServer(StagingServer):
    """A private redis-server: random port, password, protected mode, no persistence."""

    backend = "redis"

    def __init__(self, workdir: Path, host: str = "127.0.0.1", maxmemory_bytes: int = 4 * 2**30) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self.maxmemory_bytes = maxmemory_bytes
        self.password = secrets.token_hex(16)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.host)
        args = {
            "port": self.port, "bind": self.host, "requirepass": self.password, "protected-mode": "yes",
            "save": '""', "appendonly": "no", "dir": str(self.workdir), "maxmemory": self.maxmemory_bytes,
            "maxmemory-policy": "noeviction", "maxclients": 10000, "daemonize": "no", "logfile": '""',
        }
        config = self.workdir / f"redis-{self.port}.conf"
        config.write_text("".join(f"{k} {v}\n" for k, v in args.items()))
        # Own session: a Ctrl-C to pytest does not reach the server before stop() runs; and the
        # kernel ends the server if this process dies without running stop() (SIGKILL, OOM).
        self._proc = subprocess.Popen(["redis-server", str(config)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, start_new_session=True, preexec_fn=die_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        import redis

        deadline = time.monotonic() + _START_TIMEOUT_S
        client = redis.Redis.from_url(self.address)
        try:
            while True:
                if self._proc is not None and self._proc.poll() is not None:
                    err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                    raise RuntimeError(f"redis-server exited at start (code {self._proc.returncode}): {err.strip()}")
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"redis-server did not answer on {self.host}:{self.port} "
                                           f"within {_START_TIMEOUT_S:g} s") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc else None

    def detail(self) -> dict[str, Any]:
        version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
        import redis

        return {
            "server": next((w.split("=")[1] for w in version if w.startswith("v=")), "unknown"),
            "client": f"redis-py {redis.__version__}",
            "hiredis": _hiredis_version(),
            "host": self.host,
            "maxmemory_bytes": self.maxmemory_bytes,
            "transport": "tcp",
        }


def _hiredis_version() -> str | None:
    try:
        import hiredis
    except ImportError:
        return None
    return str(hiredis.__version__)


class RedisClient(StagingClient):
    """Staging client over one redis-py connection."""

    backend = "redis"

    def __init__(self, address: str) -> None:
        import redis

        url = urlsplit(address)
        self._redis = redis.Redis(host=url.hostname or "127.0.0.1", port=url.port or 6379, password=url.password,
                                  socket_timeout=120, socket_connect_timeout=10, single_connection_client=True)

    def put_tensor(self, key: str, array: ArrayLike) -> None:
        arr = as_numpy(array)
        self._hset(key, {"dtype": arr.dtype.str, "shape": list(arr.shape)}, arr.data.cast("B"))

    def get_tensor(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        found = self._hget(key)
        if found is None:
            return None
        meta, chunks = found
        dtype, shape = np.dtype(meta["dtype"]), tuple(meta["shape"])
        if out is not None:
            check_out(key, out, dtype, shape)
            flat = out.reshape(-1).view(np.uint8)
            offset = 0
            for chunk in chunks:
                flat[offset:offset + len(chunk)] = np.frombuffer(chunk, np.uint8)
                offset += len(chunk)
            return out
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return np.frombuffer(data, dtype).reshape(shape)

    def put_bytes(self, key: str, data: bytes | memoryview) -> None:
        self._hset(key, {"dtype": None, "shape": None}, memoryview(data).cast("B"))

    def get_bytes(self, key: str) -> bytes | None:
        found = self._hget(key)
        if found is None:
            return None
        chunks = found[1]
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def exists(self, key: str) -> bool:
        return bool(self._redis.exists(key))

    def delete(self, key: str) -> None:
        meta_raw = self._redis.get(_meta_key(key))
        nchunks = json.loads(meta_raw)["nchunks"] if meta_raw else 1
        self._redis.unlink(_meta_key(key), *(_chunk_key(key, i) for i in range(nchunks)))

    def clean(self, prefix: str) -> int:
        keys = list(self._redis.scan_iter(match=glob_escape(prefix) + "*", count=1000))
        if keys:
            self._redis.unlink(*keys)
        return sum(1 for k in keys if b"\x1f" not in k)  # values, not their meta and chunk keys

    def close(self) -> None:
        self._redis.close()

    def _hset(self, key: str, meta: dict[str, Any], payload: memoryview) -> None:
        from redis.exceptions import OutOfMemoryError

        nchunks = max(1, -(-payload.nbytes // CHUNK_BYTES))
        meta["nchunks"] = nchunks
        pairs: list[Any] = [_meta_key(key), json.dumps(meta)]
        for i in range(nchunks):
            pairs += [_chunk_key(key, i), payload[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES]]
        try:
            # Readers follow `meta`, so extra chunks of an older, larger (> CHUNK_BYTES) value are
            # never read; they stay until clean() of their prefix.
            self._redis.execute_command("MSET", *pairs)
        except OutOfMemoryError:
            raise StagingFullError(
                f"Redis refused {key!r} ({payload.nbytes} bytes): the server's memory limit is full. "
                "Delete old keys, or raise staging.memory_bytes in the machine profile"
            ) from None

    def _hget(self, key: str) -> tuple[dict[str, Any], list[bytes]] | None:
        meta_raw, first = cast("list[Any]", self._redis.mget([_meta_key(key), key]))  # bytes: no decode_responses
        if meta_raw is None or first is None:
            return None
        meta = json.loads(meta_raw)
        chunks: list[bytes] = [first]
        if meta["nchunks"] > 1:
            rest = cast("list[bytes | None]", self._redis.mget([_chunk_key(key, i) for i in range(1, meta["nchunks"])]))
            if any(c is None for c in rest):
                return None  # deleted while we read it
            chunks += [c for c in rest if c is not None]
        return meta, chunks


def _meta_key(key: str) -> str:
    return f"{key}\x1fmeta"


def _chunk_key(key: str, i: int) -> str:
    return key if i == 0 else f"{key}\x1fc{i}"


def glob_escape(prefix: str) -> str:
    """``prefix`` with Redis glob characters escaped, for SCAN MATCH."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in prefix)


class RedisRaw(RawReference):
    """SET and GET of the raw buffer through redis-py, as an application without a staging layer would."""

    description = "redis-py SET/GET of the raw buffer on the same server"

    def __init__(self, address: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(address, socket_timeout=120, single_connection_client=True)

    def put(self, key: str, data: memoryview) -> None:
        self._redis.set(key, data)  # type: ignore[arg-type]  # redis-py sends buffers as they are

    def get(self, key: str, out: memoryview) -> None:
        if self._redis.get(key) is None:
            raise KeyError(key)

    def close(self) -> None:
        self._redis.close()
