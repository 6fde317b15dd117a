"""The one place that knows about MPI ranks: world, launcher checks, abort, reductions."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")

# Environment variables through which launchers announce the job size.
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS_WORLD", "PALS_SIZE")


@cache
def world() -> Any:
    """``MPI.COMM_WORLD`` (importing mpi4py initialises MPI; a plain run is a 1-rank world)."""
    with warnings.catch_warnings():
        # mpi4py's own launcher check is a warning; check_world_size() makes it an error that says what to do.
        warnings.simplefilter("ignore", RuntimeWarning)
        from mpi4py import MPI

    release_shm_names(MPI.COMM_WORLD)
    if MPI.COMM_WORLD.Get_size() > 1:
        _abort_job_after_ctrl_c()
    return MPI.COMM_WORLD


_INTERRUPTED: list[int] = []
INTERRUPT_GRACE_S = 2.0
#: Between a failing rank's last words and its MPI_Abort: MPICH's launcher tears the job down on an abort and
#: can drop what a rank wrote just before (1 message of 40 lost here without it, none of 60 with 0.2 s).
ABORT_DRAIN_S = 0.2


def _abort_job_after_ctrl_c() -> None:
    """After Ctrl-C, rank 0 aborts the job when it reaches its exit (its clean-up done); the others 2 s later.

    ``mpiexec`` passes SIGINT to every rank, but a rank blocked inside an MPI call never sees it,
    and the ranks that do would then wait for it forever in ``MPI_Finalize``.
    """
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return  # someone else handles Ctrl-C here

    def interrupted(signum: int, frame: Any) -> None:
        _INTERRUPTED.append(signum)
        raise KeyboardInterrupt

    def abort_if_interrupted() -> None:
        if _INTERRUPTED:
            if rank() != 0:
                time.sleep(INTERRUPT_GRACE_S)  # rank 0, which holds the shared servers, stops them first
            sys.stderr.write(f"[rank {rank()}/{size()}] interrupted (Ctrl-C): aborting all ranks\n")
            abort_world(130)

    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        signal.signal(signal.SIGINT, interrupted)
        atexit.register(abort_if_interrupted)  # runs before mpi4py finalizes MPI


def release_shm_names(comm: Any) -> None:
    """Unlink the names of the MPICH shared-memory segments this process maps, once every rank has mapped them.

    MPICH removes them only in ``MPI_Finalize``: a job that is killed, aborted or ended by a
    timeout (``os._exit``) would leave them in ``/dev/shm`` for good. Unlinked, a segment lives on
    while it is mapped, and the kernel frees it when the last rank exits, however it exits.
    Collective over ``comm`` (the world, at start-up).
    """
    if comm.Get_size() > 1:
        comm.Barrier()  # every rank is past MPI_Init: each node's ranks have all mapped their node's segment
    for path in mapped_shm_segments():
        with contextlib.suppress(FileNotFoundError):  # a sibling rank on this node was first
            os.unlink(path)


def mapped_shm_segments() -> list[str]:
    """Paths of MPICH's ``/dev/shm/mpich_shm_*`` segments that this process maps (as named when mapped)."""
    try:
        with open("/proc/self/maps") as maps:
            return sorted({line.split(maxsplit=5)[5].strip().removesuffix(" (deleted)")
                           for line in maps if " /dev/shm/mpich_shm_" in line})
    except OSError:  # not Linux: nothing to release
        return []


def rank() -> int:
    """This process's rank in the world."""
    return int(world().Get_rank())


def size() -> int:
    """Number of ranks in the world."""
    return int(world().Get_size())


def launcher_size() -> int | None:
    """The job size the launcher announced in the environment, if any."""
    for var in _LAUNCHER_SIZE_VARS:
        if var in os.environ:
            return int(os.environ[var])
    return None


def check_world_size() -> None:
    """Fail when the launcher promised N ranks but MPI sees another number.

    A mismatched ``mpiexec`` (another MPI than the one mpi4py loaded) silently
    turns every process into a 1-rank world: each would think it is rank 0.
    """
    promised, actual = launcher_size(), size()
    if promised is not None and promised != actual:
        raise RuntimeError(
            f"The launcher started {promised} ranks but MPI sees a world of {actual}: this mpiexec does not "
            f"belong to the MPI that mpi4py loaded. Use the venv's own launcher: .venv/bin/mpiexec -n {promised} ..."
        )


def abort(message: str, exc: BaseException | None = None, code: int = 1) -> None:
    """Print ``message`` (and the traceback) on stderr and abort every rank of the job."""
    text = f"[rank {rank()}/{size()}] {message}\n"
    if exc is not None:
        text += "".join(traceback.format_exception(exc))
    sys.stderr.write(text)
    abort_world(code)


def abort_world(code: int) -> None:
    """Abort every rank of the job, once what this rank wrote has had :data:`ABORT_DRAIN_S` to reach the launcher."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken stream must not keep the job alive
            stream.flush()
    time.sleep(ABORT_DRAIN_S)
    from mpi4py import MPI  # not world(): its first call is collective, and this rank is alone here

    MPI.COMM_WORLD.Abort(code)


def bcast_result(fn: Callable[[], T], comm: Any = None, root: int = 0) -> T:
    """Run ``fn`` on ``root`` only and hand its result, or its error, to every rank of ``comm``.

    Every rank then raises the same error, so no rank is left waiting in a
    collective for a peer that failed.
    """
    comm = world() if comm is None else comm
    outcome: tuple[bool, Any] | None = None
    if comm.Get_rank() == root:
        try:
            outcome = (True, fn())
        except Exception as exc:  # re-raised on every rank below, as a picklable copy
            outcome = (False, (type(exc).__name__, str(exc)))
    ok, value = comm.bcast(outcome, root=root)
    if not ok:
        name, message = value
        raise RuntimeError(f"{name} on rank {root}: {message}")
    return value  # type: ignore[no-any-return]


def gather_to_all(value: T) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank."""
    return list(world().allgather(value))


BARRIER_TIMEOUT_S = 900.0


def barrier(comm: Any = None, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """Synchronise the ranks of ``comm`` (default: the world) without spinning, with a deadline.

    ``MPI_Barrier`` busy-polls: on an oversubscribed node (more ranks than cores) the ranks
    that arrive first steal the CPU from those still working, which distorts what the others
    measure. A non-blocking barrier tested with short sleeps yields the core instead.
    """
    request = (world() if comm is None else comm).Ibarrier()
    deadline = time.monotonic() + timeout_s
    pause = 2e-5
    while not request.Test():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {rank()}: peers did not reach the barrier within {timeout_s:g} s")
        time.sleep(pause)
        pause = min(pause * 2, 1e-3)
