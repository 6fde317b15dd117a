"""A writer and a reader process paired by a TCP link: control messages, round barriers, raw bytes.

The link carries what the stream itself cannot: a round barrier between exactly two
processes, small JSON messages (how many steps were written, results) and the raw baseline
(the same bytes sent over a plain loopback or NIC socket). Every receive has a deadline.

The listening end accepts only a peer that first sends the run's pair token: a secret made by
whoever starts the pair (the reader rank, sent to its writer over MPI; the serial reader, passed
to its peer process in the environment, never on a command line). A connection from anyone else
on the node is closed before anything it sent is read, and the listener keeps waiting.

Pairs come from ``mpiexec`` (rank 2i writes, rank 2i+1 reads: :func:`mpi_pair`) or, in a
serial run, from a peer process that the reader starts with :func:`spawn_peer`.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import select
import socket
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from simai_core.net import interface_address
from simai_core.private import SharedMachineWarning
from simai_core.streaming.base import StreamError, StreamTimeoutError

_HEADER = struct.Struct("!I")
_LAUNCHER_ENV = ("PMI_", "PMIX_", "OMPI_", "HYDRA_", "MPI_", "I_MPI_")
_TAG = 71
TOKEN_ENV = "SIMAI_PAIR_TOKEN"  # how a spawned peer gets the token (the environment is private to its user)
_TOKEN_CHARS = 64  # 32 random bytes, hex
_HANDSHAKE_S = 5.0  # a connection that has not sent the token by then is refused


def new_token() -> str:
    """A fresh pair token: the secret that admits the one peer of this run to the link."""
    return secrets.token_hex(_TOKEN_CHARS // 2)


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
    def accept(cls, server: socket.socket, timeout_s: float, token: str) -> PairLink:
        """Wait (up to ``timeout_s``) for the peer that sends ``token``; close every other connection unread."""
        deadline, refused = time.monotonic() + timeout_s, []
        try:
            while (left := deadline - time.monotonic()) > 0:
                server.settimeout(left)
                try:
                    sock, peer = server.accept()
                except TimeoutError:
                    break
                why = _check_token(sock, token, min(_HANDSHAKE_S, max(left, 0.1)))
                if why is None:
                    return cls(sock, timeout_s)
                sock.close()
                refused.append(f"{peer[0]}:{peer[1]} ({why})")
                warnings.warn(f"pair link: refused a connection from {refused[-1]}: not this run's peer, so "
                              f"nothing it sent was read", SharedMachineWarning, stacklevel=2)
        finally:
            server.close()
        also = f"; refused {len(refused)} connection(s) without this run's token: {', '.join(refused)}" if refused else ""
        raise StreamTimeoutError(f"the peer did not connect within {timeout_s:g} s{also}")

    @classmethod
    def connect(cls, address: str, timeout_s: float, token: str | None = None) -> PairLink:
        """Connect to the listening end at ``host:port`` and present ``token`` (default: ``$SIMAI_PAIR_TOKEN``)."""
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        if not token:
            raise StreamError(f"no pair token: the process that starts the pair passes it (in ${TOKEN_ENV} to a peer)")
        host, port = address.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        sock.sendall(token.encode())
        return cls(sock, timeout_s)

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


def _check_token(sock: socket.socket, token: str, timeout_s: float) -> str | None:
    """None when the first bytes on ``sock`` are ``token``, else why not; reads nothing past the token."""
    expected, got = token.encode(), bytearray()
    sock.settimeout(timeout_s)
    try:
        while len(got) < len(expected):
            chunk = sock.recv(len(expected) - len(got))
            if not chunk:
                return "closed before sending a token"
            got += chunk
    except (TimeoutError, OSError):
        return f"no token within {timeout_s:g} s"
    return None if hmac.compare_digest(bytes(got), expected) else "wrong token"


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
        address, token = _mpi_recv(comm, rank + 1, timeout_s)
        return PairLink.connect(address, timeout_s, token), True, rank // 2
    server, address = PairLink.listen(interface)
    token = new_token()
    comm.send((address, token), dest=rank - 1, tag=_TAG)  # a few bytes: sent eagerly, never waits for the receiver
    return PairLink.accept(server, timeout_s, token), False, rank // 2


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
    launcher's environment, and logs to ``workdir/peer.log``. It gets the pair token in
    ``$SIMAI_PAIR_TOKEN``.
    """
    server, address = PairLink.listen(interface)
    token = new_token()
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_ENV)} | {"TMPDIR": str(workdir),
                                                                                       TOKEN_ENV: token}
    with open(workdir / "peer.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "simai_core.streaming.peer", address, str(timeout_s)],
                                cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        link = PairLink.accept(server, timeout_s, token)
    except StreamTimeoutError as exc:
        stop_peer(proc, workdir, 1.0)
        raise StreamTimeoutError(f"the stream peer: {exc}: {peer_log(workdir)}") from None
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
