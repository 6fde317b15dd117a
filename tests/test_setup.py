"""What `make` does on a fresh machine: `make bench` never waits for the torch-cluster build."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def planned(target: str, venv: Path) -> str:
    """The commands ``make TARGET`` would run for a venv that does not exist yet (``make -n``)."""
    proc = subprocess.run(["make", "-n", target, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_bench_sets_up_the_core_but_never_builds_torch_cluster(tmp_path):
    plan = planned("bench", tmp_path / "venv")
    assert "pip install" in plan and "pytest benchmarks/micro" in plan
    assert "torch-cluster" not in plan


def test_make_test_and_make_setup_still_build_torch_cluster(tmp_path):
    for target in ("test", "setup"):
        assert "torch-cluster==" in planned(target, tmp_path / "venv")


def test_every_slow_setup_step_says_how_long_it_usually_takes(tmp_path):
    plan = planned("setup", tmp_path / "venv")
    assert 'echo "==> $1 (usually $2)"' in plan  # the timer announces, then prints the elapsed time
    for step in ("creating", "installing the Python packages", "building torch-cluster once"):
        assert f'timed "{step}' in plan
