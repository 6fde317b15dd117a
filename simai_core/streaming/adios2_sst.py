"""ADIOS2 streams: the SST engine (producer to consumer, in memory) and BP5 files, as StreamWriter/StreamReader.

Layout (M x N). The PyPI build of ADIOS2 has no MPI: each writer process opens its own
stream and one reader process joins it (pairs; the benchmarks pair rank 2i with rank 2i+1).
With an MPI-enabled ADIOS2 (``adios2.is_built_with_mpi``) and a communicator, the ranks of
the communicator share one stream: every writer rank adds its block, and reader rank j reads
block j (or the ``block`` it is given). Arrays are ADIOS2 local arrays, one block per writer,
so both layouts run the same read path.

Deadlines. Reader waits use the library's own timeouts (``OpenTimeoutSecs``, ``BeginStep``
timeout). The writer's waits (open until a reader joins, ``end_step`` on a full queue in sync
mode, close) have none, and the Python binding holds the GIL while it waits, so no Python
timer can interrupt them. Those calls, and every other call that could block, run under
:func:`faulthandler.dump_traceback_later`: a C watchdog thread that, past the deadline,
prints where the process was stuck and ends it (exit code 1) rather than let it hang.
One SST quirk: once an async writer discarded steps, a reader's ``BeginStep`` ignores its
timeout until the writer's next step or close (discarded steps leave placeholders that count
as queued); there only the watchdog bounds the wait, so keep an async writer stepping.

Joining. An SST writer admits readers only at step boundaries (inside its BeginStep/EndStep
calls). In sync mode ``open`` itself waits for the first reader; an async writer that writes
nothing keeps a reader waiting in its ``open``, so it should keep stepping until readers joined.

Files. SST writes a contact file ``<path>.sst`` while the writer is open (removed on close).
A BP5 reader of ADIOS2 2.12 writes ``/tmp/<name>_<pid-hex>_profiling.json`` on close whatever
``TMPDIR`` says; the reader removes its own.
"""

from __future__ import annotations

import faulthandler
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from simai_core.staging.base import ArrayLike, as_numpy
from simai_core.streaming.adios2_setup import (
    INSTALL_HINT,
    built_with_mpi,
    check_available,
    choose_data_plane,
    sst_data_planes,
    sst_parameters,
    stream_detail,
    unavailable_reason,
)
from simai_core.streaming.base import (
    StepInfo,
    StepStatus,
    StreamConfig,
    StreamError,
    StreamReader,
    StreamTimeoutError,
    StreamWriter,
)

T = TypeVar("T")
ENGINES = ("SST", "BP5")
_STEP_ID, _SENT_NS = "__simai_step_id", "__simai_sent_ns"
_GRACE_S = 30.0  # watchdog slack over a native timeout: the library's own deadline should fire first
__all__ = ["INSTALL_HINT", "Adios2StreamReader", "Adios2StreamWriter", "built_with_mpi", "check_available",
           "choose_data_plane", "deadline", "remove_profiling_files", "sst_data_planes", "sst_parameters", "stream_detail",
           "unavailable_reason"]


@contextmanager
def deadline(seconds: float, fd: int | None = None) -> Iterator[None]:
    """End the process with a traceback on ``fd`` (default stderr) if the block runs past ``seconds``.

    For library calls that hold the GIL while they wait; only one such deadline per process.
    """
    faulthandler.dump_traceback_later(seconds, exit=True, file=2 if fd is None else fd)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def remove_profiling_files(path: str | Path) -> None:
    """Remove the ``<name>_<pid-hex>_profiling.json`` this process's BP5 reader of ``path`` dropped."""
    name = f"{Path(path).name}_{os.getpid():x}_profiling.json"
    for folder in {Path("/tmp"), Path(tempfile.gettempdir())}:  # 2.12 hard-codes /tmp; later releases may not
        (folder / name).unlink(missing_ok=True)


def _clean(message: str) -> str:
    """An ADIOS2 exception text without its terminal colours and timestamp."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", message)
    return re.sub(r"^\[[^]]*\]\s*", "", text).strip()


class _Engine:
    """One ADIOS object, IO and engine (shared by the writer and the reader)."""

    def __init__(self, path: str | Path, config: StreamConfig, engine: str, comm: Any, watchdog_fd: int | None) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
        check_available()
        self.path = str(Path(path).absolute())
        self.config = config
        self.kind = engine
        self.comm = comm if comm is not None and built_with_mpi() else None
        self.watchdog_fd = watchdog_fd
        self.engine: Any = None
        self.io: Any = None

    def declare(self, role: str) -> Any:
        from adios2 import bindings

        self._adios = bindings.ADIOS(self.comm) if self.comm is not None else bindings.ADIOS()
        self.io = self._adios.DeclareIO(f"simai-{role}")
        self.io.SetEngine(self.kind)
        params = sst_parameters(self.config) if self.kind == "SST" else {
            "StatsLevel": "0", "OpenTimeoutSecs": str(max(1, math.ceil(self.config.open_timeout_s)))
        } | dict(self.config.engine_params)
        self.io.SetParameters(params)
        return bindings

    def call(self, seconds: float, fn: Callable[[], T]) -> T:
        with deadline(seconds, self.watchdog_fd):
            return fn()

    def finish(self, in_step: bool, close_timeout_s: float) -> None:
        """End the step in progress (``in_step``), then close the engine; a no-op when it is not open."""
        engine, self.engine = self.engine, None
        if engine is None:
            return
        try:
            if in_step:
                self.call(self.config.step_timeout_s, engine.EndStep)
        finally:
            self.call(close_timeout_s, engine.Close)

    def rank(self) -> int:
        return 0 if self.comm is None else int(self.comm.Get_rank())

    def detail(self) -> dict[str, Any]:
        return stream_detail(self.config, self.kind, self.comm)


class _OnEngine:
    """What both ADIOS2 sides share: the engine wrapper, its path and its facts."""

    _x: _Engine

    @property
    def path(self) -> str:
        """The stream name (SST; the contact file is this plus ``.sst``) or BP5 directory."""
        return self._x.path

    def detail(self) -> dict[str, Any]:
        """Facts for ``simai.backend_detail``."""
        return self._x.detail()


class Adios2StreamWriter(_OnEngine, StreamWriter):
    """Writes steps to an SST stream (``engine="SST"``) or a BP5 file (``engine="BP5"``, path ``*.bp``)."""

    backend = "adios2"

    def __init__(self, path: str | Path, config: StreamConfig | None = None, engine: str = "SST", comm: Any = None,
                 watchdog_fd: int | None = None) -> None:
        super().__init__()
        self._x = _Engine(path, config or StreamConfig(), engine, comm, watchdog_fd)
        self._vars: dict[str, tuple[Any, np.dtype[Any]]] = {}
        self._keep: list[np.ndarray] = []  # deferred puts: the arrays must live until end_step

    def open(self) -> None:
        if self._x.engine is not None:
            raise StreamError(f"stream {self.path} is already open")
        contact = Path(f"{self.path}.sst")
        if self._x.kind == "SST" and contact.exists():
            raise StreamError(f"{contact} exists: another writer uses this stream name, or one died without closing; "
                              f"remove the file or pick another name")
        b = self._x.declare("writer")
        self._b = b
        self._step_vars = [self._x.io.DefineVariable(n, np.zeros(1, np.int64)) for n in (_STEP_ID, _SENT_NS)]
        # Sync SST: Open returns once a reader has joined; it has no timeout of its own.
        self._x.engine = self._x.call(self._x.config.open_timeout_s, lambda: _open_until_a_reader_joins(self._x, b))

    def put(self, name: str, array: ArrayLike) -> None:
        if not self._in_step:
            raise StreamError("put called outside a step (call begin_step first)")
        if name.startswith("__simai"):
            raise ValueError(f"array names starting with __simai are reserved: {name!r}")
        data = as_numpy(array)
        if data.ndim == 0:
            raise ValueError(f"put {name!r}: send a scalar as a 1-element array")
        var = self._variable(name, data)
        self._keep.append(data)
        self._x.engine.Put(var, data, self._b.Mode.Deferred)  # copied into the step at end_step, not before

    def _variable(self, name: str, data: np.ndarray) -> Any:
        if name not in self._vars:
            var = self._x.io.DefineVariable(name, data, [], [], list(data.shape))  # local array: one block per writer
            self._vars[name] = (var, data.dtype)
            return var
        var, dtype = self._vars[name]
        if data.dtype != dtype:
            raise ValueError(f"put {name!r}: dtype {data.dtype} differs from the stream's {dtype}")
        var.SetSelection(([], list(data.shape)))
        return var

    def _begin(self, info: StepInfo) -> None:
        if self._x.engine is None:
            raise StreamError("begin_step on a stream that is not open")
        self._x.call(self._x.config.step_timeout_s, self._x.engine.BeginStep)
        for var, value in zip(self._step_vars, (info.step_id, info.sent_ns), strict=True):
            self._x.engine.Put(var, np.array([value], np.int64), self._b.Mode.Sync)

    def _end(self) -> None:
        # Sync SST: EndStep waits while the queue is full; it has no timeout of its own.
        self._x.call(self._x.config.step_timeout_s, lambda: _end_step_until_queue_has_room(self._x))
        self._keep.clear()

    def close(self) -> None:
        in_step, self._in_step = self._in_step, False
        try:
            # Close waits until the readers released every queued step.
            self._x.finish(in_step, self._x.config.step_timeout_s + _GRACE_S)
        finally:
            self._keep.clear()


class Adios2StreamReader(_OnEngine, StreamReader):
    """Reads steps from an SST stream or a BP5 file written by :class:`Adios2StreamWriter`."""

    backend = "adios2"

    def __init__(self, path: str | Path, config: StreamConfig | None = None, engine: str = "SST", comm: Any = None,
                 block: int | None = None, watchdog_fd: int | None = None) -> None:
        super().__init__()
        self._x = _Engine(path, config or StreamConfig(), engine, comm, watchdog_fd)
        self.block = self._x.rank() if block is None else block
        self._ids = np.zeros(2, np.int64)

    def open(self) -> None:
        if self._x.engine is not None:
            raise StreamError(f"stream {self.path} is already open")
        b = self._x.declare("reader")
        self._b = b
        seconds = self._x.config.open_timeout_s
        try:
            self._x.engine = self._x.call(seconds + _GRACE_S, lambda: self._x.io.Open(self.path, b.Mode.Read))
        except RuntimeError as exc:
            text = _clean(str(exc))
            if "did not find active Writer" in text or "could not be found within" in text:
                raise StreamTimeoutError(f"no {self._x.kind} writer for {self.path} within {seconds:g} s "
                                         f"(is the writer running, and did it start first?): {text}") from None
            raise StreamError(f"opening {self._x.kind} stream {self.path} failed: {text}") from None

    def _timeout(self, timeout_s: float | None) -> float:
        return self._x.config.step_timeout_s if timeout_s is None else max(0.0, timeout_s)

    def _begin(self, timeout_s: float) -> StepInfo | StepStatus:
        if self._x.engine is None:
            raise StreamError("next_step on a stream that is not open")
        b = self._b
        status = self._x.call(timeout_s + _GRACE_S, lambda: self._x.engine.BeginStep(b.StepMode.Read, timeout_s))
        if status == b.StepStatus.NotReady:
            return StepStatus.NOT_READY
        if status == b.StepStatus.EndOfStream:
            return StepStatus.END
        if status != b.StepStatus.OK:
            raise StreamError(f"the writer of {self.path} went away mid-stream (ADIOS2 step status {status})")
        for i, name in enumerate((_STEP_ID, _SENT_NS)):
            var = self._x.io.InquireVariable(name)
            if var is None:
                raise StreamError(f"{self.path}: step without {name}: not written by Adios2StreamWriter")
            self._x.engine.Get(var, self._ids[i:i + 1], b.Mode.Sync)  # a value: carried in the metadata
        return StepInfo(int(self._ids[0]), int(self._ids[1]))

    def get(self, name: str, out: np.ndarray | None = None) -> np.ndarray:
        if not self._in_step:
            raise StreamError("get called outside a step (call next_step first)")
        var = self._x.io.InquireVariable(name)
        if var is None:
            names = sorted(n for n in self._x.io.AvailableVariables() if not n.startswith("__simai"))
            raise StreamError(f"step {self.received[-1]} of {self.path} has no array {name!r} (it has {names})")
        var.SetBlockSelection(self.block)
        import adios2

        shape, dtype = tuple(var.Count()), np.dtype(adios2.type_adios_to_numpy(var.Type()))
        if out is None:
            out = np.empty(shape, dtype)
        elif out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
            raise ValueError(f"get {name!r}: out is {out.dtype}{list(out.shape)}, the step holds {dtype}{list(shape)}")
        self._x.call(self._x.config.step_timeout_s, lambda: self._x.engine.Get(var, out, self._b.Mode.Sync))
        return out

    def _end(self) -> None:
        self._x.call(self._x.config.step_timeout_s, self._x.engine.EndStep)

    def close(self) -> None:
        in_step, self._in_step = self._in_step, False
        try:
            self._x.finish(in_step, self._x.config.step_timeout_s)
        finally:
            if self._x.kind == "BP5":
                remove_profiling_files(self.path)


# The watchdog's traceback names the function a process was stuck in; these names say why.
def _open_until_a_reader_joins(x: _Engine, b: Any) -> Any:
    return x.io.Open(x.path, b.Mode.Write)


def _end_step_until_queue_has_room(x: _Engine) -> None:
    x.engine.EndStep()
