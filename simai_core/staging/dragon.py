"""Dragon backend: a real Dragon runtime and a distributed dictionary (DDict).

The server starts a single-node Dragon runtime for this process when none is running (plain
pytest is not a Dragon process; ``dragon.workflows.runtime.start_local_runtime`` is the way in),
creates a DDict with a ``timeout`` so a full store raises instead of hanging, and hands out the
DDict's serialized descriptor as its address. Tensors are stored as numpy arrays: Dragon pickles
them with protocol 5, which keeps dtype and shape beside the data and writes the buffer into the
manager's pool without an intermediate copy. Blobs are stored as ``bytes``.

Under ``mpiexec`` the ranks are not Dragon processes, so the backend reports itself unavailable
there (the same answer on every rank, so every rank skips).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from simai_core import mpi
from simai_core.errors import BackendUnavailableError, StagingFullError
from simai_core.profiles import MachineProfile
from simai_core.staging.base import ArrayLike, RawReference, StagingClient, StagingServer, as_numpy

DEFAULT_TIMEOUT_S = 30.0  # any DDict operation; a full store times out after this instead of hanging
MAX_TOTAL_MEM = 2 * 2**30  # the DDict's pools are sized up front (rounded up to a power of two)
_FULL_THRESHOLD = 0.9  # DDict's manager_pool_full_thresh: a manager refuses puts past this fill
_RUNTIME_START_S = 60.0
_ORCHESTRATOR_NOTE = ("the DDict orchestrator busy-polls a whole core while idle; on a 2-core machine that core "
                      "is taken from the benchmark, which matters when reading the numbers")

_runtime: Any = None  # the LocalRuntime this process started (None: none, or one we did not start)


def check_available(name: str) -> None:
    """Raise when dragonhpc is missing or the run is under mpiexec (its ranks are not Dragon processes)."""
    try:
        import dragon  # noqa: F401
    except ImportError:
        raise BackendUnavailableError("Backend 'dragon' needs dragonhpc: install it with pip install -e '.[dragon]' "
                                      "(or pip install dragonhpc==0.15.0)") from None

    if mpi.size() > 1:
        raise BackendUnavailableError(
            "Backend 'dragon' does not run under mpiexec (its ranks are not Dragon processes): "
            "run Dragon benchmarks serially or under the dragon launcher")


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


def _alive(pids: set[int]) -> set[int]:
    import psutil

    return {p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}


class DragonServer(StagingServer):
    """A DDict in a Dragon runtime that this server starts (or in the runtime it already runs in)."""

    backend = "dragon"

    def __init__(self, total_mem: int = 256 * 2**20, managers_per_node: int = 1, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.total_mem = total_mem
        self.managers_per_node = managers_per_node
        self.timeout_s = timeout_s
        self.startup_s: dict[str, float] = {}
        self.leftovers: dict[str, list[Any]] = {}  # what stop() had to clean up by force
        self._ddict: Any = None
        self._address = ""
        self._launcher_pid: int | None = None
        self._pids: set[int] = set()
        self._shm_before: set[str] = set()

    @property
    def address(self) -> str:
        return self._address

    @property
    def pids(self) -> set[int]:
        """Processes of this run's runtime (launcher and everything under it), seen after the DDict was made."""
        return set(self._pids)

    def shm_files(self) -> set[str]:
        """This run's Dragon pool files in /dev/shm."""
        if self._launcher_pid is None:
            return set()
        tail, full = f"{self._launcher_pid % 1000:03d}", str(self._launcher_pid)
        new = set(os.listdir("/dev/shm")) - self._shm_before
        return {f for f in new if f.startswith("DD") and (f.startswith(f"DD0{tail}") or full in f)}

    def start(self) -> None:
        import dragon
        from dragon.data.ddict import DDict

        global _runtime
        if _runtime is None and not dragon.in_dragon():
            self._shm_before = set(os.listdir("/dev/shm"))
            t0 = time.perf_counter()
            _runtime = _start_runtime()
            self.startup_s["runtime_start_s"] = time.perf_counter() - t0
            self._launcher_pid = _runtime._proc.pid
        try:
            t0 = time.perf_counter()
            self._ddict = DDict(self.managers_per_node, 1, self.total_mem, timeout=self.timeout_s,
                                manager_pool_full_thresh=_FULL_THRESHOLD)
            self.startup_s["ddict_create_s"] = time.perf_counter() - t0
            self._address = self._ddict.serialize()
            if self._launcher_pid is not None:
                self._pids = {self._launcher_pid} | _descendants(self._launcher_pid)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Destroy the DDict, stop the runtime this server started, then check nothing of this run is left."""
        global _runtime
        ddict, self._ddict = self._ddict, None
        if ddict is not None:
            t0 = time.perf_counter()
            with contextlib.suppress(Exception):  # a runtime that died already took the DDict with it
                ddict.destroy()
            self.startup_s["ddict_destroy_s"] = time.perf_counter() - t0
        if self._launcher_pid is None:
            return
        runtime, _runtime = _runtime, None
        t0 = time.perf_counter()
        if runtime is not None:
            runtime.stop(timeout=20)
            if runtime._proc is not None and runtime._proc.stdout is not None:
                runtime._proc.stdout.close()  # Dragon leaves the launcher's pipe open (a ResourceWarning)
        self.startup_s["runtime_stop_s"] = time.perf_counter() - t0
        self._reap()
        self._launcher_pid = None

    def _reap(self) -> None:
        """Kill, by PID, any process of this run still alive; remove only this run's pool files."""
        pids = self._pids | _descendants(self._launcher_pid or 0)
        deadline = time.monotonic() + 5
        while _alive(pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = _alive(pids)
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        files = self.shm_files()
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/dev/shm/{name}")
        self.leftovers = {"killed_pids": sorted(survivors), "removed_shm_files": sorted(files)}

    def detail(self) -> dict[str, Any]:
        import dragon

        return {
            "dragon": dragon.__version__,
            "managers_per_node": self.managers_per_node,
            "nodes": 1,
            "total_mem_bytes": self.total_mem,
            "timeout_s": self.timeout_s,
            "processes": len(_alive(self._pids)),
            "runtime": "started by the server" if self._launcher_pid is not None else "the surrounding Dragon runtime",
            **{k: round(v, 3) for k, v in self.startup_s.items()},
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
        self._ddict: Any = DDict.attach(address, timeout=timeout_s)
        stats = self._ddict.stats
        self._capacity = int(min(s.total_bytes for s in stats) * _FULL_THRESHOLD)  # a value lives on one manager

    def _put(self, key: str, value: Any, nbytes: int) -> None:
        from dragon.data.ddict import DDictError

        if nbytes > self._capacity:
            raise StagingFullError(f"{key!r} ({nbytes} bytes) is larger than one DDict manager can hold "
                                   f"({self._capacity} bytes): raise staging.memory_bytes in the machine profile")
        try:
            self._ddict[key] = value
        except (DDictError, TimeoutError) as exc:
            # A put that timed out leaves the rest of its reply in this client's stream (the next
            # read fails with "pickle data was truncated"), so start over on a fresh attachment.
            self._reattach()
            raise _store_error(key, nbytes, exc) from None

    def _reattach(self) -> None:
        from dragon.data.ddict import DDict

        with contextlib.suppress(Exception):
            self._ddict.detach()
        self._ddict = DDict.attach(self._address, timeout=self._timeout_s)

    def put_tensor(self, key: str, array: ArrayLike) -> None:
        arr = as_numpy(array)
        self._put(key, arr, arr.nbytes)

    def get_tensor(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        value = self._ddict.get(key)
        if not isinstance(value, np.ndarray):
            return None
        if out is not None:
            if out.dtype != value.dtype or out.shape != value.shape or not out.flags.c_contiguous:
                raise ValueError(f"{key!r} holds {value.dtype}{list(value.shape)}; `out` is {out.dtype}{list(out.shape)}"
                                 f"{'' if out.flags.c_contiguous else ' (not C-contiguous)'}")
            np.copyto(out, value)
            return out
        return value

    def put_bytes(self, key: str, data: bytes | memoryview) -> None:
        blob = data if isinstance(data, bytes) else bytes(data)  # a memoryview does not pickle
        self._put(key, blob, len(blob))

    def get_bytes(self, key: str) -> bytes | None:
        value = self._ddict.get(key)
        return value if isinstance(value, bytes) else None

    def exists(self, key: str) -> bool:
        return bool(key in self._ddict)

    def delete(self, key: str) -> None:
        with contextlib.suppress(KeyError):
            del self._ddict[key]

    def clean(self, prefix: str) -> int:
        keys = self._ddict.keys()  # a DDictKeysView: one listing per manager
        doomed = [k for k in keys if isinstance(k, str) and k.startswith(prefix)]
        for k in doomed:
            self.delete(k)
        return len(doomed)

    def close(self) -> None:
        ddict, self._ddict = self._ddict, None
        if ddict is not None:
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
        if self._ddict.get(key) is None:
            raise KeyError(key)

    def close(self) -> None:
        self._ddict.detach()


def concurrent_worker(address: str, wid: int, nbytes: int, rounds: int, barrier: Any, results: Any) -> None:
    """Body of a Dragon-managed benchmark process: time ``rounds`` puts then gets of its own key.

    Every worker starts each phase at a shared barrier so the operations overlap; the medians go
    back on ``results`` as ``(wid, put_s, get_s, ok)``.
    """
    from dragon.data.ddict import DDict

    ddict = DDict.attach(address, timeout=DEFAULT_TIMEOUT_S)
    data = np.random.default_rng(wid).integers(0, 256, nbytes, dtype=np.uint8)
    key = f"micro.dragon.mp.{wid}"
    try:
        medians = []
        for op in ("put", "get"):
            samples = []
            barrier.wait()
            for _ in range(rounds + 1):  # the first round is a warm-up
                t0 = time.perf_counter()
                if op == "put":
                    ddict[key] = data
                else:
                    got = ddict[key]
                samples.append(time.perf_counter() - t0)
            medians.append(float(np.median(samples[1:])))
        results.put((wid, medians[0], medians[1], bool(np.array_equal(got, data))))
    finally:
        ddict.detach()
