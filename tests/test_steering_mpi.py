"""The steering loop with the pool's workers as ranks of the MPI job (run under a real ``mpiexec -n 3``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MPIEXEC = str(Path(sys.executable).with_name("mpiexec"))


def test_rank_pool_under_mpiexec():
    proc = subprocess.run([MPIEXEC, "-n", "3", sys.executable, "-m", "pytest", "tests/mpi_cases/case_steering_pool.py",
                           "-q", "-p", "no:cacheprovider"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
