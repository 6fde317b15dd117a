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


def time_rounds(fn: Callable[[], Any], rounds: int, warmup_rounds: int = 1) -> list[float]:
    """Time ``fn`` for ``rounds`` rounds after ``warmup_rounds`` untimed ones, ranks in step.

    The same schedule as ``benchmark.pedantic(fn, setup=sync_ranks, ...)`` so a raw
    reference and the backend under test are measured alike.
    """
    samples = []
    for i in range(warmup_rounds + rounds):
        sync_ranks()
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        if i >= warmup_rounds:
            samples.append(elapsed)
    return samples


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
