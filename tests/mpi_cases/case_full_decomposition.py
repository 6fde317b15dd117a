"""Run by tests/test_full_solver.py: ``mpiexec -n N python case_full_decomposition.py SOLVER_RANKS OUT.npy``.

The first SOLVER_RANKS ranks run the acoustic solver on a sub-communicator (the others stand
by, as trainer ranks do); rank 0 saves the global field u at the last time step. The global
grid and sources are fixed, so the field must not depend on SOLVER_RANKS.
"""

from __future__ import annotations

import sys

import numpy as np
from mpi4py import MPI

from simai_core.solvers.acoustic import AcousticSolver
from simai_core.solvers.config import AcousticConfig

SHAPE, LOOP_STEPS, SOURCES = (48, 48), 60, 3


def main() -> None:
    solver_ranks, out = int(sys.argv[1]), sys.argv[2]
    world = MPI.COMM_WORLD
    sub = world.Split(0 if world.rank < solver_ranks else 1, world.rank)
    try:
        if world.rank < solver_ranks:
            solver = AcousticSolver(AcousticConfig(fire_interval_ms=60.0), sub, SHAPE, LOOP_STEPS, SOURCES)
            solver.compile()
            for step in range(LOOP_STEPS - 1):
                solver.advance(step, capture=False)
            field = solver.gather_u((LOOP_STEPS - 1) * solver.cfg.horizon_steps)
            if world.rank == 0:
                np.save(out, field)
        world.Barrier()
    finally:
        sub.Free()


if __name__ == "__main__":
    main()
