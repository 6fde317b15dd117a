"""One steered simulation, and the persistent pool worker that runs them one after another.

Keys (under ``steer/<run_id>/``): the steerer writes ``task/<id>`` (JSON: normalised
parameters, grid, residual, an injected failure for tests) before launching simulation
``<id>``; the simulation writes ``field/<id>`` (the ``n x n`` float64 field), ``qoi/<id>``
(the sensor readings) and, last, ``done/<id>`` (JSON: when it started running, its solve
and write times, when its result was staged, or its error). ``done`` is the completion
marker: once it exists, the other two are complete. Pool workers wait on ``assign/<w>``
(JSON ``{"seq", "sim"}`` or ``{"stop": true}``).

Fresh launches run ``python -m simai_core.steering.worker run BACKEND RUN_ID SIM_ID`` (the
staging address in ``$SIMAI_STAGING_ADDRESS``, never on the command line) on the ranks of
their own ``MPI.COMM_WORLD``; ``pool`` runs the persistent workers of a pool started once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any

import numpy as np

from simai_core.staging.base import StagingClient

ADDRESS_ENV = "SIMAI_STAGING_ADDRESS"
CRASH_EXIT_CODE = 3


class SteerKeys:
    """Staging key names of one steering run."""

    def __init__(self, run_id: str) -> None:
        self.prefix = f"steer/{run_id}/"

    def task(self, sim: int) -> str:
        """The parameters of simulation ``sim`` (JSON)."""
        return f"{self.prefix}task/{sim}"

    def field(self, sim: int) -> str:
        """Its field."""
        return f"{self.prefix}field/{sim}"

    def qoi(self, sim: int) -> str:
        """Its sensor readings."""
        return f"{self.prefix}qoi/{sim}"

    def done(self, sim: int) -> str:
        """Its completion record (JSON), written last."""
        return f"{self.prefix}done/{sim}"

    def assign(self, worker: int) -> str:
        """The work item of pool worker ``worker``."""
        return f"{self.prefix}assign/{worker}"


def put_json(client: StagingClient, key: str, value: dict[str, Any]) -> None:
    """Store ``value`` as UTF-8 JSON."""
    client.put_bytes(key, json.dumps(value).encode())


def get_json(client: StagingClient, key: str) -> dict[str, Any] | None:
    """The JSON under ``key``, or None when missing."""
    raw = client.get_bytes(key)
    return None if raw is None else json.loads(raw)  # type: ignore[no-any-return]


def run_simulation(client: StagingClient, keys: SteerKeys, sim: int, comm: Any, started: float) -> None:
    """Run simulation ``sim`` on ``comm`` (collective) and stage its result from rank 0.

    ``started``: when the simulation began running (``time.time()``). An error is staged as a
    ``done`` record with ``ok: false`` and raised again.
    """
    from simai_core.steering.solver import solve

    leader = comm.Get_rank() == 0
    try:
        task = get_json(client, keys.task(sim))
        if task is None:
            raise RuntimeError(f"simulation {sim}: no task under {keys.task(sim)!r}")
        _inject_failure(task.get("fail"))
        solution = solve(np.asarray(task["theta"]), int(task["n"]), comm, rtol=float(task["rtol"]))
        if task.get("release_at"):  # tests: finish together with the other simulations of the batch
            time.sleep(max(0.0, float(task["release_at"]) - time.time()))
        if leader:
            assert solution.field is not None
            t0 = time.perf_counter()
            client.put_tensor(keys.field(sim), solution.field)
            client.put_tensor(keys.qoi(sim), solution.qoi)
            write_s = time.perf_counter() - t0
            put_json(client, keys.done(sim), {"ok": True, "started": started, "staged": time.time(),
                                              "solve_s": solution.solve_s, "write_s": write_s,
                                              "iterations": solution.iterations, "residual": solution.residual,
                                              "ranks": comm.Get_size(), "field_bytes": solution.field.nbytes})
    except Exception as exc:
        if leader:
            put_json(client, keys.done(sim), {"ok": False, "started": started, "staged": time.time(),
                                              "error": f"{type(exc).__name__}: {exc}"})
        raise


def _inject_failure(kind: str | None) -> None:
    """Tests: ``exit`` ends the process at once (a crash), ``raise`` fails the simulation, ``hang`` never ends."""
    if kind == "exit":
        sys.stderr.write("injected crash\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)
    if kind == "raise":
        raise RuntimeError("injected failure")
    if kind == "hang":
        time.sleep(3600)


def pool_loop(client: StagingClient, keys: SteerKeys, worker: int, comm: Any, deadline: float,
              max_interval_s: float = 0.01) -> int:
    """Serve simulations assigned to ``worker`` on ``comm`` until told to stop or ``deadline`` (epoch s) passes.

    Every rank of ``comm`` polls the same key, so no rank waits in a spinning collective. A failing
    simulation is reported (its ``done`` record) and the worker goes on. Returns how many it ran.
    """
    seen, ran, pause = -1, 0, 1e-3
    while time.time() < deadline:
        item = get_json(client, keys.assign(worker))
        if item is not None and item.get("stop"):
            return ran
        if item is None or item["seq"] == seen:
            time.sleep(pause)
            pause = min(pause * 2, max_interval_s)
            continue
        seen, pause = item["seq"], 1e-3
        started = time.time()
        try:
            run_simulation(client, keys, int(item["sim"]), comm, started)
        except Exception:  # reported in its done record; the worker stays in the pool
            traceback.print_exc()
        ran += 1
    raise TimeoutError(f"pool worker {worker}: no stop signal before the deadline")


def main(argv: list[str] | None = None) -> int:
    """Entry point of a launched simulation (``run``) or a pool started as its own MPI job (``pool``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["run", "pool"])
    parser.add_argument("backend")
    parser.add_argument("run_id")
    parser.add_argument("number", type=int, help="simulation id (run) or first worker id (pool)")
    parser.add_argument("--ranks-per-sim", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=None, help="pool: give up at this epoch time")
    args = parser.parse_args(argv)
    from simai_core import mpi
    from simai_core.staging import registry

    world = mpi.world()  # unlinks MPICH's /dev/shm names at once: a killed simulation leaves none behind

    address = os.environ.pop(ADDRESS_ENV, None)
    if not address:
        parser.error(f"${ADDRESS_ENV} is not set: the steerer passes the staging address there")
    client = registry.connect(args.backend, address)
    keys = SteerKeys(args.run_id)
    try:
        if args.mode == "run":
            run_simulation(client, keys, args.number, world, time.time())
            return 0
        group = world.Split(world.Get_rank() // args.ranks_per_sim, world.Get_rank())
        worker = args.number + world.Get_rank() // args.ranks_per_sim
        pool_loop(client, keys, worker, group, args.deadline or time.time() + 3600)
        group.Free()
        return 0
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        client.close()


if __name__ == "__main__":
    code = main()
    if code:
        from mpi4py import MPI

        from simai_core import mpi

        if MPI.COMM_WORLD.Get_size() > 1:
            mpi.abort_world(code)  # the other ranks may wait in the solver's collectives
    sys.exit(code)
