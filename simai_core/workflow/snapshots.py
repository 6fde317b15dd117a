"""How snapshots travel from the simulation to the trainer: through the staging area, or over ADIOS2 SST streams.

The simulation holds a :class:`SnapshotSender`, the trainer a :class:`SnapshotSource`;
the rest of both components does not know which path the data take.

* Staged (default): simulation rank ``s`` puts ``data/<s>/<step>`` at every sync step; the
  trainer fetches the keys of the steps the simulation announced (and deletes them).
* Streamed: simulation rank ``s`` writes one SST step per sync step (arrays ``snapshot``
  and ``step``) to its own stream; the trainer that owns ``s`` reads whatever steps are
  ready, announced or not (in sync mode the writer may be blocked on a full queue, waiting
  for exactly that read). At the end the simulation publishes how many steps it wrote
  (``stream/<s>/steps``) before it closes its stream, and the trainer drains the stream to
  its end and counts the steps it never received (async mode discards them).
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from simai_core.staging.base import StagingClient
from simai_core.workflow.config import StreamedDataConfig, WorkflowConfig
from simai_core.workflow.protocol import Keys, WorkflowError, fetch_announced
from simai_core.workflow.timers import Accounting

#: A batch of received snapshots: sync step -> {simulation rank: snapshot}.
Received = dict[int, dict[int, np.ndarray]]


def _stream_config(data: StreamedDataConfig, cfg: WorkflowConfig) -> Any:
    from simai_core.streaming import StreamConfig

    # A writer opening in sync mode waits for its reader, which joins once the trainer has started up.
    return StreamConfig(mode=data.mode, queue_limit=data.queue_limit, network_interface=data.network_interface,
                        data_plane=data.data_plane, open_timeout_s=cfg.startup_timeout_s,
                        step_timeout_s=cfg.peer_timeout_s)


class SnapshotSender(ABC):
    """The simulation rank's end of the data path."""

    def open(self) -> None:  # noqa: B027  (an optional hook: most paths need none)
        """Get ready to send (may wait for the receiver)."""

    @abstractmethod
    def send(self, step: int, snapshot: np.ndarray) -> float:
        """Send the snapshot of sync step ``step``; returns the seconds of it spent waiting for the receiver."""

    def close(self) -> None:  # noqa: B027  (an optional hook: most paths need none)
        """Finish sending (may wait until the receiver has everything); calling it twice is harmless."""

    def describe(self) -> dict[str, Any]:
        """The data path, for the JSON."""
        return {"kind": "staging"}


class StagedSender(SnapshotSender):
    """Puts every snapshot under its own key."""

    def __init__(self, client: StagingClient, keys: Keys, rank: int) -> None:
        self.client, self.keys, self.rank = client, keys, rank

    def send(self, step: int, snapshot: np.ndarray) -> float:
        self.client.put_tensor(self.keys.data(self.rank, step), snapshot)
        return 0.0


class StreamedSender(SnapshotSender):
    """Writes every snapshot as one step of this rank's SST stream.

    A sync writer's ``end_step`` both hands the step over and, when the queue is full, waits
    for the reader to release one; the library does both in one call. The part of each
    ``end_step`` beyond this writer's fastest one so far counts as waiting (the fastest one
    found room in the queue: the first step always does).
    """

    def __init__(self, cfg: WorkflowConfig, data: StreamedDataConfig, client: StagingClient, keys: Keys, rank: int) -> None:
        from simai_core.streaming import make_writer

        self.client, self.keys, self.rank = client, keys, rank
        self.writer = make_writer(data.stream_path(cfg.run_id, rank), _stream_config(data, cfg))
        self.blocks = data.mode == "sync"
        self._fastest_end_s = math.inf
        self._open = False

    def open(self) -> None:
        self.writer.open()
        self._open = True

    def describe(self) -> dict[str, Any]:
        return {"kind": "adios2-sst", **self.writer.detail()}

    def send(self, step: int, snapshot: np.ndarray) -> float:
        self.writer.begin_step()
        self.writer.put("snapshot", snapshot)
        self.writer.put("step", np.array([step], dtype=np.int64))
        t0 = time.perf_counter()
        self.writer.end_step()
        end_s = time.perf_counter() - t0
        if not self.blocks:  # an async writer never waits: a full queue discards the step instead
            return 0.0
        self._fastest_end_s = min(self._fastest_end_s, end_s)
        return end_s - self._fastest_end_s

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        try:  # published before the close: the trainer sees the end of the stream only after it
            self.client.put_tensor(self.keys.stream_steps(self.rank), np.array([self.writer.steps_written], np.int64))
        finally:
            self.writer.close()


def make_sender(cfg: WorkflowConfig, client: StagingClient, keys: Keys, rank: int) -> SnapshotSender:
    """The sender of simulation rank ``rank`` for the configured data path."""
    if cfg.streamed_data is None:
        return StagedSender(client, keys, rank)
    return StreamedSender(cfg, cfg.streamed_data, client, keys, rank)


class SnapshotSource(ABC):
    """The trainer rank's end of the data path: snapshots of the simulation ranks it owns."""

    def __init__(self, owned: tuple[int, ...], shape: tuple[int, ...], dtype: str, acc: Accounting,
                 keys: Keys) -> None:
        self.owned, self.shape, self.dtype, self.acc, self.keys = owned, shape, dtype, acc, keys

    def open(self) -> None:  # noqa: B027  (an optional hook: most paths need none)
        """Connect to the senders."""

    @abstractmethod
    def receive(self, announced: int) -> Received:
        """New snapshots; ``announced`` is the newest sync step the simulation announced on every scope."""

    def finish(self, timeout_s: float) -> dict[str, int]:
        """After the stop: release the senders within ``timeout_s``; returns counters for the report."""
        return {}

    def close(self) -> None:  # noqa: B027  (an optional hook: most paths need none)
        """Disconnect; calling it twice is harmless."""

    def _buffer(self) -> np.ndarray:
        # A fresh writable buffer per snapshot: the window keeps it.
        return np.empty(self.shape, dtype=self.dtype)


class StagedSource(SnapshotSource):
    """Fetches the keys of the announced steps it has not fetched yet, then deletes them when asked to.

    At most ``MAX_STEPS_PER_RECEIVE`` steps per call, so a trainer that fell behind a fast
    simulation still beats between calls; with a window, steps that would leave it at once
    are deleted unread (counted as skipped) instead of fetched.
    """

    MAX_STEPS_PER_RECEIVE = 32

    def __init__(self, client: StagingClient, interval: int, delete: bool, window: int | None = None,
                 **common: Any) -> None:
        super().__init__(**common)
        self.client, self.interval, self.delete, self.window = client, interval, delete, window
        self.fetched = -1
        self.skipped = 0

    def receive(self, announced: int) -> Received:
        first = (self.fetched // self.interval + 1) * self.interval
        if self.window is not None:
            first = max(first, self._skip_to(first, announced - (self.window - 1) * self.interval))
        last = min(announced, first + (self.MAX_STEPS_PER_RECEIVE - 1) * self.interval)
        received: Received = {}
        for step in range(first, last + 1, self.interval):
            received[step] = {rank: self._fetch(self.keys.data(rank, step)) for rank in self.owned}
            self.fetched = step
        return received

    def _skip_to(self, first: int, oldest: int) -> int:
        """Delete the steps before ``oldest`` unread; returns the first step still to fetch."""
        for step in range(first, oldest, self.interval):
            if self.delete:
                with self.acc.section("data", record=False):
                    for rank in self.owned:
                        self.client.delete(self.keys.data(rank, step))
            self.skipped += 1
            self.fetched = step
        return (self.fetched // self.interval + 1) * self.interval

    def finish(self, timeout_s: float) -> dict[str, int]:
        return {"staged_steps_skipped": self.skipped}

    def _fetch(self, key: str) -> np.ndarray:
        array = fetch_announced(self.client, self.acc, self.keys, key, "data", out=self._buffer())
        if self.delete:
            with self.acc.section("data", record=False):
                self.client.delete(key)
        return array


class StreamedSource(SnapshotSource):
    """Reads the SST stream of every owned simulation rank: each step that is ready, announced or not."""

    def __init__(self, cfg: WorkflowConfig, data: StreamedDataConfig, client: StagingClient, **common: Any) -> None:
        super().__init__(**common)
        from simai_core.streaming import make_reader

        self.client = client
        config = _stream_config(data, cfg)
        self.readers = {rank: make_reader(data.stream_path(cfg.run_id, rank), config) for rank in self.owned}

    def open(self) -> None:
        # Waiting for the peer, like the writer's open: a writer admits readers only at its step boundaries.
        for reader in self.readers.values():
            with self.acc.section("wait", what="stream_open"):
                reader.open()

    def receive(self, announced: int) -> Received:
        received: Received = {}
        for rank, reader in self.readers.items():
            while self._poll(reader):
                with self.acc.section("data", what="stream_step") as ev:
                    snapshot = reader.get("snapshot", out=self._buffer())
                    step = int(reader.get("step")[0])
                    reader.end_step()
                    ev["nbytes"], ev["step"], ev["sim_rank"] = snapshot.nbytes, step, rank
                received.setdefault(step, {})[rank] = snapshot
        return received

    def _poll(self, reader: Any) -> bool:
        with self.acc.section("data", record=False):
            return reader.try_step() is not None

    def finish(self, timeout_s: float) -> dict[str, int]:
        """Drain every stream to its end, then count what never arrived against what the writer says it wrote."""
        deadline = time.monotonic() + timeout_s
        late = 0  # steps drained after the stop, never trained on
        for rank, reader in self.readers.items():
            with self.acc.section("wait", what="stream_drain"):
                # Each wait gets what is left of the one deadline.
                while reader.next_step(max(0.0, deadline - time.monotonic())) is not None:
                    step = int(reader.get("step")[0])  # 8 bytes: the event names what was drained
                    reader.end_step()
                    self.acc.event("stream_late", time.perf_counter(), 0.0, step=step, sim_rank=rank)
                    late += 1
        written = {rank: self._steps_written(rank) for rank in self.owned}
        # An async writer does not wait for its reader: steps before the reader joined are discarded too.
        before_join = sum(r.received[0] if r.received else 0 for r in self.readers.values())
        return {"stream_steps_written": sum(written.values()),
                "stream_steps_received": sum(len(r.received) for r in self.readers.values()),
                "stream_steps_late": late,
                "stream_discarded_steps": sum(r.discarded(written[rank]) for rank, r in self.readers.items()),
                "stream_discarded_before_join": before_join}

    def _steps_written(self, rank: int) -> int:
        with self.acc.section("meta"):
            count = self.client.get_tensor(self.keys.stream_steps(rank))
        if count is None:
            raise WorkflowError(f"simulation rank {rank} closed its stream without publishing its step count")
        return int(count[0])

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()


def make_source(cfg: WorkflowConfig, client: StagingClient, keys: Keys, owned: tuple[int, ...],
                shape: tuple[int, ...], acc: Accounting) -> SnapshotSource:
    """The trainer rank's source of the snapshots of ``owned`` for the configured data path."""
    common: dict[str, Any] = {"owned": owned, "shape": shape, "dtype": cfg.problem.dtype, "acc": acc, "keys": keys}
    if cfg.streamed_data is None:
        return StagedSource(client, cfg.simulation.train_interval, cfg.trainer.delete_consumed, cfg.trainer.window,
                            **common)
    return StreamedSource(cfg, cfg.streamed_data, client, **common)
