"""Run by tests/test_steering_solver.py under ``mpiexec -n N``: solve once, rank 0 saves the field and the cost.

Arguments: the output ``.npz`` path, the grid size and the normalised parameters.
"""

import sys

import numpy as np
from mpi4py import MPI

from simai_core.steering.solver import solve

if __name__ == "__main__":
    out, n, theta = sys.argv[1], int(sys.argv[2]), np.array([float(v) for v in sys.argv[3:6]])
    try:
        solution = solve(theta, n, MPI.COMM_WORLD, rtol=1e-10)
    except BaseException as exc:
        sys.stderr.write(f"rank {MPI.COMM_WORLD.Get_rank()}: {exc!r}\n")
        MPI.COMM_WORLD.Abort(1)
    if MPI.COMM_WORLD.Get_rank() == 0:
        np.savez(out, field=solution.field, qoi=solution.qoi, iterations=solution.iterations,
                 residual=solution.residual, ranks=MPI.COMM_WORLD.Get_size())
