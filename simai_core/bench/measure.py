"""Timing helpers shared by the benchmarks: synchronised rounds on one clock, raw references."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from simai_core import mpi
from simai_core.bench.clock import global_clock
from simai_core.staging.base import RawReference


def sync_ranks() -> None:
    """Start a round on every rank together (no-op on one rank)."""
    if mpi.size() > 1:
        mpi.barrier()


Window = tuple[float, float]


class PairedRounds:
    """A benchmark operation and its reference paths, timed in the same rounds on one clock.

    Use ``benchmark.pedantic(rounds.target, setup=rounds.setup, ...)`` then :meth:`finish`.
    The references run in the (untimed) setup of a round, once per round, alternating before
    and after the operation (R B | B R | R B ...), so neither side always finds the machine warm.
    Every op's rounds are kept as (start, end) windows on the :func:`global_clock`, from which
    per-rank latencies and measured aggregates are computed.
    """

    def __init__(self, op: Callable[[], Any], references: Mapping[str, Callable[[], Any]] | None = None,
                 warmup_rounds: int = 1, prepare: Callable[[], Any] | None = None) -> None:
        self.op, self.references, self.warmup_rounds = op, dict(references or {}), warmup_rounds
        self.prepare = prepare  # untimed work before each round (resetting keys, freeing the last round's copy)
        self._clock = global_clock()
        self._windows: dict[str, list[Window]] = {name: [] for name in ("op", *self.references)}
        self._round = 0

    def setup(self) -> None:
        """Before round n: the previous round's trailing references (odd n-1), then this one's leading ones (even n)."""
        if self.prepare is not None:
            self.prepare()
        if self._round % 2 == 0:
            if self._round:
                self._run_references()
            self._run_references()
        sync_ranks()

    def target(self) -> None:
        """The timed operation of one round."""
        start = self._clock.now()
        self.op()
        self._windows["op"].append((start, self._clock.now()))
        self._round += 1

    def finish(self) -> None:
        """After the last round: its trailing references, if it was an odd one."""
        if self._round % 2 == 0:
            self._run_references()

    def windows(self, name: str = "op") -> list[Window]:
        """The timed rounds of ``op`` or of a reference, warm-up dropped."""
        return self._windows[name][self.warmup_rounds:]

    def seconds(self, name: str = "op") -> list[float]:
        """Each round's duration."""
        return [end - start for start, end in self.windows(name)]

    def _run_references(self) -> None:
        for name, ref in self.references.items():
            sync_ranks()
            start = self._clock.now()
            ref()
            self._windows[name].append((start, self._clock.now()))


def reference_op(ref: RawReference, key: str, op: str, data: np.ndarray, out: np.ndarray) -> Callable[[], None]:
    """One timed call of a reference path: put ``data`` under ``key`` (op ``put``), or get it into ``out``."""
    if op == "put":
        return lambda: ref.put(key, data.data)
    return lambda: ref.get(key, out.data)


def check_references(refs: Mapping[str, RawReference], key: str, data: np.ndarray, out: np.ndarray) -> None:
    """Each path's get of ``<name>.<key>`` brings every byte of ``data`` (``out`` is zeroed first)."""
    for name, ref in refs.items():
        out.fill(0)
        ref.get(f"{name}.{key}", out.data)
        assert np.array_equal(out, data), f"the {name} path lost bytes"


def median(samples: list[float]) -> float:
    """The median of timing samples (robust to the odd slow round on a busy machine)."""
    return float(statistics.median(samples))


def default_rounds(nbytes: int) -> int:
    """Enough rounds for a stable median without spending minutes on large messages.

    A server's first rounds at a new size allocate its memory and run at a fraction of the speed that
    follows, so even large messages get enough rounds for the median to be a steady-state one.
    """
    if nbytes <= 64 * 1024:
        return 50
    if nbytes <= 1024 * 1024:
        return 30
    if nbytes <= 16 * 1024 * 1024:
        return 20
    return 10


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

