"""The protocol of a benchmarked writer/reader pair: plans, round barriers, joining, ticks, FOMs.

A round is a burst of ``steps`` steps of ``nbytes`` each. Before every round (untimed by
pytest-benchmark) the pair meets at a barrier, times the raw baseline on the same bytes,
agrees on the id of the burst's first step and meets again; so the stream and its baseline
see the same machine state. The sides themselves are in :mod:`.sides`.

Async SST needs two workarounds, both by the writer writing empty *tick* steps:

* a reader joins an SST stream only while the writer is inside a step call, so an async
  writer ticks until the reader says it joined (:func:`join_reader`);
* once steps were discarded, an SST reader's ``BeginStep`` ignores its timeout until the
  writer's next step or close (it waits without a deadline in ``waitForNextMetadata``), so
  after a burst the async writer ticks until the reader says it is done (after ``PATIENCE_S``:
  a reader that got the last step answers sooner). The reader knows the burst is over when it
  sees the last step, or any later id (a tick). A tick written after the reader's word can
  still hold a queue slot when the next burst starts, which may cost that burst a step.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from simai_core.streaming.base import StepInfo, StreamConfig, StreamMode, StreamReader, StreamTimeoutError, StreamWriter
from simai_core.streaming.pair import PairLink

T = TypeVar("T")
TICK_S = 0.005  # async: the writer's empty steps while it waits for the reader's word
PATIENCE_S = 0.02  # async: after a burst, the writer ticks only if the reader has not answered by then
RAW_TCP = "TCP socket sendall/recv_into of the same bytes between the same two processes (loopback on one node)"
RAW_FILE = "plain write()/readinto() of the same bytes to one file in the same directory"


def steps_per_round(nbytes: int) -> int:
    """Steps in one timed burst: 32 small ones (a stream, not one message), fewer large ones (16 MiB, at least 4)."""
    return max(4, min(32, 16 * 2**20 // nbytes))


def payload(nbytes: int, seed: int) -> np.ndarray:
    """The bytes a writer sends (random, so nothing compresses; a reader can regenerate them to check)."""
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)


def tick_until_word(writer: StreamWriter, link: PairLink, timeout_s: float, what: str,
                    patience_s: float = 0.0) -> dict[str, Any]:
    """Wait ``patience_s`` for a message on ``link``, then write empty steps every ``TICK_S`` until one comes."""
    deadline = time.monotonic() + timeout_s
    word = link.poll(patience_s)
    while word is None:
        if time.monotonic() > deadline:
            raise StreamTimeoutError(f"the reader did not {what} within {timeout_s:g} s")
        writer.begin_step()
        writer.end_step()
        word = link.poll(TICK_S)
    return word


def join_reader(writer: StreamWriter, link: PairLink, mode: StreamMode, timeout_s: float) -> int:
    """Writer: after ``open``, wait for the reader's word that it joined; tell it and return the first real step id."""
    if mode == "sync":
        link.recv(timeout_s)  # open itself waited for the reader
    else:
        tick_until_word(writer, link, timeout_s, "join the async stream")
    first = writer.steps_written
    link.send({"first": first})
    return first


def join_writer(reader: StreamReader, link: PairLink) -> int:
    """Reader: open ``reader``, tell the writer, and return the id of its first real step (earlier ones are ticks)."""
    reader.open()
    link.send({"joined": True})
    return int(link.recv()["first"])


@dataclass(frozen=True)
class Plan:
    """What one benchmark asks of a pair; sent to a peer as JSON."""

    kind: Literal["stream", "bp5"]
    mode: StreamMode
    nbytes: int
    steps: int
    rounds: int  # timed rounds; ``warmup`` more come first
    directory: str  # the writer's directory for the SST contact file and the BP5 files
    name: str
    seed: int = 0
    warmup: int = 1
    queue_limit: int = 2
    interface: str = "lo"
    data_plane: str = "auto"
    open_timeout_s: float = 60.0
    step_timeout_s: float = 60.0

    @property
    def total_rounds(self) -> int:
        """Warm-up plus timed rounds."""
        return self.warmup + self.rounds

    def config(self) -> StreamConfig:
        """The stream settings of this plan."""
        return StreamConfig(mode=self.mode, queue_limit=self.queue_limit, open_timeout_s=self.open_timeout_s,
                            step_timeout_s=self.step_timeout_s, network_interface=self.interface,
                            data_plane=self.data_plane)

    def path(self, suffix: str = "") -> Path:
        """A path in the writer's directory."""
        return Path(self.directory) / f"{self.name}{suffix}"

    def message(self) -> dict[str, Any]:
        """This plan as a JSON-able dict."""
        return asdict(self)


@dataclass
class Burst:
    """What a reader saw of one burst: its ids, steps received, seconds to the first and the last, the first's age."""

    first_id: int
    got: int = 0
    first_s: float = 0.0
    last_s: float = 0.0
    first_age_s: float = 0.0

    def arrived(self, seconds: float, info: StepInfo) -> None:
        """Count a step that arrived ``seconds`` into the round."""
        if self.got == 0:
            self.first_s, self.first_age_s = seconds, info.age_s()
        self.last_s = seconds
        self.got += 1


@dataclass
class Side:
    """One end of a pair: ``raw``, ``prepare`` and ``round`` run once per round, in step with the other end."""

    link: PairLink
    plan: Plan
    watchdog_fd: int | None = None
    raw_s: list[float] = field(default_factory=list)
    round_s: list[float] = field(default_factory=list)

    def open(self) -> None:
        """Set up before the first round."""

    def raw(self) -> None:
        """The raw baseline of one round."""

    def prepare(self) -> None:
        """Agree on the coming round (untimed)."""

    def round(self) -> None:
        """One timed round."""

    def close(self) -> dict[str, Any]:
        """Tear down after the last round; both ends return the writer end's results."""
        return {}

    def _hand_over_results(self) -> dict[str, Any]:
        """The writer end's timings: sent to the reader end, and returned."""
        results = {"round_s": self.round_s, "raw_s": self.raw_s}
        self.link.send(results)
        return results

    def foms(self) -> dict[str, float]:
        """The FOMs this end measured itself (the reader end's; the writer's come from :func:`writer_foms`)."""
        return {}

    def check(self) -> None:
        """Raise :class:`~.base.StreamError` when the last data this end received differ from what was sent."""


class RoundSetup:
    """The untimed part of every round, as ``benchmark.pedantic(setup=...)``: barriers around the raw baseline."""

    def __init__(self, side: Side, world_sync: Callable[[], None] | None = None) -> None:
        self.side = side
        self.world_sync = world_sync

    def __call__(self) -> None:
        if self.world_sync is not None:
            self.world_sync()
        self.side.link.sync()
        self.side.raw()
        self.side.prepare()
        self.side.link.sync()


def run_side(side: Side) -> dict[str, Any]:
    """Every round of ``side`` without pytest-benchmark (the peer's loop)."""
    side.open()
    setup = RoundSetup(side)
    for _ in range(side.plan.total_rounds):
        setup()
        side.round()
    return side.close()


def timed(samples: Sequence[T], plan: Plan) -> list[T]:
    """The timed rounds' samples (warm-up dropped)."""
    return list(samples[plan.warmup:])


def rate(nbytes: float, seconds: list[float]) -> float:
    """GB/s (1e9 bytes) of ``nbytes`` moved in the median of ``seconds``."""
    return nbytes / statistics.median(seconds) / 1e9


def stream_foms(plan: Plan, bursts: list[Burst], received: list[int], raw_s: list[float]) -> dict[str, float]:
    """The reader end's FOMs: delivered GB/s, first-step age, back-to-back interval, discarded steps, raw GB/s.

    GB/s figures are this pair's own (``_per_pair``: pairs do not time their bursts on one clock).
    ``stream_GBps_per_pair``: the bytes received in a burst over the time from the round's start to the
    last of them. ``step_latency_s``: the age of the burst's first step when its data are in
    the reader's buffer (from the writer's begin_step). ``step_interval_s``: the time between
    steps within a burst. Each is the median over the timed rounds.
    """
    got = set(received)
    bursts = timed(bursts, plan)
    discarded = sum(plan.steps - len(got.intersection(range(b.first_id, b.first_id + plan.steps))) for b in bursts)
    seen = [b for b in bursts if b.got]
    delivered = [b.got * plan.nbytes / b.last_s / 1e9 for b in seen if b.last_s > 0]
    interval = [(b.last_s - b.first_s) / (b.got - 1) for b in seen if b.got > 1]
    return {"stream_GBps_per_pair": statistics.median(delivered) if delivered else 0.0,
            "step_latency_s": statistics.median(b.first_age_s for b in seen) if seen else float("nan"),
            "step_interval_s": statistics.median(interval) if interval else float("nan"),
            "discarded_steps": float(discarded),
            "raw_GBps_per_pair": rate(plan.steps * plan.nbytes, timed(raw_s, plan))}


def writer_foms(plan: Plan, results: dict[str, Any]) -> dict[str, float]:
    """The writer end's FOMs from its round times: ``producer_GBps_per_pair`` (stream), or BP5 and plain-file write GB/s."""
    burst = plan.steps * plan.nbytes
    if plan.kind == "stream":
        return {"producer_GBps_per_pair": rate(burst, timed(results["round_s"], plan))}
    return {"bp5_write_GBps_per_pair": rate(burst, timed(results["round_s"], plan)),
            "raw_write_GBps_per_pair": rate(burst, timed(results["raw_s"], plan))}


def bp5_foms(plan: Plan, round_s: list[float], raw_s: list[float]) -> dict[str, float]:
    """The reader end's BP5 FOMs: read GB/s (open, steps, close) and the plain file's."""
    burst = plan.steps * plan.nbytes
    return {"bp5_read_GBps_per_pair": rate(burst, timed(round_s, plan)),
            "raw_read_GBps_per_pair": rate(burst, timed(raw_s, plan))}
