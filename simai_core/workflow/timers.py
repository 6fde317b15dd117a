"""Complete time accounting of one workflow component on one rank.

Every piece of a component's wall time is spent inside exactly one
:meth:`Accounting.section`, in one of three groups:

* own work: ``compute`` (emulated simulation work or training) and ``wait`` (barriers,
  collectives, idle polling, a writer blocked on a full stream queue);
* staging traffic (:data:`TRAFFIC`): ``meta``, ``data``, ``checkpoint`` (its transfer
  only): the calls that move bytes through the staging library, the part a faster
  library would shorten;
* coupling compute (:data:`COUPLING_COMPUTE`): work the coupling needs that moves no
  bytes: ``graph_build`` (kNN graph), ``process_group`` (torch.distributed set-up),
  ``checkpoint_serialize`` / ``checkpoint_load`` (TorchScript save and load) and
  ``inference``.

Sections do not nest, so the categories add up to at most the wall time and
``wall - sum`` is the unaccounted remainder (loop bookkeeping). Sections can also
record per-event samples for the :mod:`simai_core.events` sidecar.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

TRAFFIC = ("meta", "data", "checkpoint")
COUPLING_COMPUTE = ("graph_build", "process_group", "checkpoint_serialize", "checkpoint_load", "inference")
CATEGORIES = ("compute", "wait", *TRAFFIC, *COUPLING_COMPUTE)


class Accounting:
    """Accumulates per-category seconds, transfer bytes and events for one component rank.

    ``start_epoch_s`` is the workflow's common start (rank 0's ``time.time()``) that
    event times are counted from.
    """

    def __init__(self, component: str, rank: int, start_epoch_s: float, record_events: bool = True) -> None:
        self.component = component
        self.rank = rank
        self.record_events = record_events
        self.seconds: dict[str, float] = dict.fromkeys(CATEGORIES, 0.0)
        self.transfer_bytes: dict[str, int] = defaultdict(int)
        self.transfer_seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.events: list[dict[str, Any]] = []
        # perf_counter is monotonic; this offset maps it onto the common epoch clock.
        self._offset = time.time() - time.perf_counter() - start_epoch_s
        self._t_start: float | None = None
        self._t_stop: float | None = None
        self._open: str | None = None

    def start(self) -> None:
        """Begin the component's wall-clock interval."""
        self._t_start = time.perf_counter()

    def stop(self) -> None:
        """End the wall-clock interval (idempotent)."""
        if self._t_stop is None:
            self._t_stop = time.perf_counter()

    @property
    def wall_s(self) -> float:
        """Wall time from :meth:`start` to :meth:`stop` (or to now)."""
        if self._t_start is None:
            return 0.0
        end = self._t_stop if self._t_stop is not None else time.perf_counter()
        return end - self._t_start

    @property
    def unaccounted_s(self) -> float:
        """Wall time spent outside every section."""
        return self.wall_s - sum(self.seconds.values())

    @contextmanager
    def section(self, category: str, event: str | None = None, nbytes: int | None = None, record: bool = True,
                **extra: Any) -> Iterator[dict[str, Any]]:
        """Time a block as ``category``; record it as event kind ``event`` (default: the category).

        ``nbytes`` marks the block as a transfer of that many bytes (throughput FOMs); a block
        that learns its size inside can set ``info["nbytes"]`` on the yielded dict instead.
        A block that knows part of its time was spent waiting for the peer (a writer blocked
        on a full queue) sets ``info["waited_s"]``: that part goes to ``wait``, not ``category``.
        The yielded dict is merged into the event, so a block can add results (a loss, a step).
        ``record=False`` counts the time without an event (bookkeeping not worth a sample).
        """
        if category not in self.seconds:
            raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
        if self._open is not None:
            raise RuntimeError(f"section {category!r} opened inside section {self._open!r}: sections must not nest")
        self._open = category
        info: dict[str, Any] = dict(extra)
        t0 = time.perf_counter()
        try:
            yield info
        finally:
            dt = time.perf_counter() - t0
            self._open = None
            nbytes = info.pop("nbytes", nbytes)
            waited = min(max(float(info.get("waited_s", 0.0)), 0.0), dt)
            self.seconds[category] += dt - waited
            self.seconds["wait"] += waited
            self.counts[category] += 1
            if nbytes is not None:
                self.transfer_bytes[category] += nbytes
                self.transfer_seconds[category] += dt - waited
            if record and self.record_events:
                self._record(event or category, t0, dt, nbytes, info)

    def event(self, kind: str, t0_perf: float, dt_s: float, nbytes: int | None = None, **info: Any) -> None:
        """Record an event spanning several sections (an epoch split by heartbeats); no time is added."""
        if self.record_events:
            self._record(kind, t0_perf, dt_s, nbytes, info)

    def _record(self, kind: str, t0: float, dt: float, nbytes: int | None, info: dict[str, Any]) -> None:
        self.events.append(
            {
                "component": self.component,
                "rank": self.rank,
                "kind": "step" if kind == "compute" and self.component == "sim" else kind,
                "t0_s": t0 + self._offset,
                "dt_s": dt,
                "nbytes": nbytes,
                **info,
            }
        )

    def throughput_GBps(self, category: str) -> float | None:
        """Bytes over seconds of the category's transfers, in GB/s (1e9 B); None without transfers."""
        seconds = self.transfer_seconds.get(category, 0.0)
        if seconds <= 0:
            return None
        return self.transfer_bytes[category] / seconds / 1e9

    def percent(self, category: str) -> float:
        """Share of the wall time spent in ``category`` (percent)."""
        wall = self.wall_s
        return 100.0 * self.seconds[category] / wall if wall > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """Plain-data summary (seconds, bytes, counts, wall and unaccounted)."""
        return {
            "wall_s": self.wall_s,
            "seconds": dict(self.seconds),
            "unaccounted_s": self.unaccounted_s,
            "transfer_bytes": dict(self.transfer_bytes),
            "transfer_seconds": dict(self.transfer_seconds),
            "counts": dict(self.counts),
        }
