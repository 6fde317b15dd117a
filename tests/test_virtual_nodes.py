"""Virtual nodes: ``mpiexec -n 8 ... --simai-virtual-nodes 2`` behaves as 2 nodes of 4 ranks would.

Each test launches a real 8-rank job of the venv's MPI on one of the cases in ``tests/mpi_cases``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from simai_core import mpi
from simai_core.staging.registry import unavailable_reason

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent))
pytestmark = [
    pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec in the venv: make setup (installs the mpich wheel)"),
    pytest.mark.skipif(mpi.size() > 1, reason="launches its own mpiexec jobs"),
]


def run_case(case: str, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``mpiexec -n 8 python -m pytest tests/mpi_cases/<case> --simai-virtual-nodes 2`` with a deadline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_", "MPI_"))}
    args = [str(MPIEXEC), "-n", "8", sys.executable, "-m", "pytest", f"tests/mpi_cases/{case}", "-q",
            "-p", "no:cacheprovider", "--simai-virtual-nodes", "2", *extra]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_layout_nodelocal_dirs_and_heads_follow_the_virtual_nodes():
    proc = run_case("case_virtual_layout.py", timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 passed" in proc.stdout


@pytest.mark.skipif(unavailable_reason("redis") is not None, reason=str(unavailable_reason("redis")))
def test_colocated_run_has_one_server_per_node_with_only_its_ranks_data():
    pytest.importorskip("torch")
    pytest.importorskip("mpipartition")
    proc = run_case("case_virtual_colocated.py", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


def test_an_uneven_split_is_a_usage_error():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_", "MPI_"))}
    proc = subprocess.run([str(MPIEXEC), "-n", "3", sys.executable, "-m", "pytest", "tests/mpi_cases/case_virtual_layout.py",
                           "-q", "-p", "no:cacheprovider", "--simai-virtual-nodes", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode != 0
    assert "cannot be split into 2 virtual nodes" in proc.stdout + proc.stderr
