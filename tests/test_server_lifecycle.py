"""Servers stood up by the suite's fixtures are torn down on test failure and on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simai_core import mpi
from simai_core.staging.registry import unavailable_reason

ROOT = Path(__file__).resolve().parent.parent
CASE = "tests/mpi_cases/case_server_lifecycle.py"
pytestmark = [
    pytest.mark.skipif(unavailable_reason("redis") is not None, reason=str(unavailable_reason("redis"))),
    pytest.mark.skipif(mpi.size() > 1, reason="launches its own pytest processes"),
]


def gone(record: dict) -> bool:
    redis, nodelocal = record["redis"], record["nodelocal"]
    with socket.socket() as s:
        port_free = s.connect_ex(("127.0.0.1", redis["port"])) != 0
    return port_free and not Path(f"/proc/{redis['pid']}").exists() and not Path(nodelocal["path"]).exists()


def read_record(path: Path) -> dict:
    record: dict = {}
    for line in path.read_text().splitlines():
        record |= json.loads(line)
    return record


def start_case(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], Path]:
    record = tmp_path / "record.jsonl"
    env = os.environ | {"SIMAI_CASE_RECORD": str(record), "SIMAI_CASE_MODE": mode}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", CASE, "-q", "-s", "-p", "no:cacheprovider"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, record


def test_servers_stop_when_tests_fail(tmp_path):
    proc, record = start_case(tmp_path, "fail")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, output
    assert "failing on purpose" in output
    assert gone(read_record(record))


def test_servers_stop_on_ctrl_c(tmp_path):
    proc, record = start_case(tmp_path, "sleep")
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while "READY" not in proc.stdout.readline():
        assert time.monotonic() < deadline and proc.poll() is None, "case never got ready"
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, output  # pytest's exit code for an interrupted session
    assert gone(read_record(record))
