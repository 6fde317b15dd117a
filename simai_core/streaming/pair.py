"""A writer and a reader process paired by a TCP link: control messages, round barriers, raw bytes.

The link carries what the stream itself cannot: a round barrier between exactly two
processes, small JSON messages (how many steps were written, results) and the raw baseline
(the same bytes sent over a plain loopback or NIC socket). Every receive has a deadline.

Pairs come from ``mpiexec`` (rank 2i writes, rank 2i+1 reads: :func:`mpi_pair`) or, in a
serial run, from a peer process that the reader starts with :func:`spawn_peer`.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from simai_core.net import interface_address
from simai_core.streaming.base import StreamError, StreamTimeoutError

_HEADER = struct.Struct("!I")
_LAUNCHER_ENV = ("PMI_", "PMIX_", "OMPI_", "HYDRA_", "MPI_", "I_MPI_")
_TAG = 71


class PairLink:
    """One TCP connection between the two ends of a stream."""

    def __init__(self, sock: socket.socket, timeout_s: float) -> None:
        self.sock = sock
        self.timeout_s = timeout_s
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # round barriers are tiny messages
        sock.settimeout(timeout_s)

    @staticmethod
    def listen(interface: str = "lo") -> tuple[socket.socket, str]:
        """A listening socket on ``interface`` and its ``host:port`` for the other end."""
        server = socket.create_server((interface_address(interface), 0))
        host, port = server.getsockname()[:2]
        return server, f"{host}:{port}"

    @classmethod
    def accept(cls, server: socket.socket, timeout_s: float) -> PairLink:
        """Wait (up to ``timeout_s``) for the other end to connect."""
        server.settimeout(timeout_s)
        try:
            sock, _ = server.accept()
        except TimeoutError:
            raise StreamTimeoutError(f"the peer did not connect within {timeout_s:g} s") from None
        finally:
            server.close()
        return cls(sock, timeout_s)

    @classmethod
    def connect(cls, address: str, timeout_s: float) -> PairLink:
        """Connect to the listening end at ``host:port``."""
        host, port = address.rsplit(":", 1)
        return cls(socket.create_connection((host, int(port)), timeout=timeout_s), timeout_s)

    def send(self, message: dict[str, Any]) -> None:
        """Send a small JSON message."""
        body = json.dumps(message).encode()
        self.sock.sendall(_HEADER.pack(len(body)) + body)

    def recv(self, timeout_s: float | None = None) -> dict[str, Any]:
        """The next JSON message; :class:`StreamTimeoutError` past the deadline, :class:`StreamError` if the peer left."""
        header = self._recv_exactly(_HEADER.size, timeout_s)
        return json.loads(self._recv_exactly(_HEADER.unpack(header)[0], timeout_s))  # type: ignore[no-any-return]

    def poll(self, timeout_s: float = 0.0) -> dict[str, Any] | None:
        """The next message if one starts to arrive within ``timeout_s``, else None."""
        readable, _, _ = select.select([self.sock], [], [], timeout_s)
        return self.recv() if readable else None

    def sync(self, timeout_s: float | None = None) -> None:
        """A barrier of the two ends: both send a token and wait for the other's."""
        self.sock.sendall(b"S")
        if self._recv_exactly(1, timeout_s) != b"S":
            raise StreamError("pair link out of step: expected a barrier token")

    def send_bytes(self, data: memoryview) -> None:
        """Send raw bytes (the baseline)."""
        self.sock.sendall(data)

    def recv_into(self, out: memoryview, timeout_s: float | None = None) -> None:
        """Receive exactly ``len(out)`` raw bytes into ``out``."""
        view, deadline = out.cast("B"), self._deadline(timeout_s)
        while view.nbytes:
            self.sock.settimeout(max(1e-3, deadline - time.monotonic()))
            try:
                n = self.sock.recv_into(view)
            except TimeoutError:
                raise StreamTimeoutError(f"raw bytes from the peer did not arrive within {self._t(timeout_s):g} s") from None
            if n == 0:
                raise StreamError("the peer closed the pair link")
            view = view[n:]

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def _t(self, timeout_s: float | None) -> float:
        return self.timeout_s if timeout_s is None else timeout_s

    def _deadline(self, timeout_s: float | None) -> float:
        return time.monotonic() + self._t(timeout_s)

    def _recv_exactly(self, n: int, timeout_s: float | None) -> bytes:
        buf = bytearray(n)
        self.recv_into(memoryview(buf), timeout_s)
        return bytes(buf)


def mpi_pair(interface: str, timeout_s: float) -> tuple[PairLink, bool, int]:
    """Pair this rank with its neighbour: (link, is_writer, pair index). Rank 2i writes, rank 2i+1 reads.

    Collective over the world; the world size must be even.
    """
    from simai_core import mpi

    comm, rank = mpi.world(), mpi.rank()
    if mpi.size() % 2:
        raise ValueError(f"stream pairs need an even number of ranks, not {mpi.size()}")
    writer = rank % 2 == 0
    if writer:
        return PairLink.connect(_mpi_recv(comm, rank + 1, timeout_s), timeout_s), True, rank // 2
    server, address = PairLink.listen(interface)
    comm.send(address, dest=rank - 1, tag=_TAG)  # a few bytes: sent eagerly, never waits for the receiver
    return PairLink.accept(server, timeout_s), False, rank // 2


def _mpi_recv(comm: Any, source: int, timeout_s: float) -> Any:
    """``comm.recv`` with a deadline (and without spinning)."""
    request, deadline = comm.irecv(source=source, tag=_TAG), time.monotonic() + timeout_s
    while True:
        done, value = request.test()
        if done:
            return value
        if time.monotonic() > deadline:
            request.Cancel()
            raise StreamTimeoutError(f"rank {source} did not send its pair address within {timeout_s:g} s")
        time.sleep(1e-3)


def spawn_peer(workdir: Path, interface: str, timeout_s: float) -> tuple[subprocess.Popen[bytes], PairLink]:
    """Start the writer peer (``python -m simai_core.streaming.peer``) in ``workdir`` and connect to it.

    The peer runs with ``workdir`` as its working directory and ``TMPDIR``, without the MPI
    launcher's environment, and logs to ``workdir/peer.log``.
    """
    server, address = PairLink.listen(interface)
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_ENV)} | {"TMPDIR": str(workdir)}
    with open(workdir / "peer.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "simai_core.streaming.peer", address, str(timeout_s)],
                                cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        link = PairLink.accept(server, timeout_s)
    except StreamTimeoutError:
        stop_peer(proc, workdir, 1.0)
        raise StreamTimeoutError(f"the stream peer did not connect within {timeout_s:g} s: {peer_log(workdir)}") from None
    return proc, link


def peer_log(workdir: Path, tail: int = 4000) -> str:
    """The end of the peer's log (for error messages)."""
    path = workdir / "peer.log"
    return path.read_text(errors="replace")[-tail:] if path.is_file() else "(no peer log)"


def stop_peer(proc: subprocess.Popen[bytes], workdir: Path, timeout_s: float) -> int:
    """Wait for the peer to exit (kill it past ``timeout_s``), return its exit code; its log stays if it failed."""
    try:
        code = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    if code == 0:
        (workdir / "peer.log").unlink(missing_ok=True)
    return code
