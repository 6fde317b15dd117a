"""Run explicitly by tests/test_server_lifecycle.py: start real servers, then fail or wait for Ctrl-C."""

import json
import os
import time

import pytest


@pytest.mark.backends("redis", "nodelocal")
def test_start_then_misbehave(staging, staging_pool, backend):
    server = staging_pool._servers[backend]
    record = {"pid": getattr(server, "pid", None), "port": getattr(server, "port", None),
              "path": getattr(server, "path", None) and str(server.path)}
    with open(os.environ["SIMAI_CASE_RECORD"], "a") as f:
        f.write(json.dumps({backend: record}) + "\n")
    if os.environ["SIMAI_CASE_MODE"] == "fail":
        raise AssertionError("failing on purpose with a live server")
    if backend == "nodelocal":
        print("READY", flush=True)
        time.sleep(60)  # interrupted by the test with SIGINT
