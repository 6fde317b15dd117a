"""Timing helpers shared by the benchmarks: synchronised rounds, raw references."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from simai_core import mpi


def sync_ranks() -> None:
    """Start a round on every rank together (no-op on one rank)."""
    if mpi.size() > 1:
        mpi.barrier()


class InterleavedReference:
    """A raw reference timed in the same rounds as the benchmark, as its ``pedantic`` setup.

    Before each benchmark round (untimed by pytest-benchmark) the ranks synchronise, run and
    time the raw operation once, and synchronise again; so the backend and its reference see
    the same machine state, and drift on a busy machine hits both alike.
    """

    def __init__(self, raw_op: Callable[[], Any], warmup_rounds: int = 1) -> None:
        self.raw_op = raw_op
        self.warmup_rounds = warmup_rounds
        self._all: list[float] = []

    def __call__(self) -> None:
        sync_ranks()
        start = time.perf_counter()
        self.raw_op()
        self._all.append(time.perf_counter() - start)
        sync_ranks()

    @property
    def samples(self) -> list[float]:
        """The timed raw rounds (warm-up rounds dropped)."""
        return self._all[self.warmup_rounds:]


def median(samples: list[float]) -> float:
    """The median of timing samples (robust to the odd slow round on a busy machine)."""
    return float(statistics.median(samples))


def default_rounds(nbytes: int) -> int:
    """Enough rounds for a stable median without spending minutes on large messages."""
    if nbytes <= 64 * 1024:
        return 50
    if nbytes <= 1024 * 1024:
        return 20
    if nbytes <= 16 * 1024 * 1024:
        return 10
    return 6


def memcpy_GBps(nbytes: int = 64 * 2**20, rounds: int = 10) -> float:
    """Memory-copy bandwidth on this rank (GB = 1e9 bytes): the ceiling for any staging copy."""
    src = np.ones(nbytes, np.uint8)
    dst = np.empty_like(src)
    samples = []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        np.copyto(dst, src)
        samples.append(time.perf_counter() - start)
    return nbytes / median(samples[1:]) / 1e9


class NeighbourPoll:
    """Put-to-visible rounds: each rank publishes its key while polling for its left neighbour's.

    Use ``benchmark.pedantic(poll.round, setup=poll.reset, ...)``: ``reset`` retracts every key
    between rounds, only once every neighbour has seen it.
    """

    def __init__(self, prefix: str, publish: Callable[[str], Any], retract: Callable[[str], Any],
                 visible: Callable[[str], bool]) -> None:
        rank, size = mpi.rank(), mpi.size()
        self.mine, self.neighbour = f"{prefix}.{rank}", f"{prefix}.{(rank - 1) % size}"
        self._publish, self._retract, self._visible = publish, retract, visible

    def reset(self) -> None:
        """Between rounds: wait for every rank, retract this rank's key, wait again."""
        sync_ranks()
        self._retract(self.mine)
        sync_ranks()

    def round(self) -> None:
        """Publish this rank's key and wait until the neighbour's is visible."""
        self._publish(self.mine)
        if not self._visible(self.neighbour):
            raise TimeoutError(f"{self.neighbour} did not become visible in time")

