"""A steering run on every rank of an MPI job: rank 0 steers, pool ranks serve, the others wait."""

from __future__ import annotations

import time
from pathlib import Path

from simai_core import mpi
from simai_core.staging.base import StagingClient
from simai_core.steering.config import SteeringConfig
from simai_core.steering.steerer import SteeringResult, run_steering
from simai_core.steering.worker import SteerKeys, pool_loop


def uses_rank_pool(cfg: SteeringConfig, world_size: int) -> bool:
    """Whether the pool's workers are ranks ``1..W x R`` of the job (else, one ``mpiexec`` started for the run)."""
    return cfg.launcher == "pool" and world_size - 1 >= cfg.workers * cfg.ranks_per_sim


def run_collective(cfg: SteeringConfig, client: StagingClient, backend: str, address: str, workdir: Path
                   ) -> SteeringResult | None:
    """Collective over the world: rank 0's ``cfg`` (its run id) is used everywhere; rank 0 gets the result.

    A failure on rank 0 raises there; under pytest the suite's plugin then aborts the job, so
    serving ranks never outlive it (they also give up at the run's deadline plus a minute).
    """
    from mpi4py import MPI

    world = mpi.world()
    cfg = world.bcast(cfg, root=0)
    ranks = uses_rank_pool(cfg, mpi.size())
    served = cfg.workers * cfg.ranks_per_sim
    result = None
    if ranks:
        rank = mpi.rank()
        color = (rank - 1) // cfg.ranks_per_sim if 1 <= rank <= served else MPI.UNDEFINED
        group = world.Split(color, rank)
        try:
            if rank == 0:
                result = run_steering(cfg, client, backend, address, workdir, pool_ranks=True)
            elif group != MPI.COMM_NULL:
                pool_loop(client, SteerKeys(cfg.run_id), color, group, deadline=time.time() + cfg.deadline_s + 60)
        finally:
            if group != MPI.COMM_NULL:
                group.Free()
    elif mpi.rank() == 0:
        result = run_steering(cfg, client, backend, address, workdir)
    mpi.barrier(timeout_s=cfg.deadline_s + 120)
    if ranks and mpi.rank() == 0:
        client.clean(SteerKeys(cfg.run_id).prefix)  # the pool ranks have stopped: nothing is written any more
    return result
