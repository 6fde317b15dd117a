"""The Devito acoustic solver: decomposition independence, the CFL check, the sample it captures."""

from __future__ import annotations

import getpass
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("devito")
from mpi4py import MPI

from simai_core.solvers.acoustic import (
    AcousticSolver,
    SolverDivergedError,
    UnstableTimeStepError,
    cfl_limit_ms,
)
from simai_core.solvers.config import AcousticConfig

MPIEXEC = str(Path(sys.executable).with_name("mpiexec"))
CASE = "tests/mpi_cases/case_full_decomposition.py"


def run_case(nprocs: int, solver_ranks: int, out: Path) -> np.ndarray:
    proc = subprocess.run([MPIEXEC, "-n", str(nprocs), sys.executable, CASE, str(solver_ranks), str(out)],
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return np.load(out)


@pytest.mark.timeout(600)
def test_global_field_is_independent_of_the_decomposition(tmp_path):
    one = run_case(1, 1, tmp_path / "one.npy")
    two = run_case(3, 2, tmp_path / "two.npy")  # 2 solver ranks on a sub-communicator, 1 rank standing by
    four = run_case(4, 4, tmp_path / "four.npy")
    scale = float(np.abs(one).max())
    assert scale > 1e-3, "the sources never reached the field: the comparison would prove nothing"
    for other in (two, four):
        np.testing.assert_allclose(other, one, rtol=0, atol=1e-5 * scale)


def test_cfl_limit_of_the_second_order_scheme_is_h_over_v_sqrt_dim():
    assert cfl_limit_ms(2.0, 10.0, 2, 2) == pytest.approx(10.0 / (2.0 * np.sqrt(2)))
    assert cfl_limit_ms(2.0, 10.0, 4, 3) < cfl_limit_ms(2.0, 10.0, 2, 3)  # wider stencils are less stable


def test_unstable_time_step_is_refused_with_the_reason():
    limit = cfl_limit_ms(3.0, 10.0, 4, 2)
    with pytest.raises(UnstableTimeStepError, match=r"exceeds the CFL limit .* the scheme would blow up"):
        AcousticSolver(AcousticConfig(dt_ms=1.01 * limit), MPI.COMM_SELF, (32, 32), 10, 1)


def test_a_diverging_run_fails_with_the_reason(monkeypatch):
    from simai_core.solvers import acoustic

    limit = cfl_limit_ms(3.0, 10.0, 4, 2)
    monkeypatch.setattr(acoustic, "cfl_limit_ms", lambda *args: 100.0)  # what the refusal prevents: run past it
    solver = AcousticSolver(AcousticConfig(dt_ms=2.5 * limit), MPI.COMM_SELF, (32, 32), 10, 1)
    solver.compile()
    with pytest.raises(SolverDivergedError, match="diverged"):
        for step in range(9):
            solver.advance(step, capture=True)
            solver.check(MPI.COMM_SELF)


def test_captured_sample_holds_the_solver_fields():
    solver = AcousticSolver(AcousticConfig(), MPI.COMM_SELF, (40, 40), 30, 2)
    solver.compile()
    k = solver.cfg.horizon_steps
    for step in range(20):
        solver.advance(step, capture=False)
    before_n, before_prev = solver.local_u(20 * k).copy(), solver.local_u(20 * k - 1).copy()
    solver.advance(20, capture=True)
    s = solver.sample
    np.testing.assert_array_equal(s[:, 0], before_n.ravel())
    np.testing.assert_array_equal(s[:, 1], before_prev.ravel())
    np.testing.assert_array_equal(s[:, 3], solver.local_u(21 * k).ravel())
    assert np.all(s[:, 2] >= 1.5) and np.all(s[:, 2] <= 3.0) and np.abs(s[:, 3]).max() > 0
    assert not np.array_equal(s[:, 0], s[:, 3]), "the target must be K steps ahead of the input"
    # Devito's kernel flushes denormals while it runs; the process must get its own float mode back.
    assert (np.array([5e-324]) * np.array([1.0]))[0] > 0, "the kernel left flush-to-zero on"
    foms = solver.foms()
    assert foms["compile_time_s"] > 0 and foms["solver_GPtsps"] > 0


def test_interior_excludes_only_faces_shared_with_another_rank():
    solver = AcousticSolver(AcousticConfig(interior_margin=3), MPI.COMM_SELF, (16, 16), 2, 1)
    assert solver.interior.all()  # one rank: no shared face


def test_fast_path_matches_devito_apply():
    """The solver calls the compiled kernel with arguments derived once; Devito's own apply must agree."""
    fast = AcousticSolver(AcousticConfig(), MPI.COMM_SELF, (32, 32), 30, 2)
    slow = AcousticSolver(AcousticConfig(), MPI.COMM_SELF, (32, 32), 30, 2)
    fast.compile()
    slow.compile()
    k = fast.cfg.horizon_steps
    for step in range(25):
        fast.advance(step, capture=False)
    slow._op.apply(time_m=0, time_M=25 * k - 1, dt=np.float32(slow.dt_ms))
    assert np.abs(fast.local_u(25 * k)).max() > 0
    np.testing.assert_array_equal(fast.local_u(25 * k), slow.local_u(25 * k))


def test_compile_cache_is_reported_cold_then_warm(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # an empty private cache
    first = AcousticSolver(AcousticConfig(seed=11), MPI.COMM_SELF, (24, 24), 5, 1)
    first.compile()
    second = AcousticSolver(AcousticConfig(seed=11), MPI.COMM_SELF, (24, 24), 5, 1)
    second.compile()
    assert (first.compile_cache, second.compile_cache) == ("cold", "warm")
    cache = Path(second.detail()["compile_cache_dir"])
    assert cache.parent == tmp_path / f"simai-devito-{getpass.getuser()}" and list(cache.glob("*.so"))
    assert (cache.parent.stat().st_mode & 0o777) == 0o700


def test_three_dimensional_grid_runs():
    """The `large` size's path: a 3-D grid (here 24^3 on one rank) compiles, steps and captures its sample."""
    solver = AcousticSolver(AcousticConfig(absorbing_points=4), MPI.COMM_SELF, (24, 24, 24), 40, 1)
    assert solver.dim == 3 and solver.cfl_limit_ms == pytest.approx(cfl_limit_ms(3.0, 10.0, 4, 3))
    solver.compile()
    for step in range(30):
        solver.advance(step, capture=step == 29)
    solver.check(MPI.COMM_SELF)
    assert solver.sample.shape == (24**3, 4) and np.abs(solver.sample[:, 3]).max() > 0
    assert not np.array_equal(solver.sample[:, 0], solver.sample[:, 3])
