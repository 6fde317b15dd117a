"""Dragon backend: a real Dragon runtime and a distributed dictionary (DDict).

The server starts a single-node Dragon runtime for this process when none is running (plain
pytest is not a Dragon process; ``dragon.workflows.runtime.start_local_runtime`` is the way in),
creates a DDict with a ``timeout`` so a full store raises instead of hanging, and hands out the
DDict's serialized descriptor as its address. Tensors are stored as numpy arrays: Dragon pickles
them with protocol 5, which keeps dtype and shape beside the data and writes the buffer into the
manager's pool without an intermediate copy. Blobs are stored as ``bytes``.

Under ``mpiexec`` the ranks are not Dragon processes, so the backend reports itself unavailable
there (the same answer on every rank, so every rank skips). The exception is an ``mpiexec`` that
the runtime itself started (:mod:`.dragon_mpi`, marked by ``SIMAI_DRAGON_MPI=1``): its ranks
inherit the runtime's environment, attach one at a time (:func:`share_attachment`) and then
use the DDict together.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import io
import json
import os
import pickle
import re
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from simai_core import mpi
from simai_core.errors import BackendUnavailableError, SimaiError, StagingFullError
from simai_core.private import (
    SharedMachineWarning,
    is_own_file,
    is_own_process,
    private_dir,
    process_identity,
    read_own_file,
    replace_private,
)
from simai_core.profiles import MachineProfile
from simai_core.staging.base import ArrayLike, RawReference, StagingClient, StagingServer, as_numpy, check_out

DEFAULT_TIMEOUT_S = 30.0  # any DDict operation; a full store times out after this instead of hanging
MAX_TOTAL_MEM = 2 * 2**30  # the DDict's pools are sized up front (rounded up to a power of two)
_FULL_THRESHOLD = 0.9  # DDict's manager_pool_full_thresh: a manager refuses puts past this fill
_RESERVED_POOL_BYTES = 2**20  # Dragon's RESERVED_POOL_SPACE: a manager refuses puts with less free
_ROOM_CHECK_FRACTION = 16  # values of at least 1/16 of a manager's pool are checked for room first
_RUNTIME_START_S = 60.0
# One record per live runtime of this suite (owner, processes, pool files), so that the next run can
# clean up after one that was SIGKILLed before it could stop its runtime.
_RECORDS = Path(tempfile.gettempdir()) / f"simai-dragon-{getpass.getuser()}"
# Each DDict orchestrator writes a metadata file (ddict_orc_<name>) to its persist_path, the working
# directory by default, and removes it only when the DDict is destroyed: keep them beside the record.
_METADATA_SUFFIX = ".ddict"
# /dev/shm names of the runtime's pools ("D" + uid, PID and suffix digits) and DDict pools ("DD" + name):
# a name, never a path, so a record can point nowhere outside /dev/shm.
_POOL_NAME = re.compile(r"DD[A-Za-z0-9_-]{1,60}")
_ORCHESTRATOR_NOTE = ("the DDict orchestrator busy-polls a whole core while idle; on a 2-core machine that core "
                      "is taken from the benchmark, which matters when reading the numbers")

def check_available(name: str) -> None:
    """Raise when dragonhpc is missing or the run is under mpiexec (its ranks are not Dragon processes)."""
    try:
        import dragon  # noqa: F401
    except ImportError:
        raise BackendUnavailableError("Backend 'dragon' needs dragonhpc: install it with pip install -e '.[dragon]' "
                                      "(or pip install dragonhpc==0.15.0)") from None

    if mpi.size() > 1 and os.environ.get(MPI_MARK) != "1":
        raise BackendUnavailableError(
            "Backend 'dragon' does not run under mpiexec (its ranks are not Dragon processes): "
            "run Dragon benchmarks serially or under the dragon launcher")


MPI_MARK = "SIMAI_DRAGON_MPI"  # set to 1 in the environment of an mpiexec that a Dragon runtime started
# DDict handles attached once per process and shared by its clients (ranks that share one Dragon identity
# must attach one at a time; see dragon_mpi).
_SHARED: dict[str, Any] = {}


def share_attachment(address: str, ddict: Any) -> None:
    """Let every later client of ``address`` in this process use ``ddict`` (attached already) instead of attaching."""
    _SHARED[address] = ddict


def drop_attachment(address: str) -> Any:
    """Stop sharing the handle of ``address``; returns it (the caller detaches it), or None."""
    return _SHARED.pop(address, None)


def make_server(name: str, profile: MachineProfile, workdir: Path) -> DragonServer:
    """A DDict sized from the profile: one manager, ``staging.memory_bytes`` capped at 2 GiB and 1/4 of /dev/shm."""
    return DragonServer(total_mem=_capped_memory(profile.staging.memory_bytes))


def connect(name: str, address: str) -> DragonClient:
    """A client attached to the DDict whose serialized descriptor is ``address``."""
    return DragonClient(address)


def raw_reference(name: str, address: str) -> RawReference:
    """DDict put/get of the raw bytes, without the staging layer's array header."""
    return DragonRaw(address)


def _capped_memory(requested: int) -> int:
    shm = os.statvfs("/dev/shm")
    # The runtime itself reserves about 6 GiB of sparse pools in /dev/shm; leave room for them.
    return max(8 * 2**20, min(requested, MAX_TOTAL_MEM, shm.f_bavail * shm.f_frsize // 4))


def _start_runtime() -> Any:
    """Start a single-node runtime and attach this process to it (the launcher must be on PATH)."""
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    from dragon.workflows.runtime import attach, start_local_runtime

    # start_local_runtime prints an info dict holding the attach token; keep it out of the log.
    with contextlib.redirect_stdout(io.StringIO()):
        runtime = start_local_runtime(timeout=_RUNTIME_START_S)
    try:
        return attach(runtime=runtime)
    except BaseException:
        runtime.stop()
        raise


def _descendants(pid: int) -> set[int]:
    import psutil

    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _started(pid: int) -> int | None:
    """When a live (not zombie) process started, in clock ticks since boot; None when it is gone."""
    identity = process_identity(pid)
    return None if identity is None else identity[0]


def _records_dir() -> Path:
    """The run records' directory: private to this user (made 0700, or refused when anyone else could write it)."""
    return private_dir(_RECORDS)


def reap_orphans() -> dict[str, list[Any]]:
    """Clean up after runs of this suite that were killed before they stopped their Dragon runtime.

    For every record whose owner is gone: kill the recorded processes that are still the recorded
    ones (same PID, start time and user, so a reused PID is left alone) and remove the recorded
    pool files that are this user's and named as the runtime names them. Whatever else a record
    lists is refused with a :class:`~simai_core.private.SharedMachineWarning`.
    """
    killed: list[int] = []
    removed: list[str] = []
    for path in sorted(_records_dir().glob("*.json")):
        try:
            record = json.loads(read_own_file(path))
            if record["uid"] != os.geteuid():
                raise ValueError(f"it was written for uid {record['uid']}")
            if is_own_process(record["owner"], record["owner_start"]):
                continue  # its owner still runs
            pids, shm = _trusted(path, record)
        except OSError as exc:  # NotPrivateError included: left where it is
            warnings.warn(f"Dragon run record {path} refused: {exc}", SharedMachineWarning, stacklevel=2)
            continue
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # ours, but not a record of this version
            warnings.warn(f"Dragon run record {path} refused and removed ({type(exc).__name__}: {exc})",
                          SharedMachineWarning, stacklevel=2)
            path.unlink(missing_ok=True)
            continue
        done = _force_clean(pids, shm)
        shutil.rmtree(path.with_suffix(_METADATA_SUFFIX), ignore_errors=True)
        killed += done["killed_pids"]
        removed += done["removed_shm_files"]
        path.unlink(missing_ok=True)
    return {"killed_pids": killed, "removed_shm_files": removed}


def _trusted(path: Path, record: dict[str, Any]) -> tuple[set[int], list[str]]:
    """The record's processes that are still the recorded ones of this user, and its pool files that are ours."""
    pids = {int(pid) for pid, started in record["pids"].items() if is_own_process(int(pid), started)}
    shm: list[str] = []
    refused: list[str] = []
    for name in record["shm"]:
        (shm if _own_pool_file(name) else refused).append(name)
    if refused:
        warnings.warn(f"Dragon run record {path}: refused to remove {refused} from /dev/shm (not a pool file of "
                      f"yours: the runtime's are named like DD0123def0)", SharedMachineWarning, stacklevel=3)
    return pids, shm


def _own_pool_file(name: Any) -> bool:
    """Whether ``name`` is a Dragon pool name (no path in it) and /dev/shm/``name`` is a file of this user or gone."""
    if not isinstance(name, str) or not _POOL_NAME.fullmatch(name):
        return False
    try:
        return is_own_file(Path("/dev/shm", name))
    except FileNotFoundError:
        return True


def _force_clean(pids: set[int], shm_files: Iterable[str]) -> dict[str, list[Any]]:
    """SIGKILL ``pids`` and remove ``shm_files`` from /dev/shm; returns what was killed and removed."""
    killed, removed = [], []
    for pid in sorted(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    for name in sorted(shm_files):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/dev/shm/{name}")
            removed.append(name)
    return {"killed_pids": killed, "removed_shm_files": removed}


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if process_identity(pid) is not None}


def runtime_exit_code() -> int | None:
    """The exit code of the runtime this process started, once its launcher exited; None while it runs.

    None too under ``dragon python -m pytest`` (the surrounding runtime is not this process's to watch).
    Dragon's process and channel calls wait on the runtime's services with no timeout: ask this first.
    """
    proc = getattr(_Runtime.handle, "_proc", None)  # the launcher subprocess of start_local_runtime
    return None if proc is None else proc.poll()


class _Runtime:
    """The Dragon runtime this process started: one per process.

    Dragon 0.15 cannot start a second runtime in a process that stopped one (creating a DDict
    then fails with DRAGON_OBJECT_DESTROYED), so servers share it and it is stopped at exit,
    or by a server made with ``owns_runtime=True``.
    """

    handle: ClassVar[Any] = None
    launcher_pid: ClassVar[int | None] = None
    pids: ClassVar[set[int]] = set()
    shm_before: ClassVar[set[str]] = set()
    start_s: ClassVar[float | None] = None
    stopped: ClassVar[bool] = False
    leftovers: ClassVar[dict[str, list[Any]]] = {}
    reaped: ClassVar[dict[str, list[Any]]] = {}

    @classmethod
    def ensure(cls) -> None:
        import dragon

        if cls.handle is not None or dragon.in_dragon():
            return
        if cls.stopped:
            raise RuntimeError("This process already stopped its Dragon runtime; Dragon 0.15 cannot start another one")
        cls.reaped = reap_orphans()
        cls.shm_before = set(os.listdir("/dev/shm"))
        t0 = time.perf_counter()
        cls.handle = _start_runtime()
        cls.start_s = time.perf_counter() - t0
        cls.launcher_pid = cls.handle._proc.pid
        cls.pids = {cls.launcher_pid}
        atexit.register(shutdown_runtime)
        cls.note_processes()

    @classmethod
    def note_processes(cls) -> None:
        """Remember every process under the launcher now (DDict orchestrators and managers come and go)."""
        if cls.launcher_pid is not None:
            cls.pids |= _descendants(cls.launcher_pid)
            cls.save_record()

    @classmethod
    def record_path(cls) -> Path:
        """Where this process records its runtime."""
        return _RECORDS / f"{os.getpid()}.json"

    @classmethod
    def metadata_dir(cls) -> Path:
        """Where this process's DDict orchestrators write their metadata files."""
        return cls.record_path().with_suffix(_METADATA_SUFFIX)

    @classmethod
    def save_record(cls) -> None:
        """Record the runtime's processes and pool files for :func:`reap_orphans` (atomically)."""
        _records_dir()
        record = {"owner": os.getpid(), "owner_start": _started(os.getpid()), "uid": os.geteuid(),
                  "pids": {str(p): t for p in cls.pids if (t := _started(p)) is not None},
                  "shm": sorted(cls.shm_files())}
        replace_private(cls.record_path(), json.dumps(record))

    @classmethod
    def shm_files(cls) -> set[str]:
        """This run's pool files: this user's, new since the start, and named after the launcher's PID."""
        if cls.launcher_pid is None:
            return set()
        prefix, full = runtime_pool_prefix(cls.launcher_pid), str(cls.launcher_pid)
        new = set(os.listdir("/dev/shm")) - cls.shm_before
        return {f for f in new if (f.startswith(prefix) or (f.startswith("DD") and full in f)) and _own_pool_file(f)}


def runtime_pool_prefix(pid: int) -> str:
    """How the /dev/shm files of a Dragon runtime launched as ``pid`` by this user begin.

    Dragon names its pools ``D`` + the uid's and the PID's last three digits (``runtime_pool_name``)
    and shm_open adds another ``D``.
    """
    return f"DD{str(os.getuid())[-3:]}{str(pid)[-3:]}"


def shutdown_runtime() -> dict[str, list[Any]]:
    """Stop the runtime this process started, kill (by PID) what it left, remove its pool files.

    Returns what had to be cleaned up by force; harmless when no runtime was started.
    """
    handle, _Runtime.handle = _Runtime.handle, None
    if handle is None:
        return _Runtime.leftovers
    _Runtime.stopped = True
    _Runtime.note_processes()
    handle.stop(timeout=20)
    if handle._proc is not None and handle._proc.stdout is not None:
        handle._proc.stdout.close()  # Dragon leaves the launcher's pipe open (a ResourceWarning)
    deadline = time.monotonic() + 5
    while _alive(_Runtime.pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    _Runtime.leftovers = _force_clean(_alive(_Runtime.pids), _Runtime.shm_files())
    shutil.rmtree(_Runtime.metadata_dir(), ignore_errors=True)
    _Runtime.record_path().unlink(missing_ok=True)
    return _Runtime.leftovers


class DragonServer(StagingServer):
    """A DDict in this process's Dragon runtime (started on first use, or the one it already runs in)."""

    backend = "dragon"

    def __init__(self, total_mem: int = 256 * 2**20, managers_per_node: int = 1, timeout_s: float = DEFAULT_TIMEOUT_S,
                 owns_runtime: bool = False) -> None:
        self.total_mem = total_mem
        self.managers_per_node = managers_per_node
        self.timeout_s = timeout_s
        self.owns_runtime = owns_runtime  # stop() also stops the runtime (then no later server can run here)
        self.timings_s: dict[str, float] = {}
        self._ddict: Any = None
        self._address = ""

    @property
    def address(self) -> str:
        return self._address

    def start(self) -> None:
        from dragon.data.ddict import DDict

        _Runtime.ensure()
        if _Runtime.start_s is not None:
            self.timings_s["runtime_start_s"] = _Runtime.start_s
        try:
            _records_dir()
            metadata = private_dir(_Runtime.metadata_dir())
            t0 = time.perf_counter()
            self._ddict = DDict(self.managers_per_node, 1, self.total_mem, timeout=self.timeout_s,
                                manager_pool_full_thresh=_FULL_THRESHOLD, persist_path=str(metadata))
            self.timings_s["ddict_create_s"] = time.perf_counter() - t0
            self._address = self._ddict.serialize()
            _Runtime.note_processes()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Destroy the DDict (and, with ``owns_runtime``, stop the runtime and check nothing of it is left)."""
        ddict, self._ddict = self._ddict, None
        if ddict is not None and runtime_exit_code() is None:  # an ended runtime took the DDict's processes along
            t0 = time.perf_counter()
            with contextlib.suppress(Exception):  # a runtime that died already took the DDict with it
                ddict.destroy()
            self.timings_s["ddict_destroy_s"] = time.perf_counter() - t0
            with contextlib.suppress(OSError):  # empty once every DDict of this process is destroyed
                _Runtime.metadata_dir().rmdir()
        if self.owns_runtime:
            shutdown_runtime()

    def detail(self) -> dict[str, Any]:
        import dragon

        return {
            "dragon": dragon.__version__,
            "managers_per_node": self.managers_per_node,
            "nodes": 1,
            "total_mem_bytes": self.total_mem,
            "timeout_s": self.timeout_s,
            "processes": len(_alive(_Runtime.pids)),
            "runtime": "started in this process" if _Runtime.launcher_pid is not None else "the surrounding Dragon runtime",
            **{k: round(v, 3) for k, v in self.timings_s.items()},
            "reaped_from_killed_runs": len(_Runtime.reaped.get("killed_pids", [])),
            "orchestrator_spins_core": True,
            "note": _ORCHESTRATOR_NOTE,
        }


def _store_error(key: str, nbytes: int, exc: Exception) -> StagingFullError:
    return StagingFullError(f"Dragon DDict could not store {key!r} ({nbytes} bytes) within its timeout; it is probably "
                            f"full. Delete old keys or raise staging.memory_bytes. ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})")


class DragonClient(StagingClient):
    """A DDict client: each put is one message to the key's manager, each get one reply.

    ``clean(prefix)`` lists every key of every manager (the DDict has no prefix query); that is
    O(keys in the store), fine for the suite's few hundred keys. A client-side index would miss
    keys written by other processes, so there is none.
    """

    backend = "dragon"

    def __init__(self, address: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        from dragon.data.ddict import DDict

        self._address, self._timeout_s = address, timeout_s
        self._shared = address in _SHARED  # the process's handle: used, never detached here
        self._ddict: Any = _SHARED[address] if self._shared else DDict.attach(address, timeout=timeout_s)
        pool_bytes = min(s.total_bytes for s in self._ddict.stats)  # a value lives on one manager
        self._capacity = int(pool_bytes * _FULL_THRESHOLD)
        self._room_checked_from = pool_bytes // _ROOM_CHECK_FRACTION

    def _put(self, key: str, value: Any, nbytes: int) -> None:
        from dragon.data.ddict import DDictError

        if nbytes > self._capacity:
            raise StagingFullError(f"{key!r} ({nbytes} bytes) is larger than one DDict manager can hold "
                                   f"({self._capacity} bytes): raise staging.memory_bytes in the machine profile")
        if nbytes >= self._room_checked_from:
            self._check_room(key, nbytes)
        try:
            self._ddict[key] = value
        except (DDictError, TimeoutError) as exc:
            # A put that timed out leaves the rest of its reply in this client's stream (the next
            # read fails with "pickle data was truncated"), so start over on a fresh attachment.
            self._reattach()
            raise _store_error(key, nbytes, exc) from None

    def _check_room(self, key: str, nbytes: int) -> None:
        """Refuse a value that the key's manager has no free block for, before sending it.

        A manager's pool is a buddy allocator: a value takes one block of the next power of two.
        Sent without such a block, Dragon 0.15 usually times out (and this client says "full"),
        but on a loaded node it can store the value cut to its pickle header and report success;
        reads then fail with "pickle data was truncated". One stats round trip (about 2 ms).
        """
        manager, _ = self._ddict._choose_manager_pickle_key(key)  # Dragon's own key-to-manager hash
        stats = self._ddict.dstats[manager]
        block = 1 << (nbytes - 1).bit_length()
        largest = max((size for size, count in stats.free_blocks.items() if count > 0), default=0)
        if block > largest or stats.pool_free_space - block < _RESERVED_POOL_BYTES:
            raise StagingFullError(
                f"Dragon DDict manager {manager} has no room for {key!r} ({nbytes} bytes, a {block}-byte block): "
                f"largest free block {largest} bytes, {stats.pool_free_space} bytes free of {stats.total_bytes}. "
                "Delete old keys or raise staging.memory_bytes.")

    def _reattach(self) -> None:
        from dragon.data.ddict import DDict

        with contextlib.suppress(Exception):
            self._ddict.detach()
        self._ddict = DDict.attach(self._address, timeout=self._timeout_s)
        self._shared = False  # this client's own handle from now on: close() detaches it

    def put_tensor(self, key: str, array: ArrayLike) -> None:
        arr = as_numpy(array)
        self._put(key, arr, arr.nbytes)

    def _get(self, key: str) -> Any:
        try:
            return self._ddict.get(key)
        except RuntimeError as exc:
            if "truncated" not in str(exc):
                raise
            self._reattach()  # the failed read may leave the rest of its reply in this client's stream
            raise SimaiError(f"Dragon DDict holds {key!r} truncated: Dragon 0.15 can store a value cut to its "
                             "pickle header when its manager's pool has no room for it. The value is lost; "
                             "delete the key, and raise staging.memory_bytes if the store was nearly full.") from None

    def get_tensor(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        value = self._get(key)
        if not isinstance(value, np.ndarray):
            return None
        if out is not None:
            check_out(key, out, value.dtype, value.shape)
            np.copyto(out, value)
            return out
        return value

    def put_bytes(self, key: str, data: bytes | memoryview) -> None:
        blob = data if isinstance(data, bytes) else bytes(data)  # a memoryview does not pickle
        self._put(key, blob, len(blob))

    def get_bytes(self, key: str) -> bytes | None:
        value = self._get(key)
        return value if isinstance(value, bytes) else None

    def exists(self, key: str) -> bool:
        return bool(key in self._ddict)

    def delete(self, key: str) -> None:
        from dragon.data.ddict import DDictError

        try:
            del self._ddict[key]  # a pop: the manager removes the key, then sends the value back
        except KeyError:
            return
        except (DDictError, TimeoutError, RuntimeError) as exc:
            # Seen right after the store was full: the value's reply arrives truncated. The key is
            # gone by then, but this client's stream is left mid-message, so reattach and check.
            self._reattach()
            if key in self._ddict:
                raise SimaiError(f"Dragon DDict could not delete {key!r}: {exc}") from exc

    def clean(self, prefix: str) -> int:
        keys = self._ddict.keys()  # a DDictKeysView: one listing per manager
        doomed = [k for k in keys if isinstance(k, str) and k.startswith(prefix)]
        for k in doomed:
            self.delete(k)
        return len(doomed)

    def close(self) -> None:
        ddict, self._ddict = self._ddict, None
        if ddict is not None and not self._shared:
            ddict.detach()

    @property
    def ddict(self) -> Any:
        """The attached DDict (for batched puts and freeze in the benchmarks)."""
        return self._ddict


class DragonRaw(RawReference):
    """DDict put/get of the raw buffer as a pickle-5 ``PickleBuffer``: no dtype/shape header, no array object."""

    description = "Dragon DDict put/get of the raw bytes (pickle-5 buffer), no array header"

    def __init__(self, address: str) -> None:
        from dragon.data.ddict import DDict

        self._ddict: Any = DDict.attach(address, timeout=DEFAULT_TIMEOUT_S)

    def put(self, key: str, data: memoryview) -> None:
        self._ddict[key] = pickle.PickleBuffer(data)

    def get(self, key: str, out: memoryview) -> None:
        value = self._ddict.get(key)
        if value is None:
            raise KeyError(key)
        out.cast("B")[:] = memoryview(value).cast("B")  # lands in `out`, as get_tensor(out=) does

    def close(self) -> None:
        self._ddict.detach()


def time_put_get(ddict: Any, key: str, data: np.ndarray, rounds: int,
                 barrier: Callable[[], Any]) -> tuple[list[tuple[float, float]], list[tuple[float, float]], Any]:
    """(start, end) windows of ``rounds`` puts, then gets, of ``data`` under ``key``, and the last value got.

    Every round starts at ``barrier()`` so that concurrent clients overlap round by round (their
    windows give measured aggregates); the first round of each phase is a warm-up and dropped.
    Times are ``time.perf_counter``: CLOCK_MONOTONIC, one clock for every process of a node.
    """
    windows: list[list[tuple[float, float]]] = [[], []]
    got = None
    for phase, op in enumerate(("put", "get")):
        for _ in range(rounds + 1):
            barrier()
            t0 = time.perf_counter()
            if op == "put":
                ddict[key] = data
            else:
                got = ddict[key]
            windows[phase].append((t0, time.perf_counter()))
    return windows[0][1:], windows[1][1:], got


def concurrent_worker(address: str, wid: int, nbytes: int, rounds: int, barrier: Any, results: Any) -> None:
    """Body of a Dragon-managed benchmark process: time ``rounds`` puts then gets of its own key.

    The round windows go back on ``results`` as ``(wid, put_windows, get_windows, ok)``.
    """
    from dragon.data.ddict import DDict

    ddict = DDict.attach(address, timeout=DEFAULT_TIMEOUT_S)
    data = np.random.default_rng(wid).integers(0, 256, nbytes, dtype=np.uint8)
    try:
        put_w, get_w, got = time_put_get(ddict, f"micro.dragon.mp.{wid}", data, rounds, barrier.wait)
        results.put((wid, put_w, get_w, bool(np.array_equal(got, data))))
    finally:
        ddict.detach()
