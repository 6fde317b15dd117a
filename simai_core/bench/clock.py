"""One clock on every rank, so that rounds timed on different ranks can be laid on one time line.

Where MPI says its ``Wtime`` is global (``MPI_WTIME_IS_GLOBAL``) that is the clock. Otherwise each
rank reads its own ``perf_counter`` and adds an offset to rank 0's, measured once by ping-pong
(Cristian's method: the exchange with the shortest round trip bounds the error by half of it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache

from simai_core import mpi

_PINGS = 20
_TAG = 0x51C
_DEADLINE_S = 60.0


@dataclass(frozen=True)
class GlobalClock:
    """``now()`` in seconds on a time line shared by every rank; ``error_s`` bounds this rank's offset error."""

    source: str
    offset_s: float = 0.0
    error_s: float = 0.0

    def now(self) -> float:
        """Seconds on the shared time line."""
        if self.source == "MPI_Wtime":
            from mpi4py import MPI

            return float(MPI.Wtime())
        return time.perf_counter() + self.offset_s


@cache
def global_clock() -> GlobalClock:
    """The session's shared clock (collective on first call: every rank must call it)."""
    if mpi.size() == 1:
        return GlobalClock("perf_counter")
    if _wtime_is_global():
        return GlobalClock("MPI_Wtime")
    offset, error = _offset_to_rank0()
    return GlobalClock("perf_counter+offset", offset, error)


def _wtime_is_global() -> bool:
    from mpi4py import MPI

    flag = mpi.world().Get_attr(MPI.WTIME_IS_GLOBAL)
    return bool(flag) and all(mpi.gather_to_all(bool(flag)))


def _offset_to_rank0() -> tuple[float, float]:
    """This rank's (offset, error bound) such that ``perf_counter() + offset`` reads rank 0's ``perf_counter``."""
    comm, me = mpi.world(), mpi.rank()
    result = (0.0, 0.0)
    for peer in range(1, mpi.size()):  # one peer at a time: rank 0 answers without competing pings
        if me == 0:
            for _ in range(_PINGS):
                _recv(comm, peer)
                comm.send(time.perf_counter(), dest=peer, tag=_TAG)
        elif me == peer:
            best_rtt = float("inf")
            for _ in range(_PINGS):
                sent = time.perf_counter()
                comm.send(None, dest=0, tag=_TAG)
                theirs = _recv(comm, 0)
                back = time.perf_counter()
                if back - sent < best_rtt:
                    best_rtt, result = back - sent, (theirs - (sent + back) / 2, (back - sent) / 2)
    mpi.barrier()
    return result


def _recv(comm: object, source: int) -> float:
    """A receive with a deadline (a peer that died must not leave this rank waiting forever)."""
    request = comm.irecv(source=source, tag=_TAG)  # type: ignore[attr-defined]
    deadline = time.monotonic() + _DEADLINE_S
    while True:
        done, value = request.test()
        if done:
            return float(value) if value is not None else 0.0
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {mpi.rank()}: rank {source} did not answer the clock exchange within {_DEADLINE_S:g} s")
        time.sleep(0)
