"""Plain RESP (the Redis protocol) on one TCP socket: the fastest path a Python process has to a redis-server.

A value goes out without a copy: the RESP header, then the caller's buffer itself, on a
``TCP_NODELAY`` socket. A bulk reply lands straight in the caller's buffer (``recv_into``).
A ``unix://PATH`` address (as SmartRedis writes one) takes a Unix domain socket instead.
redis-py with hiredis copies a value once on the way out (``pack_command``) and once or twice
on the way in (a ``bytes`` object, then the caller's copy), which costs 2-7x at MiB sizes here.

:class:`RespConnection` is the redis backend's data path and, through :class:`RespRaw`, the raw
reference the redis and smartsim backends are divided by.
"""

from __future__ import annotations

import socket
from binascii import crc_hqx
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from simai_core.staging.base import RawReference

Arg = bytes | bytearray | memoryview | str | int
_SMALL = 16 * 1024  # arguments up to this size are joined into the header; larger ones are sent as they are
_RECV = 256 * 1024
_CONNECT_TIMEOUT_S = 10.0


class RespError(RuntimeError):
    """An error reply from the server (``-ERR ...``, ``-OOM ...``); ``kind`` is its first word."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.kind = message.split(" ", 1)[0]


SLOTS = 16384  # hash slots of a Redis Cluster
CLUSTER_SCHEME = "redis+cluster"  # a Redis Cluster, reached through any of its nodes (the seed)
UNIX_SCHEME = "unix://"  # a server's Unix domain socket: unix:///path/to/redis.sock (no password)


def parse_address(address: str) -> tuple[str, int, str | None]:
    """``redis[+cluster]://[:password@]host:port`` (or ``host:port``) as (host, port, password)."""
    url = urlsplit(address if "://" in address else f"redis://{address}")
    if url.scheme not in ("redis", CLUSTER_SCHEME) or not url.hostname or not url.port:
        raise ValueError(f"Not a redis address: {address!r} (expected redis[+cluster]://[:password@]host:port)")
    return url.hostname, url.port, unquote(url.password) if url.password else None


def unix_socket_path(address: str) -> str | None:
    """The socket path of a ``unix://PATH`` address; None for a TCP address."""
    return address[len(UNIX_SCHEME):] if address.startswith(UNIX_SCHEME) else None


def is_cluster(address: str) -> bool:
    """Whether ``address`` names a Redis Cluster (``redis+cluster://``) rather than one server."""
    return address.startswith(CLUSTER_SCHEME + "://")


def node_address(host: str, port: int, password: str | None) -> str:
    """The plain ``redis://`` address of one server."""
    return f"redis://{':' + quote(password, safe='') + '@' if password else ''}{host}:{port}"


class RespConnection:
    """One authenticated connection speaking RESP2; every call has the socket's deadline (``timeout_s``)."""

    def __init__(self, address: str, timeout_s: float = 120.0) -> None:
        path = unix_socket_path(address)
        if path is not None:
            password, self.where = None, f"redis-server at {address}"
            self._sock = _connect_unix(path, self.where)
        else:
            host, port, password = parse_address(address)
            self.where = f"redis-server at {host}:{port}"
            try:
                self._sock = socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S)
            except OSError as exc:
                raise ConnectionError(f"Cannot reach the {self.where}: {exc}") from None
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.settimeout(timeout_s)
        self.timeout_s = timeout_s
        self._buf = bytearray()
        self._pos = 0
        if password is not None:
            try:
                self.command("AUTH", password)
            except RespError as exc:
                self.close()
                raise ConnectionError(f"The {self.where} refused the password: {exc}") from None

    # -- sending ---------------------------------------------------------------------------

    def send(self, *args: Arg) -> None:
        """Send one command; large buffers go to the socket as they are, without a copy."""
        head = bytearray(b"*%d\r\n" % len(args))
        try:
            for arg in args:
                data = _as_bytes(arg)
                size = data.nbytes if isinstance(data, memoryview) else len(data)
                head += b"$%d\r\n" % size
                if size <= _SMALL:
                    head += data
                    head += b"\r\n"
                else:
                    self._sock.sendall(head)
                    self._sock.sendall(data)
                    head = bytearray(b"\r\n")
            self._sock.sendall(head)
        except OSError as exc:
            raise self._lost(exc) from None

    def command(self, *args: Arg) -> Any:
        """Send a command and return its parsed reply (bytes, int, str, list or None)."""
        self.send(*args)
        return self.reply()

    # -- receiving -------------------------------------------------------------------------

    def reply(self) -> Any:
        """Parse one whole reply; an error reply raises :class:`RespError`."""
        kind, rest = self._header()
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = bytearray(n)
            self._read_into(memoryview(data))
            return bytes(data)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        return self._simple(kind, rest)

    def array_header(self) -> int | None:
        """Read an array reply's length (None for a null array)."""
        return self._length(b"*", "an array")

    def bulk_header(self) -> int | None:
        """Read a bulk string's length (None for a null bulk); read its bytes next with :meth:`bulk_into` or :meth:`skip`."""
        return self._length(b"$", "a bulk string")

    def bulk_into(self, out: memoryview) -> None:
        """Read a bulk string's ``len(out)`` bytes straight into ``out`` (after :meth:`bulk_header`)."""
        self._read_into(out)

    def skip(self, nbytes: int) -> None:
        """Discard a bulk string's bytes (after :meth:`bulk_header`), keeping the connection in step."""
        chunk = memoryview(bytearray(min(nbytes, _RECV) or 1))
        while nbytes > 0:
            step = min(nbytes, len(chunk))
            self._read_into(chunk[:step], terminated=False)
            nbytes -= step
        self._read_exact(2)

    def close(self) -> None:
        """Close the socket; calling it twice is harmless."""
        self._sock.close()

    # -- internals -------------------------------------------------------------------------

    def _header(self) -> tuple[bytes, bytes]:
        line = self._line()
        return line[:1], line[1:]

    def _length(self, wanted: bytes, what: str) -> int | None:
        """The length of the next reply, which must be of type ``wanted`` (None for a null one)."""
        kind, rest = self._header()
        if kind != wanted:
            return self._unexpected(kind, rest, what)
        n = int(rest)
        return None if n < 0 else n

    def _simple(self, kind: bytes, rest: bytes) -> Any:
        if kind == b"+":
            return rest.decode()
        if kind == b":":
            return int(rest)
        if kind == b"-":
            raise RespError(rest.decode(errors="replace"))
        raise ConnectionError(f"Unexpected reply from the {self.where}: {kind + rest!r}")

    def _unexpected(self, kind: bytes, rest: bytes, wanted: str) -> Any:
        self._simple(kind, rest)  # raises RespError for an error reply
        raise ConnectionError(f"Expected {wanted} from the {self.where}, got {kind + rest!r}")

    def _line(self) -> bytes:
        while True:
            end = self._buf.find(b"\r\n", self._pos)
            if end >= 0:
                line = bytes(self._buf[self._pos:end])
                self._pos = end + 2
                return line
            self._fill()

    def _fill(self) -> None:
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        try:
            data = self._sock.recv(_RECV)
        except OSError as exc:
            raise self._lost(exc) from None
        if not data:
            raise ConnectionError(f"The {self.where} closed the connection")
        self._buf += data

    def _read_into(self, out: memoryview, terminated: bool = True) -> None:
        """Fill ``out`` from the buffer, then from the socket; then consume the bulk's CRLF."""
        out = out.cast("B") if out.format != "B" or out.ndim != 1 else out
        got = min(len(out), len(self._buf) - self._pos)
        out[:got] = self._buf[self._pos:self._pos + got]
        self._pos += got
        try:
            while got < len(out):
                n = self._sock.recv_into(out[got:])
                if n == 0:
                    raise ConnectionError(f"The {self.where} closed the connection mid-reply")
                got += n
        except OSError as exc:
            raise self._lost(exc) from None
        if terminated:
            self._read_exact(2)

    def _read_exact(self, nbytes: int) -> bytes:
        while len(self._buf) - self._pos < nbytes:
            self._fill()
        data = bytes(self._buf[self._pos:self._pos + nbytes])
        self._pos += nbytes
        return data

    def _lost(self, exc: OSError) -> Exception:
        if isinstance(exc, TimeoutError):
            return TimeoutError(f"The {self.where} did not answer within {self.timeout_s:g} s")
        return ConnectionError(f"Lost the {self.where}: {exc}")


def _connect_unix(path: str, where: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(_CONNECT_TIMEOUT_S)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise ConnectionError(f"Cannot reach the {where}: {exc}") from None
    return sock


class Route:
    """Where a key's commands go: one server, or the shard of a Redis Cluster that owns the key's slot.

    A cluster's slot map is read once (``CLUSTER SLOTS``) and every shard gets one plain-RESP
    connection, so a key's commands take the same single-socket path as on one server. All keys
    of one command must share a slot (the redis backend gives a value's keys one ``{hashtag}``).
    Slots never move in the suite's clusters; a ``MOVED`` reply is an error, not followed.
    """

    def __init__(self, address: str, timeout_s: float = 120.0) -> None:
        self.cluster = is_cluster(address)
        if not self.cluster:
            self.connections = [RespConnection(address, timeout_s)]
            self._slots = bytes(1)
            return
        host, _, password = parse_address(address)
        seed = RespConnection(address, timeout_s)
        try:
            ranges = seed.command("CLUSTER", "SLOTS")
        finally:
            seed.close()
        nodes: dict[tuple[str, int], int] = {}
        table = bytearray(SLOTS)  # slot -> index of its node's connection (fewer than 256 nodes)
        for first, last, master, *_ in ranges:
            where = ((master[0].decode() or host), int(master[1]))  # a node may not know its own address
            index = nodes.setdefault(where, len(nodes))
            table[first:last + 1] = bytes([index]) * (last + 1 - first)
        self.connections = []
        try:
            for node_host, node_port in nodes:
                self.connections.append(RespConnection(node_address(node_host, node_port, password), timeout_s))
        except BaseException:
            self.close()
            raise
        self._slots = bytes(table)

    def for_key(self, key: str) -> RespConnection:
        """The connection to the server that holds ``key``."""
        if not self.cluster:
            return self.connections[0]
        return self.connections[self._slots[key_slot(key)]]

    def close(self) -> None:
        """Close every connection."""
        for conn in self.connections:
            conn.close()


def key_slot(key: str | bytes) -> int:
    """The Redis Cluster hash slot of ``key``: CRC16 (XMODEM) of its ``{hashtag}``, or of the whole key, mod 16384."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1:end]
    return crc_hqx(data, 0) % SLOTS


def _as_bytes(arg: Arg) -> bytes | bytearray | memoryview:
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, int):
        return b"%d" % arg
    if isinstance(arg, memoryview):
        return arg if arg.format == "B" and arg.ndim == 1 else arg.cast("B")
    return arg


def expect_ok(reply: Any, what: str) -> None:
    """Raise unless ``reply`` is ``+OK``."""
    if reply != "OK":
        raise ConnectionError(f"{what}: unexpected reply {reply!r}")


class RespRaw(RawReference):
    """SET / GET of the raw buffer in plain RESP: header + zero-copy send; the GET reply read into ``out``."""

    description = ("plain RESP on a TCP_NODELAY socket: SET sends header + the buffer itself, "
                   "GET reads into the preallocated buffer")

    def __init__(self, address: str) -> None:
        self._route = Route(address)  # on a cluster: the key's shard
        if unix_socket_path(address) is not None:
            self.description = ("plain RESP on a Unix domain socket: SET sends header + the buffer itself, "
                                "GET reads into the preallocated buffer")

    def put(self, key: str, data: memoryview) -> None:
        expect_ok(self._route.for_key(key).command("SET", key, data), f"SET {key}")

    def get(self, key: str, out: memoryview) -> None:
        conn = self._route.for_key(key)
        conn.send("GET", key)
        read_bulk_into(conn, key, out)

    def close(self) -> None:
        self._route.close()


def read_bulk_into(conn: RespConnection, key: str, out: memoryview) -> None:
    """Read a bulk reply of exactly ``out.nbytes`` bytes into ``out``; KeyError when null, ValueError on a size mismatch."""
    n = conn.bulk_header()
    if n is None:
        raise KeyError(key)
    if n != out.nbytes:
        conn.skip(n)
        raise ValueError(f"{key!r} holds {n} bytes; the buffer has {out.nbytes}")
    conn.bulk_into(out)


class RedisPyRaw(RawReference):
    """SET / GET of the raw buffer through redis-py (+ hiredis): what the everyday client gets."""

    description = "redis-py SET/GET of the raw buffer, the reply copied into the preallocated buffer"

    def __init__(self, address: str) -> None:
        import redis

        self._redis: Any
        if (path := unix_socket_path(address)) is not None:
            self._redis = redis.Redis(unix_socket_path=path, socket_timeout=120, single_connection_client=True)
            return
        host, port, password = parse_address(address)
        if is_cluster(address):
            from redis.cluster import RedisCluster

            self._redis = RedisCluster(host=host, port=port, password=password, socket_timeout=120)
        else:
            self._redis = redis.Redis(host=host, port=port, password=password, socket_timeout=120,
                                      single_connection_client=True)

    def put(self, key: str, data: memoryview) -> None:
        self._redis.set(key, data)  # type: ignore[arg-type]  # redis-py sends buffers as they are

    def get(self, key: str, out: memoryview) -> None:
        value = self._redis.get(key)
        if value is None:
            raise KeyError(key)
        out.cast("B")[:] = value  # type: ignore[assignment]

    def close(self) -> None:
        self._redis.close()


__all__: Sequence[str] = ["CLUSTER_SCHEME", "UNIX_SCHEME", "RedisPyRaw", "RespConnection", "RespError", "RespRaw",
                          "Route", "expect_ok", "is_cluster", "key_slot", "node_address", "parse_address",
                          "read_bulk_into", "unix_socket_path"]
