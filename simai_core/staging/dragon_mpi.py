"""MPI ranks as DDict clients: ``mpiexec`` started as a Dragon process, its ranks attaching to a serialized DDict.

The ranks are not Dragon-managed processes (Dragon's own PMI launch needs Cray PMI or a PMIx
that works; see the platform notes), but they inherit the runtime's environment from the
``mpiexec`` that Dragon started, which is all ``DDict.attach`` needs. Rank body::

    python -m simai_core.staging.dragon_mpi ADDRESS OUT NBYTES ROUNDS

Every rank times ``ROUNDS`` puts, then gets, of its own key (each round starts at a barrier so
they overlap), then reads its neighbour's key to prove the ranks share one store; rank 0
writes every rank's round windows and checks to ``OUT`` (JSON).

The ranks share the Dragon identity of the ``mpiexec`` they inherited it from, and two of them
asking the runtime's local services for a channel at once get each other's replies
(``DRAGON_EOT``): they attach and detach one at a time.

:func:`run_workflow` runs the whole motif-6 workflow the same way: ``mpiexec -n N`` started as
a Dragon process, every rank attached to the DDict (one at a time, then shared by every client
of the rank), the ranks split into simulation and trainer as under a plain ``mpiexec``
(:func:`~simai_core.workflow.driver.run_mpi`). Rank body::

    python -m simai_core.staging.dragon_mpi workflow ADDRESS OUT CONFIG_JSON
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np

from simai_core.staging.dragon import DEFAULT_TIMEOUT_S, MPI_MARK, drop_attachment, share_attachment, time_put_get

if TYPE_CHECKING:
    from simai_core.workflow.config import WorkflowConfig
    from simai_core.workflow.driver import WorkflowResult

T = TypeVar("T")


def _payload(rank: int, nbytes: int) -> np.ndarray:
    return np.random.default_rng(rank).integers(0, 256, nbytes, dtype=np.uint8)


def _key(rank: int) -> str:
    return f"micro.dragon.mpi.{rank}"


def run_clients(address: str, ranks: int, nbytes: int, rounds: int, workdir: Path,
                timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """Start ``ranks`` MPI ranks (the venv's ``mpiexec``, as a Dragon process) on the DDict ``address``.

    Returns one record per rank: ``rank``, ``size``, ``put_windows``, ``get_windows`` (per-round
    (start, end) on ``perf_counter``), ``own_ok``, ``neighbour_ok``. The job is killed when it runs past ``timeout_s``.
    """
    out = workdir / f"dragon-mpi-{time.time_ns()}.json"
    _run_ranks(ranks, [address, str(out), str(nbytes), str(rounds)], out, timeout_s)
    records: list[dict[str, Any]] = json.loads(out.read_text())
    out.unlink()
    return records


def run_workflow(cfg: WorkflowConfig, address: str, ranks: int, workdir: Path, timeout_s: float = 1800.0,
                 profile_backend: str | None = None) -> WorkflowResult:
    """Run the motif-6 workflow on ``ranks`` MPI ranks that the Dragon runtime starts, staging on the DDict ``address``.

    Returns every rank's reports, as :func:`~simai_core.workflow.driver.run_mpi` does under a plain
    ``mpiexec``; the job is killed when it runs past ``timeout_s``.
    """
    from simai_core.workflow.driver import WorkflowResult

    stem = workdir / f"dragon-workflow-{time.time_ns()}"
    config, out = stem.with_suffix(".config.json"), stem.with_suffix(".json")
    config.write_text(cfg.model_dump_json())
    try:
        _run_ranks(ranks, ["workflow", address, str(out), str(config), profile_backend or ""], out, timeout_s)
        return WorkflowResult.model_validate_json(out.read_text())
    finally:
        config.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


def _run_ranks(ranks: int, args: list[str], out: Path, timeout_s: float) -> None:
    """``mpiexec -n ranks python -m simai_core.staging.dragon_mpi ARGS`` as a Dragon process; ``out`` must appear."""
    from dragon.native.process import Process

    mpiexec = Path(sys.executable).with_name("mpiexec")
    if not mpiexec.is_file():
        raise FileNotFoundError(f"{mpiexec} not found: install the MPI extra (pip install -e '.[mpi]')")
    proc = Process(target=str(mpiexec), args=["-n", str(ranks), sys.executable, "-m", __name__, *args],
                   env={MPI_MARK: "1"})
    proc.start()
    proc.join(timeout=timeout_s)
    if proc.is_alive:
        proc.kill()
        raise TimeoutError(f"{ranks} MPI ranks on the DDict did not finish within {timeout_s:g} s and were killed")
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"mpiexec -n {ranks} on the DDict failed (exit code {proc.returncode}); "
                           "its ranks' errors are on stderr")


def _one_at_a_time(comm: Any, call: Callable[[], T]) -> T:
    """``call()`` on every rank in turn (collective)."""
    result: T | None = None
    for turn in range(comm.Get_size()):
        if turn == comm.Get_rank():
            result = call()
        comm.Barrier()
    return cast(T, result)


def _rank_main(address: str, out: str, nbytes: int, rounds: int) -> None:
    from dragon.data.ddict import DDict
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    ddict = _one_at_a_time(comm, lambda: DDict.attach(address, timeout=DEFAULT_TIMEOUT_S))
    data = _payload(rank, nbytes)
    # No try/finally: a rank that fails must not enter the collective detach below while the
    # others wait elsewhere; it raises to __main__, which aborts the job.
    put_w, get_w, got = time_put_get(ddict, _key(rank), data, rounds, comm.Barrier)
    comm.Barrier()
    neighbour = (rank + 1) % size
    record = {"rank": rank, "size": size, "put_windows": put_w, "get_windows": get_w, "own_ok": bool(np.array_equal(got, data)),
              "neighbour_ok": bool(np.array_equal(ddict[_key(neighbour)], _payload(neighbour, nbytes)))}
    records = comm.gather(record, root=0)
    comm.Barrier()
    if rank == 0:
        for r in range(size):
            del ddict[_key(r)]
    _one_at_a_time(comm, ddict.detach)
    if rank == 0:
        Path(out).write_text(json.dumps(records))


def _workflow_main(address: str, out: str, config: str, profile_backend: str) -> None:
    """One rank of :func:`run_workflow`: attach in turn, run the rank's component, rank 0 writes the result."""
    from dragon.data.ddict import DDict
    from mpi4py import MPI

    from simai_core.workflow.config import WorkflowConfig
    from simai_core.workflow.driver import run_mpi

    comm = MPI.COMM_WORLD
    cfg = WorkflowConfig.model_validate_json(Path(config).read_text())
    share_attachment(address, _one_at_a_time(comm, lambda: DDict.attach(address, timeout=DEFAULT_TIMEOUT_S)))
    # As in _rank_main: a failing rank raises to __main__, which aborts the job.
    result = run_mpi(cfg, "dragon", address, comm, profile_backend or None)
    comm.Barrier()
    _one_at_a_time(comm, drop_attachment(address).detach)
    if comm.Get_rank() == 0:
        Path(out).write_text(result.model_dump_json())


if __name__ == "__main__":
    try:
        if sys.argv[1] == "workflow":
            _workflow_main(*sys.argv[2:6])
        else:
            _rank_main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    except BaseException:
        traceback.print_exc()
        from simai_core import mpi

        mpi.abort_world(1)  # the other ranks would wait at the next barrier
