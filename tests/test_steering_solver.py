"""The steered simulation's solver: it reaches its residual, matches a direct solve, same answer on 1, 2 and 4 ranks."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simai_core.steering.problem import make_problem
from simai_core.steering.solver import grid_points, physical, row_block, solve, source

MPIEXEC = str(Path(sys.executable).with_name("mpiexec"))
CASE = "tests/mpi_cases/case_steering_solver.py"
THETA = (0.3, 0.65, 0.4)
N = 37  # odd, so that 2 and 4 ranks get blocks of different sizes


def serial(theta=THETA, n=N):
    from mpi4py import MPI

    return solve(np.array(theta), n, MPI.COMM_SELF, rtol=1e-10)


def test_serial_solve_reaches_its_residual_and_matches_a_direct_solve():
    import scipy.sparse as sp
    from scipy.sparse.linalg import spsolve

    sol = serial()
    assert sol.residual <= 1e-10 and sol.iterations > 0
    sx, sy, k = physical(np.array(THETA))
    lap1 = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(N, N))
    eye = sp.identity(N)
    a = k * (N + 1) ** 2 * (sp.kron(eye, lap1) + sp.kron(lap1, eye))
    direct = spsolve(a.tocsc(), source(N, sx, sy, 0, N).ravel()).reshape(N, N)
    np.testing.assert_allclose(sol.field, direct, rtol=1e-7, atol=1e-9 * np.abs(direct).max())
    assert sol.field.max() > 0


def test_row_blocks_cover_the_grid_once():
    for size in (1, 2, 3, 4, 7):
        blocks = [row_block(N, r, size) for r in range(size)]
        assert blocks[0][0] == 0 and blocks[-1][1] == N
        assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_same_answer_on_1_2_and_4_ranks(tmp_path, ranks):
    out = tmp_path / f"field{ranks}.npz"
    proc = subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, CASE, str(out), str(N), *map(str, THETA)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = np.load(out)
    ref = serial()
    assert int(got["ranks"]) == ranks
    assert float(got["residual"]) <= 1e-10
    np.testing.assert_allclose(got["field"], ref.field, rtol=1e-8, atol=1e-12 * np.abs(ref.field).max())
    np.testing.assert_allclose(got["qoi"], ref.qoi, rtol=1e-8)


def test_the_hidden_parameters_have_zero_misfit_and_others_do_not():
    problem = make_problem(seed=5, n=grid_points(16 * 2**10), tolerance=0.05)
    assert problem.misfit(serial(problem.hidden, problem.n).qoi) < 1e-20
    moved = problem.hidden + np.array([0.06, 0.0, 0.0])
    assert problem.misfit(serial(moved, problem.n).qoi) > 1e-4
    assert problem.reached(problem.hidden + 0.04) and not problem.reached(moved)


def test_a_solve_that_cannot_reach_its_residual_raises():
    from mpi4py import MPI

    with pytest.raises(RuntimeError, match="did not reach"):
        solve(np.array(THETA), N, MPI.COMM_SELF, rtol=1e-10, max_iter=3)
