"""The streaming abstraction: a producer sends numbered steps of named arrays straight to a consumer.

Streams are a sibling of the key-value staging interface (:mod:`simai_core.staging.base`),
not a kind of it: there is no key to fetch and nothing stays behind after a step. A
:class:`StreamWriter` opens a stream, and for each step calls ``begin_step``, ``put`` one or
more arrays and ``end_step``. A :class:`StreamReader` receives the steps in order with
``next_step`` (each with a deadline), ``get`` s the arrays it wants and ``end_step`` s.

Every step carries the writer's step id (0, 1, 2, ...) and the writer's wall clock at
``begin_step``. A reader therefore knows which steps it missed (in ``async`` mode the writer
discards steps rather than wait) and how old each step is.
"""

from __future__ import annotations

import enum
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import numpy as np

from simai_core.errors import SimaiError
from simai_core.staging.base import ArrayLike

StreamMode = Literal["sync", "async"]
STREAM_MODES: tuple[StreamMode, ...] = ("sync", "async")


class StreamError(SimaiError):
    """A stream failed: the peer went away, a step is malformed, or an operation is out of order."""


class StreamTimeoutError(StreamError, TimeoutError):
    """A wait on a stream (open, next step) passed its deadline."""


@dataclass(frozen=True)
class StreamConfig:
    """How a stream behaves; the writer and the reader of one stream should use the same settings.

    ``sync``: the writer waits for the reader (it blocks in ``open`` until a reader joins and in
    ``end_step`` while ``queue_limit`` steps are unread), so no step is lost. ``async``: the
    writer never waits; a step that finds the queue full is discarded.
    """

    mode: StreamMode = "sync"
    queue_limit: int = 2  # steps held for readers; 1 costs ~44 ms per small step over TCP (delayed ACK)
    open_timeout_s: float = 60.0
    step_timeout_s: float = 60.0
    network_interface: str = "lo"
    data_plane: str = "auto"  # auto: from the network interface and what the library was built with
    engine_params: Mapping[str, str] = field(default_factory=dict)  # passed to the engine last (e.g. ControlTransport)

    def __post_init__(self) -> None:
        if self.mode not in STREAM_MODES:
            raise ValueError(f"stream mode must be one of {STREAM_MODES}, not {self.mode!r}")
        if self.queue_limit < 0:
            raise ValueError(f"queue_limit must be >= 0 (0 = unlimited), not {self.queue_limit}")
        if self.open_timeout_s <= 0 or self.step_timeout_s <= 0:
            raise ValueError("open_timeout_s and step_timeout_s must be positive")


@dataclass(frozen=True)
class StepInfo:
    """One received step: the writer's step id (gaps are steps this reader never got) and send time."""

    step_id: int
    sent_ns: int  # the writer's time.time_ns() at begin_step: comparable with the reader's on one node

    def age_s(self) -> float:
        """Seconds since the writer began this step (exact on one node, clock skew across nodes)."""
        return (time.time_ns() - self.sent_ns) / 1e9


class StepStatus(enum.Enum):
    """Why a reader got no step."""

    NOT_READY = "not ready"
    END = "end of stream"


class StreamWriter(ABC):
    """The producer end of a stream, one per writing process; a context manager (open ... close)."""

    backend: str = ""

    def __init__(self) -> None:
        self._next_id = 0
        self._in_step = False

    @property
    def steps_written(self) -> int:
        """Steps ended so far (in async mode, including those the stream discarded)."""
        return self._next_id

    @abstractmethod
    def open(self) -> None:
        """Create the stream; in sync mode, wait (up to the open deadline) for a reader to join."""

    def begin_step(self) -> int:
        """Start the next step and return its id."""
        if self._in_step:
            raise StreamError("begin_step called twice without end_step")
        self._begin(StepInfo(self._next_id, time.time_ns()))
        self._in_step = True
        return self._next_id

    @abstractmethod
    def put(self, name: str, array: ArrayLike) -> None:
        """Add an array to the current step; it must stay unchanged until ``end_step`` returns."""

    def end_step(self) -> None:
        """Publish the current step (sync mode: may wait, up to the step deadline, for queue space)."""
        if not self._in_step:
            raise StreamError("end_step called without begin_step")
        self._end()
        self._in_step = False
        self._next_id += 1

    def write_step(self, arrays: Mapping[str, ArrayLike]) -> int:
        """One whole step: begin, put every array, end; returns the step id."""
        step_id = self.begin_step()
        for name, array in arrays.items():
            self.put(name, array)
        self.end_step()
        return step_id

    @abstractmethod
    def close(self) -> None:
        """End the stream (readers then see its end) and free everything; calling it twice is harmless."""

    def detail(self) -> dict[str, Any]:
        """Facts for ``simai.backend_detail`` (library version, engine, transport, mode)."""
        return {}

    @abstractmethod
    def _begin(self, info: StepInfo) -> None:
        """Begin a step in the library and attach ``info`` to it."""

    @abstractmethod
    def _end(self) -> None:
        """End the step in the library."""

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamReader(ABC):
    """The consumer end of a stream, one per reading process; a context manager (open ... close)."""

    backend: str = ""

    def __init__(self) -> None:
        self.received: list[int] = []  # step ids received, in order
        self.ended = False  # the end of the stream was seen
        self._in_step = False

    @abstractmethod
    def open(self) -> None:
        """Join the stream; raise :class:`StreamTimeoutError` when no writer shows up in time."""

    def next_step(self, timeout_s: float | None = None) -> StepInfo | None:
        """Wait for the next step; None at the end of the stream, :class:`StreamTimeoutError` on the deadline."""
        result = self._step(timeout_s)
        if result is StepStatus.NOT_READY:
            raise StreamTimeoutError(f"no step arrived on the {self.backend} stream within {self._timeout(timeout_s):g} s")
        return None if result is StepStatus.END else result

    def try_step(self, timeout_s: float = 0.0) -> StepInfo | None:
        """The next step if one is ready within ``timeout_s``, else None (also at the end: see :attr:`ended`)."""
        if self.ended:
            return None
        result = self._step(timeout_s)
        return result if isinstance(result, StepInfo) else None

    @abstractmethod
    def get(self, name: str, out: np.ndarray | None = None) -> np.ndarray:
        """Read array ``name`` of the current step (into ``out`` when given: same shape and dtype)."""

    def end_step(self) -> None:
        """Release the current step to the writer."""
        if not self._in_step:
            raise StreamError("end_step called without a step")
        self._end()
        self._in_step = False

    def steps(self, timeout_s: float | None = None) -> Iterator[StepInfo]:
        """Every step until the end of the stream; each is ended when the loop body is done with it."""
        while (info := self.next_step(timeout_s)) is not None:
            try:
                yield info
            finally:
                self.end_step()

    def discarded(self, steps_written: int, first_id: int = 0) -> int:
        """Steps ``first_id`` .. ``steps_written - 1`` that this reader never received.

        The writer's count has to come from elsewhere: a stream cannot announce a step it discarded.
        """
        got = {i for i in self.received if first_id <= i < steps_written}
        return steps_written - first_id - len(got)

    @abstractmethod
    def close(self) -> None:
        """Leave the stream and free everything; calling it twice is harmless."""

    @abstractmethod
    def _begin(self, timeout_s: float) -> StepInfo | StepStatus:
        """Begin the next step in the library within ``timeout_s``."""

    @abstractmethod
    def _end(self) -> None:
        """End the step in the library."""

    @abstractmethod
    def _timeout(self, timeout_s: float | None) -> float:
        """The deadline a call with ``timeout_s`` uses (None: the configured step deadline)."""

    def _step(self, timeout_s: float | None) -> StepInfo | StepStatus:
        if self._in_step:
            raise StreamError("next_step called before end_step of the previous step")
        result = self._begin(self._timeout(timeout_s))
        if isinstance(result, StepInfo):
            self._in_step = True
            self.received.append(result.step_id)
        self.ended = result is StepStatus.END
        return result

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
