"""The suite's pytest plugin keeps a session's JSON when one benchmark ends before its first round; the micro
benchmarks' order puts the cold-call ones first."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from simai_core.sizes import parse_size

ROOT = Path(__file__).resolve().parents[1]

BENCHMARKS = '''
import pytest

def test_kept(benchmark):
    benchmark.pedantic(lambda: sum(range(100)), rounds=3)

def test_failed_inside_its_timed_code(benchmark):
    benchmark.pedantic(lambda: pytest.fail("gave up in round 1"), rounds=3)

def test_skipped_inside_its_timed_code(benchmark):
    benchmark.pedantic(lambda: pytest.skip("nothing to time"), rounds=3)
'''


def test_a_benchmark_without_rounds_does_not_lose_the_json(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["simai_core.bench.plugin"]\n')
    (tmp_path / "test_bench.py").write_text(BENCHMARKS)
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                           str(tmp_path / "test_bench.py"), "--benchmark-json", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert "1 failed, 1 passed, 1 skipped" in proc.stdout, proc.stdout + proc.stderr
    assert "empty sequence" not in proc.stdout + proc.stderr
    names = [b["name"] for b in json.loads(out.read_text())["benchmarks"]]
    assert names == ["test_kept"]


def test_cold_call_benchmarks_run_first_smallest_value_first() -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "benchmarks/micro", "-m", "micro and nodelocal", "--simai-sizes", "1KiB,4MiB"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert ids, proc.stdout + proc.stderr
    cold = [bool(re.search(r"::test_(tensor|metadata)_cold", i)) for i in ids]
    assert cold.index(False) == sum(cold), "a cold-call benchmark after another benchmark"
    sizes = [parse_size(m.group(1)) if (m := re.search(r"[-\[](\d+[KM]iB)", i)) else 0 for i in ids[:sum(cold)]]
    assert sizes == sorted(sizes) and len(set(sizes)) > 2
    assert any("test_tensor[4MiB" in i for i in ids[sum(cold):])  # the sweep, after them
