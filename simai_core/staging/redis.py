"""Redis backend: a real redis-server started for the run, reached in plain RESP (:mod:`.resp`).

A value is a plain string key holding the data (so the server stores it as SET would, without a
copy), a metadata key beside it (dtype, shape, size, chunk count) and, past 256 MiB, further chunk
keys (Redis's bulk strings stop at 512 MB). One MSET writes them all atomically. One MGET reads
the metadata and the first chunk, straight into the caller's array, so a put or a get is one round
trip; a value past 256 MiB takes a second MGET that re-reads the metadata with the other chunks,
and the read is retried when a writer came in between. Blobs use the same layout without a shape.

With ``staging.shards: N`` (N > 1) the server is a Redis Cluster of N redis-server processes
(:class:`RedisClusterServer`, no replicas, the 16384 slots split evenly) and the client sends
each value to the shard that owns its slot, on one plain-RESP connection per shard. A value's
keys are named ``{key}``, ``{key}<US>meta``, ...: the braces make the whole key the hash tag,
so data, metadata and chunks share a slot and one MSET or MGET still moves them together.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from simai_core.errors import BackendUnavailableError, StagingFullError
from simai_core.net import free_port, interface_address
from simai_core.private import write_private
from simai_core.profiles import MachineProfile
from simai_core.staging.base import ArrayLike, RawReference, StagingClient, StagingServer, as_numpy, check_out
from simai_core.staging.resp import (
    CLUSTER_SCHEME,
    SLOTS,
    RedisPyRaw,
    RespConnection,
    RespError,
    RespRaw,
    Route,
    expect_ok,
    key_slot,
)

CHUNK_BYTES = 256 * 2**20  # well under proto-max-bulk-len (512 MB)
_CONSISTENT_READ_TRIES = 5
_START_TIMEOUT_S = 20.0


def check_available(name: str) -> None:
    """Raise when redis-py or the redis-server binary is missing."""
    import redis  # noqa: F401  (ImportError is turned into an install hint by the registry)

    if shutil.which("redis-server") is None:
        raise BackendUnavailableError(
            "Backend 'redis' needs the redis-server binary: run `make setup` (installs Debian's redis-server as root) "
            "or `apt-get install redis-server`, or put a redis-server >= 6 on PATH"
        )


def make_server(name: str, profile: MachineProfile, workdir: Path) -> RedisServer | RedisClusterServer:
    """A redis-server for this profile (its interface, its memory limit), or a cluster of ``staging.shards``."""
    host = interface_address(profile.staging.network_interface)
    if profile.staging.shards > 1:
        return RedisClusterServer(workdir, profile.staging.shards, host=host,
                                  maxmemory_bytes=profile.staging.memory_bytes)
    return RedisServer(workdir, host=host, maxmemory_bytes=profile.staging.memory_bytes)


def connect(name: str, address: str) -> RedisClient:
    """A client for the server at ``address`` (``redis://:password@host:port``)."""
    return RedisClient(address)


def raw_reference(name: str, address: str) -> RawReference:
    """Plain RESP SET/GET of the raw buffer on the same server: the protocol's limit from Python."""
    return RespRaw(address)


def second_references(name: str, address: str) -> dict[str, RawReference]:
    """Further named paths the micro benchmark reports ratios against: what redis-py (+ hiredis) gets."""
    return {"redispy": RedisPyRaw(address)}


def die_with_parent() -> None:
    """In a child before exec: ask Linux to send SIGTERM when the parent dies (PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class RedisServer(StagingServer):
    """A private redis-server: random port, password, protected mode, no persistence."""

    backend = "redis"

    def __init__(self, workdir: Path, host: str = "127.0.0.1", maxmemory_bytes: int = 4 * 2**30,
                 password: str | None = None, cluster: bool = False) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self.maxmemory_bytes = maxmemory_bytes
        self.password = password or secrets.token_hex(16)
        self.cluster = cluster  # a Redis Cluster node (cluster mode, its own bus port)
        self.port = 0
        self.bus_port = 0
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
        if self.cluster:
            self.bus_port = free_port(self.host)
            args |= {"cluster-enabled": "yes", "cluster-port": self.bus_port, "masterauth": self.password,
                     "cluster-config-file": self._nodes_file.name, "cluster-node-timeout": 5000,
                     "cluster-require-full-coverage": "yes"}
        config = self.workdir / f"redis-{self.port}.conf"
        write_private(config, "".join(f"{k} {v}\n" for k, v in args.items()))  # it holds the password
        # Own session: a Ctrl-C to pytest does not reach the server before stop() runs; and the
        # kernel ends the server if this process dies without running stop() (SIGKILL, OOM).
        self._proc = subprocess.Popen(["redis-server", str(config)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, start_new_session=True, preexec_fn=die_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        finally:
            config.unlink(missing_ok=True)  # read at start; the password need not stay on disk

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

    @property
    def _nodes_file(self) -> Path:
        """Where a cluster node keeps its view of the cluster (removed at stop)."""
        return self.workdir / f"nodes-{self.port}.conf"

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
        if self.cluster:
            self._nodes_file.unlink(missing_ok=True)  # the node may have rewritten it while stopping

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc else None

    def detail(self) -> dict[str, Any]:
        version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
        import redis

        return {
            "server": next((w.split("=")[1] for w in version if w.startswith("v=")), "unknown"),
            "client": "plain RESP (simai_core.staging.resp)",
            "redispy_reference": f"redis-py {redis.__version__}",
            "hiredis": _hiredis_version(),
            "host": self.host,
            "maxmemory_bytes": self.maxmemory_bytes,
            "transport": "tcp",
            "shards": 1,
        }


class RedisClusterServer(StagingServer):
    """A Redis Cluster of ``shards`` private redis-servers (one password, no replicas), formed and checked at start.

    Each node is a :class:`RedisServer` in cluster mode (its config, password and
    ``masterauth`` included, written 0600 and deleted once read). The slots are split
    evenly (``CLUSTER ADDSLOTSRANGE``) and the nodes introduced to the first (``CLUSTER
    MEET``); start returns when every node reports the cluster ``ok`` with all of them.
    """

    backend = "redis"

    def __init__(self, workdir: Path, shards: int, host: str = "127.0.0.1", maxmemory_bytes: int = 4 * 2**30) -> None:
        if shards < 2:
            raise ValueError(f"a cluster needs at least 2 shards, got {shards}: use RedisServer for one")
        self.password = secrets.token_hex(16)
        self.maxmemory_bytes = maxmemory_bytes
        self.nodes = [RedisServer(workdir, host, maxmemory_bytes // shards, self.password, cluster=True)
                      for _ in range(shards)]

    @property
    def address(self) -> str:
        first = self.nodes[0]
        return f"{CLUSTER_SCHEME}://:{self.password}@{first.host}:{first.port}"

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.start()
            self._form()
        except BaseException:
            self.stop()
            raise

    def _form(self) -> None:
        conns = [RespConnection(node.address, timeout_s=_START_TIMEOUT_S) for node in self.nodes]
        try:
            for conn, (first, last) in zip(conns, slot_ranges(len(conns)), strict=True):
                expect_ok(conn.command("CLUSTER", "ADDSLOTSRANGE", first, last), "CLUSTER ADDSLOTSRANGE")
            for node in self.nodes[1:]:
                expect_ok(conns[0].command("CLUSTER", "MEET", node.host, node.port, node.bus_port), "CLUSTER MEET")
            deadline = time.monotonic() + _START_TIMEOUT_S
            while not all(_cluster_ready(conn, len(conns)) for conn in conns):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the Redis Cluster of {len(conns)} shards did not agree on its slots within "
                                       f"{_START_TIMEOUT_S:g} s")
                time.sleep(0.05)
        finally:
            for conn in conns:
                conn.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    @property
    def pids(self) -> list[int | None]:
        """The nodes' process ids while they run."""
        return [node.pid for node in self.nodes]

    def detail(self) -> dict[str, Any]:
        return self.nodes[0].detail() | {"shards": len(self.nodes), "maxmemory_bytes": self.maxmemory_bytes,
                                         "topology": "Redis Cluster, no replicas, slots split evenly"}


def slot_ranges(shards: int) -> list[tuple[int, int]]:
    """The 16384 hash slots split into ``shards`` contiguous, nearly equal ranges (first, last)."""
    bounds = [SLOTS * i // shards for i in range(shards + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(shards)]


def _cluster_ready(conn: RespConnection, shards: int) -> bool:
    info = dict(line.split(":", 1) for line in conn.command("CLUSTER", "INFO").decode().split() if ":" in line)
    return (info.get("cluster_state") == "ok" and info.get("cluster_known_nodes") == str(shards)
            and info.get("cluster_slots_ok") == str(SLOTS))


def _hiredis_version() -> str | None:
    try:
        import hiredis
    except ImportError:
        return None
    return str(hiredis.__version__)


class RedisClient(StagingClient):
    """Staging client over one plain-RESP connection (:mod:`simai_core.staging.resp`).

    A put sends the value's bytes as they are, a get reads them straight into ``out``: the same
    path as the raw reference, plus one small metadata key in the same round trip.
    """

    backend = "redis"

    def __init__(self, address: str) -> None:
        self._route = Route(address)
        self._cluster = self._route.cluster

    def _name(self, key: str) -> str:
        """The stored name of ``key``: on a cluster ``{key}``, so all of a value's keys share its slot."""
        return "{" + key + "}" if self._cluster else key

    def put_tensor(self, key: str, array: ArrayLike) -> None:
        arr = as_numpy(array)
        self._put(key, arr.dtype.str, arr.shape, arr.data.cast("B"))

    def get_tensor(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        def target(meta: dict[str, Any]) -> np.ndarray:
            dtype, shape = np.dtype(meta["dtype"]), tuple(meta["shape"])
            if out is None:
                return np.empty(shape, dtype)
            check_out(key, out, dtype, shape)
            return out

        return self._get(key, target)

    def put_bytes(self, key: str, data: bytes | memoryview) -> None:
        self._put(key, None, None, memoryview(data).cast("B"))

    def get_bytes(self, key: str) -> bytes | None:
        value = self._get(key, lambda meta: np.empty(meta["nbytes"], np.uint8))
        return None if value is None else value.tobytes()

    def exists(self, key: str) -> bool:
        name = self._name(key)
        return bool(self._route.for_key(name).command("EXISTS", name))

    def delete(self, key: str) -> None:
        name = self._name(key)
        conn = self._route.for_key(name)
        meta_raw = conn.command("GET", _meta_key(name))
        nchunks = json.loads(meta_raw)["nchunks"] if meta_raw else 1
        conn.command("UNLINK", _meta_key(name), *(_chunk_key(name, i) for i in range(nchunks)))

    def clean(self, prefix: str) -> int:
        pattern = ("{" if self._cluster else "") + glob_escape(prefix) + "*"
        count = 0
        for conn in self._route.connections:
            keys: list[bytes] = []
            cursor = b"0"
            while True:
                cursor, batch = conn.command("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
                keys += batch
                if cursor == b"0":
                    break
            for group in _unlink_groups(keys, self._cluster):
                conn.command("UNLINK", *group)
            count += sum(1 for k in keys if b"\x1f" not in k)  # values, not their meta and chunk keys
        return count

    def close(self) -> None:
        self._route.close()

    def command(self, *args: str | bytes | int) -> Any:
        """Run any Redis command on this client's (first shard's) connection (for tests and diagnostics)."""
        return self._route.connections[0].command(*args)

    def command_all(self, *args: str | bytes | int) -> list[Any]:
        """Run a Redis command on every shard (one on a single server); their replies in shard order."""
        return [conn.command(*args) for conn in self._route.connections]

    def _put(self, key: str, dtype: str | None, shape: tuple[int, ...] | None, payload: memoryview) -> None:
        nchunks = max(1, -(-payload.nbytes // CHUNK_BYTES))
        if nchunks == 1:  # the same metadata repeats put after put: cached
            meta = _cached_meta_json(dtype, shape, payload.nbytes)
        else:  # a write id tells a two-read get that both reads saw one write
            meta = _meta_json(dtype, shape, payload.nbytes, nchunks, secrets.token_hex(8))
        name = self._name(key)
        pairs: list[Any] = [_meta_key(name), meta]
        for i in range(nchunks):
            pairs += [_chunk_key(name, i), payload[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES]]
        try:
            # Readers follow `meta`, so extra chunks of an older, larger (> CHUNK_BYTES) value are
            # never read; they stay until clean() of their prefix.
            expect_ok(self._route.for_key(name).command("MSET", *pairs), f"MSET {key}")
        except RespError as exc:
            if exc.kind != "OOM":
                raise
            raise StagingFullError(
                f"Redis refused {key!r} ({payload.nbytes} bytes): the server's memory limit is full. "
                "Delete old keys, or raise staging.memory_bytes in the machine profile"
            ) from None

    def _get(self, key: str, target: Callable[[dict[str, Any]], np.ndarray]) -> np.ndarray | None:
        """One MGET of meta and the first chunk, read into ``target(meta)``; values past one chunk take one more."""
        name = self._name(key)
        conn = self._route.for_key(name)
        for _ in range(_CONSISTENT_READ_TRIES):
            conn.send("MGET", _meta_key(name), name)
            read = self._read_first(conn, key, target)
            if read is None:
                return None
            meta, value = read
            if meta["nchunks"] == 1 or self._read_rest(conn, name, meta, value):
                return value
        raise RuntimeError(f"{key!r} was rewritten during each of {_CONSISTENT_READ_TRIES} reads; "
                           "a value past 256 MiB cannot be read while another process keeps replacing it")

    @staticmethod
    def _read_first(conn: RespConnection, key: str, target: Callable[[dict[str, Any]], np.ndarray]
                    ) -> tuple[dict[str, Any], np.ndarray] | None:
        conn.array_header()
        meta_raw = conn.reply()
        size = conn.bulk_header()
        if meta_raw is None or size is None:
            if size is not None:
                conn.skip(size)
            return None  # missing, or deleted between the two keys' writes
        meta = json.loads(meta_raw)
        try:
            value = target(meta)
        except BaseException:
            conn.skip(size)
            raise
        flat = value.reshape(-1).view(np.uint8)
        if size != min(flat.nbytes, CHUNK_BYTES):
            conn.skip(size)
            raise RuntimeError(f"{key!r}: stored chunk of {size} bytes does not match its metadata ({meta})")
        conn.bulk_into(flat[:size].data)
        return meta, value

    @staticmethod
    def _read_rest(conn: RespConnection, name: str, meta: dict[str, Any], value: np.ndarray) -> bool:
        """Read chunks 1.. in one MGET with the meta again; False when another write came between the reads."""
        nchunks = meta["nchunks"]
        conn.send("MGET", _meta_key(name), *(_chunk_key(name, i) for i in range(1, nchunks)))
        conn.array_header()
        again = conn.reply()
        same = again is not None and json.loads(again) == meta
        flat = value.reshape(-1).view(np.uint8)
        for i in range(1, nchunks):
            size = conn.bulk_header()
            part = flat[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES]
            if size is None:
                same = False
            elif same and size == part.nbytes:
                conn.bulk_into(part.data)
            else:
                same = False
                conn.skip(size)
        return same


def _meta_json(dtype: str | None, shape: tuple[int, ...] | None, nbytes: int, nchunks: int = 1,
               write: str | None = None) -> bytes:
    meta = {"dtype": dtype, "shape": None if shape is None else list(shape), "nbytes": nbytes, "nchunks": nchunks}
    return json.dumps(meta if write is None else {**meta, "write": write}).encode()


_cached_meta_json = lru_cache(maxsize=1024)(_meta_json)  # one-chunk values only: a write id is never cached


def _meta_key(key: str) -> str:
    return f"{key}\x1fmeta"


def _chunk_key(key: str, i: int) -> str:
    return key if i == 0 else f"{key}\x1fc{i}"


def _unlink_groups(keys: list[bytes], cluster: bool, batch: int = 1000) -> list[list[bytes]]:
    """``keys`` in UNLINK batches; on a cluster one batch per hash slot (a command's keys must share one)."""
    groups: dict[int, list[bytes]] = {}
    for key in keys:
        groups.setdefault(key_slot(key) if cluster else 0, []).append(key)
    return [group[i:i + batch] for group in groups.values() for i in range(0, len(group), batch)]


def glob_escape(prefix: str) -> str:
    """``prefix`` with Redis glob characters escaped, for SCAN MATCH."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in prefix)
