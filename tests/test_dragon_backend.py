"""The Dragon backend against a real Dragon runtime and DDict: round trips, a full store that raises
instead of hanging, and a stop() that leaves no process and no /dev/shm pool file of this run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simai_core import mpi
from simai_core.errors import BackendUnavailableError, SimaiError, StagingFullError
from simai_core.staging import registry

pytestmark = [pytest.mark.dragon, pytest.mark.skipif(mpi.size() > 1, reason="starts and stops its own Dragon runtime")]
DTYPES = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "float16", "float32", "float64", "complex64", "complex128"]


def _reason() -> str | None:
    return registry.unavailable_reason("dragon")


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    """A small DDict (64 MiB, 5 s timeout) in this process's runtime, always destroyed."""
    if (reason := _reason()) is not None:
        pytest.skip(reason)
    from simai_core.staging.dragon import DragonServer

    with DragonServer(total_mem=64 * 2**20, timeout_s=5.0) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Any) -> Iterator[Any]:
    from simai_core.staging.dragon import DragonClient

    c = DragonClient(server.address, timeout_s=5.0)
    yield c
    c.close()


def test_runtime_up_and_detail(server: Any) -> None:
    detail = server.detail()
    assert detail["dragon"] == "0.15.0" and detail["managers_per_node"] == 1
    assert detail["orchestrator_spins_core"] is True and detail["processes"] >= 3
    assert isinstance(server.address, str) and server.address
    assert detail["ddict_create_s"] > 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_every_dtype(client: Any, dtype: Any) -> None:
    array = (np.random.default_rng(3).standard_normal((3, 1, 5)) * 50).astype(dtype)
    client.put_tensor(f"dt.{dtype}", array)
    got = client.get_tensor(f"dt.{dtype}")
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)
    out = np.empty_like(array)
    assert client.get_tensor(f"dt.{dtype}", out=out) is out
    np.testing.assert_array_equal(out, array)


def test_bytes_and_missing(client: Any) -> None:
    client.put_bytes("blob", memoryview(b"\x00abc" * 1000))
    assert client.get_bytes("blob") == b"\x00abc" * 1000
    assert client.get_tensor("blob") is None  # a blob is not a tensor
    assert client.get_tensor("nope") is None and client.get_bytes("nope") is None and not client.exists("nope")


def test_raw_reference_round_trip(server: Any) -> None:
    raw = registry.raw_reference("dragon", server.address)
    try:
        data = np.arange(4096, dtype=np.uint8)
        raw.put("raw.k", data.data)
        raw.get("raw.k", np.empty_like(data).data)
        assert "DDict" in raw.description
        with pytest.raises(KeyError):
            raw.get("raw.missing", data.data)
    finally:
        raw.close()


def test_value_larger_than_a_manager_is_refused_at_once(client: Any) -> None:
    t0 = time.monotonic()
    with pytest.raises(StagingFullError, match="memory_bytes"):
        client.put_tensor("huge", np.zeros(80 * 2**20, np.uint8))
    assert time.monotonic() - t0 < 2


def test_value_without_a_free_block_is_refused_at_once(client: Any) -> None:
    """40 MiB fits under the 90 % threshold, but the 64 MiB buddy pool's largest block is 32 MiB."""
    t0 = time.monotonic()
    with pytest.raises(StagingFullError, match=r"no room .* largest free block 33554432"):
        client.put_tensor("too.big.for.a.block", np.ones(40 * 2**20, np.uint8))
    assert time.monotonic() - t0 < 2
    assert not client.exists("too.big.for.a.block")


def test_full_store_raises_and_keeps_what_it_stored(client: Any) -> None:
    """Without the room check, Dragon 0.15 on a loaded node stored 8 MiB values cut to 224 bytes, said nothing."""
    t0 = time.monotonic()
    stored = 0
    with pytest.raises(StagingFullError, match=r"no room|full"):
        for i in range(40):  # 40 x 8 MiB in a 64 MiB DDict
            client.put_tensor(f"fill.{i}", np.full(8 * 2**20, i, np.uint8))
            stored += 1
    assert time.monotonic() - t0 < 60
    assert 4 <= stored < 8
    for i in range(stored):  # every put that returned holds its whole value
        np.testing.assert_array_equal(client.get_tensor(f"fill.{i}"), np.full(8 * 2**20, i, np.uint8))
    assert not client.exists(f"fill.{stored}")
    assert client.clean("fill.") >= 1  # deletes right after "full" are where Dragon's replies break
    assert not any(client.exists(f"fill.{i}") for i in range(40))
    client.put_tensor("after", np.ones(4))  # usable again once emptied
    np.testing.assert_array_equal(client.get_tensor("after"), np.ones(4))


_CLEANUP_SCRIPT = """
import json, os
import numpy as np
from simai_core.staging import dragon as b
srv = b.DragonServer(total_mem=32 * 2**20, timeout_s=5.0, owns_runtime=True)
srv.start()
c = b.DragonClient(srv.address, timeout_s=5.0)
c.put_tensor("k", np.arange(10))
c.close()
pids, launcher, files = sorted(b._Runtime.pids), b._Runtime.launcher_pid, sorted(b._Runtime.shm_files())
srv.stop()
print("RESULT" + json.dumps({"pids": pids, "launcher": launcher, "files_while_up": files,
                             "left": sorted(b._alive(set(pids))), "leftovers": b._Runtime.leftovers,
                             "metadata_left": b._Runtime.metadata_dir().exists(),
                             "timings": srv.timings_s}))
"""


def test_truncated_value_is_an_error_not_garbage(client: Any, monkeypatch: Any) -> None:
    """The read Dragon 0.15 fails with for a value it stored cut short becomes one clear error."""
    client.put_tensor("intact", np.arange(3))

    def truncated(key: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Exception caught in cloudpickle load: pickle data was truncated")

    monkeypatch.setattr(client.ddict, "get", truncated)
    with pytest.raises(SimaiError, match=r"holds 'cut' truncated.*value is lost"):
        client.get_tensor("cut")
    monkeypatch.undo()
    np.testing.assert_array_equal(client.get_tensor("intact"), np.arange(3))  # the reattached client reads on


def test_stop_leaves_nothing_of_this_run(tmp_path: Any) -> None:
    """A server that owns its runtime, in a fresh process (one runtime per process): nothing outlives stop()."""
    if (reason := _reason()) is not None:
        pytest.skip(reason)
    import psutil

    # Without this process's DRAGON_* variables: the child must start a runtime of its own, not half-join ours.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRAGON")}
    proc = subprocess.run([sys.executable, "-c", _CLEANUP_SCRIPT], capture_output=True, text=True, timeout=90,
                          cwd=Path(__file__).resolve().parents[1], env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    result = json.loads(line[len("RESULT"):])
    assert result["launcher"] in result["pids"] and len(result["pids"]) >= 3
    assert result["files_while_up"], "the run's pool files were not found while it ran"
    assert not result["left"] and not [p for p in result["pids"] if psutil.pid_exists(p)
                                       and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    shm = set(os.listdir("/dev/shm"))
    assert not shm & set(result["files_while_up"]), "this run's /dev/shm pool files are still there"
    assert result["timings"]["runtime_start_s"] > 0 and result["timings"]["ddict_destroy_s"] >= 0
    assert not result["metadata_left"], "the DDict orchestrator's metadata directory is still there"


_KILLED_SCRIPT = """
import json, sys, time
from pathlib import Path
from simai_core.staging import dragon as b
srv = b.DragonServer(total_mem=32 * 2**20, timeout_s=5.0)
srv.start()
metadata = b._Runtime.metadata_dir()
Path(sys.argv[1]).write_text(json.dumps({"pids": sorted(b._Runtime.pids), "files": sorted(b._Runtime.shm_files()),
                                         "metadata": str(metadata), "metadata_files": [p.name for p in metadata.iterdir()]}))
time.sleep(600)  # until SIGKILLed
"""


def test_the_next_run_reaps_a_killed_run(tmp_path: Any) -> None:
    """A SIGKILLed owner orphans its runtime (processes spinning, pool files in /dev/shm); the next run removes them."""
    if (reason := _reason()) is not None:
        pytest.skip(reason)
    import psutil

    from simai_core.staging.dragon import _alive, reap_orphans

    env = {k: v for k, v in os.environ.items() if not k.startswith("DRAGON")}
    ready = tmp_path / "up.json"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_SCRIPT, str(ready)], cwd=Path(__file__).resolve().parents[1],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready.exists(), proc.stderr.read().decode()[-3000:] if proc.poll() is not None else "no runtime in 90 s"
        up = json.loads(ready.read_text())
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    orphans = _alive(set(up["pids"]))
    assert orphans and up["files"], "the killed run should have left its runtime behind"
    reaped = reap_orphans()
    assert set(reaped["killed_pids"]) >= orphans
    deadline = time.monotonic() + 10
    while _alive(orphans) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(orphans), [psutil.Process(p).cmdline() for p in _alive(orphans)]
    assert not set(up["files"]) & set(os.listdir("/dev/shm"))
    # The orchestrator's metadata file, which Dragon writes to the working directory by default.
    assert [f.startswith("ddict_orc_") for f in up["metadata_files"]] == [True]
    assert not Path(up["metadata"]).exists()


def test_mpi_ranks_started_from_dragon_share_the_ddict(server: Any, tmp_path: Any) -> None:
    """mpiexec as a Dragon process: its ranks attach to the serialized DDict and read each other's values."""
    from simai_core.staging.dragon_mpi import run_clients

    records = run_clients(server.address, ranks=2, nbytes=4096, rounds=2, workdir=tmp_path, timeout_s=120)
    assert sorted(r["rank"] for r in records) == [0, 1] and {r["size"] for r in records} == {2}
    assert all(r["own_ok"] and r["neighbour_ok"] for r in records)
    assert not list(tmp_path.iterdir())


def test_under_mpi_the_backend_skips_with_a_reason(monkeypatch: Any) -> None:
    pytest.importorskip("dragon")
    from simai_core.staging import dragon as backend

    monkeypatch.setattr(mpi, "size", lambda: 2)
    with pytest.raises(BackendUnavailableError, match="serially or under the dragon launcher"):
        backend.check_available("dragon")


def test_missing_dragonhpc_gives_the_install_hint(monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "dragon", None)  # import dragon -> ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install -e '\.\[dragon\]'"):
        registry.load("dragon")
