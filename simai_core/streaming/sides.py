"""The four ends of a benchmarked pair: SST stream writer/reader and BP5 file writer/reader.

See :mod:`.harness` for the round protocol. The writer end sends its round times to the
reader end when it closes, so a serial run (writer in the peer process) reports both.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from simai_core.streaming.adios2_sst import Adios2StreamReader, Adios2StreamWriter
from simai_core.streaming.base import StreamError
from simai_core.streaming.harness import (
    PATIENCE_S,
    Burst,
    Plan,
    Side,
    bp5_foms,
    join_reader,
    join_writer,
    payload,
    stream_foms,
    tick_until_word,
)
from simai_core.streaming.pair import PairLink


class StreamWriterSide(Side):
    """Writes bursts of steps to an SST stream; in async mode, ticks after each burst until the reader is done."""

    def open(self) -> None:
        self.data = payload(self.plan.nbytes, self.plan.seed)
        self.writer = Adios2StreamWriter(self.plan.path(), self.plan.config(), "SST", watchdog_fd=self.watchdog_fd)
        self.writer.open()  # sync mode: returns once the reader joined
        join_reader(self.writer, self.link, self.plan.mode, self.plan.open_timeout_s)

    def raw(self) -> None:
        start = time.perf_counter()
        for _ in range(self.plan.steps):
            self.link.send_bytes(self.data.data)
        self.raw_s.append(time.perf_counter() - start)

    def prepare(self) -> None:
        self.link.send({"first": self.writer.steps_written})

    def round(self) -> None:
        start = time.perf_counter()
        for _ in range(self.plan.steps):
            self.writer.write_step({"data": self.data})
        self.round_s.append(time.perf_counter() - start)
        if self.plan.mode == "async":
            tick_until_word(self.writer, self.link, self.plan.step_timeout_s, "finish a burst", PATIENCE_S)

    def close(self) -> dict[str, Any]:
        self.writer.close()
        return self._hand_over_results()


class StreamReaderSide(Side):
    """Receives the bursts and records what arrived when (:class:`~.harness.Burst`)."""

    def open(self) -> None:
        self.out = np.empty(self.plan.nbytes, np.uint8)
        self.bursts: list[Burst] = []
        self.reader = Adios2StreamReader(self.plan.path(), self.plan.config(), "SST", watchdog_fd=self.watchdog_fd)
        join_writer(self.reader, self.link)

    def raw(self) -> None:
        start = time.perf_counter()
        for _ in range(self.plan.steps):
            self.link.recv_into(self.out.data)
        self.raw_s.append(time.perf_counter() - start)

    def prepare(self) -> None:
        self.bursts.append(Burst(int(self.link.recv()["first"])))

    def round(self) -> None:
        burst = self.bursts[-1]
        last_id = burst.first_id + self.plan.steps - 1
        start = time.perf_counter()
        while True:
            info = self.reader.next_step()  # async: the writer's ticks keep this from waiting long
            if info is None:
                raise StreamError(f"the stream ended in the middle of a burst (waiting for step {last_id})")
            if info.step_id >= burst.first_id and info.step_id <= last_id:
                self.reader.get("data", self.out)
                burst.arrived(time.perf_counter() - start, info)
            self.reader.end_step()  # older ids are ticks or stragglers; a later id is a tick: the burst is over
            if info.step_id >= last_id:
                break
        self.round_s.append(time.perf_counter() - start)
        if self.plan.mode == "async":
            self.link.send({"done": True})

    def close(self) -> dict[str, Any]:
        while self.reader.next_step() is not None:  # ticks written before the writer heard we were done
            self.reader.end_step()
        self.reader.close()
        return self.link.recv()

    def foms(self) -> dict[str, float]:
        """This end's FOMs (see :func:`~.harness.stream_foms`)."""
        return stream_foms(self.plan, self.bursts, self.reader.received, self.raw_s)

    def check(self) -> None:
        """The last step received holds the writer's bytes."""
        if not np.array_equal(self.out, payload(self.plan.nbytes, self.plan.seed)):
            raise StreamError(f"{self.plan.path()}: the data received differ from the data sent")


class Bp5WriterSide(Side):
    """Writes each burst to a new BP5 directory (open, steps, close), and the same bytes to a plain file."""

    def open(self) -> None:
        self.data = payload(self.plan.nbytes, self.plan.seed)

    def raw(self) -> None:
        path = self.plan.path("-raw.bin")
        start = time.perf_counter()
        with open(path, "wb") as f:
            for _ in range(self.plan.steps):
                f.write(self.data.data)
        self.raw_s.append(time.perf_counter() - start)
        self._hand_over(path)

    def round(self) -> None:
        path = self.plan.path(f"-{len(self.round_s)}.bp")
        start = time.perf_counter()
        with Adios2StreamWriter(path, self.plan.config(), "BP5", watchdog_fd=self.watchdog_fd) as writer:
            for _ in range(self.plan.steps):
                writer.write_step({"data": self.data})
        self.round_s.append(time.perf_counter() - start)
        self._hand_over(path)

    def _hand_over(self, path: Path) -> None:
        self.link.send({"file": str(path)})
        self.link.recv()  # the reader read and removed it

    def close(self) -> dict[str, Any]:
        return self._hand_over_results()


class Bp5ReaderSide(Side):
    """Reads each burst's BP5 directory (open, steps, close) and the plain file, then removes them."""

    def open(self) -> None:
        self.out = np.empty(self.plan.nbytes, np.uint8)

    def raw(self) -> None:
        path = self._run_file(self.link.recv()["file"])
        start = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            for _ in range(self.plan.steps):
                if f.readinto(self.out.data) != self.plan.nbytes:
                    raise StreamError(f"{path} is shorter than the data written")
        self.raw_s.append(time.perf_counter() - start)
        path.unlink()
        self.link.send({"done": True})

    def round(self) -> None:
        path = self._run_file(self.link.recv()["file"])
        start = time.perf_counter()
        with Adios2StreamReader(path, self.plan.config(), "BP5", watchdog_fd=self.watchdog_fd) as reader:
            for _ in reader.steps():
                reader.get("data", self.out)
        self.round_s.append(time.perf_counter() - start)
        if reader.received != list(range(self.plan.steps)):
            raise StreamError(f"BP5 file {path} held steps {reader.received}, expected {self.plan.steps}")
        shutil.rmtree(path)
        self.link.send({"done": True})

    def close(self) -> dict[str, Any]:
        return self.link.recv()

    def _run_file(self, name: str) -> Path:
        """``name`` from the writer, when it is inside this run's directory (it is read, then removed)."""
        root, path = Path(self.plan.directory).resolve(), Path(name)
        if path.is_symlink() or path.resolve().parent != root:
            raise StreamError(f"the writer named {name!r}, which is not a file of this run's directory {root}: "
                              f"refusing to read or remove it")
        return path.resolve()

    def foms(self) -> dict[str, float]:
        """This end's FOMs (see :func:`~.harness.bp5_foms`)."""
        return bp5_foms(self.plan, self.round_s, self.raw_s)

    def check(self) -> None:
        """The last step read holds the writer's bytes."""
        if not np.array_equal(self.out, payload(self.plan.nbytes, self.plan.seed)):
            raise StreamError(f"{self.plan.path()}: the data read differ from the data written")


def make_side(link: PairLink, plan: Plan, writer: bool, watchdog_fd: int | None = None) -> Side:
    """The writer or reader end of ``plan``."""
    kinds: dict[tuple[str, bool], type[Side]] = {
        ("stream", True): StreamWriterSide, ("stream", False): StreamReaderSide,
        ("bp5", True): Bp5WriterSide, ("bp5", False): Bp5ReaderSide,
    }
    return kinds[(plan.kind, writer)](link, plan, watchdog_fd)
