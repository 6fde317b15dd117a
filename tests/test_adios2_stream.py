"""ADIOS2 streams: no loss and intact data in sync mode, counted discards in async mode, deadlines, no leftovers.

The writer runs in a peer process (``python -m simai_core.streaming.peer``) started in the
test's own directory, with ``TMPDIR`` pointing there; the test process reads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from simai_core.errors import BackendUnavailableError
from simai_core.streaming import StreamConfig, StreamError, StreamTimeoutError
from simai_core.streaming.adios2_setup import check_available, unavailable_reason
from simai_core.streaming.harness import join_writer, payload
from simai_core.streaming.pair import PairLink, peer_log, spawn_peer, stop_peer

REASON = unavailable_reason()
needs_adios2 = pytest.mark.skipif(REASON is not None, reason=REASON or "")
pytestmark = pytest.mark.adios2
TIMEOUT_S = 60.0


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[PairLink]:
    """A writer peer in this test's directory; it must exit cleanly, leaving nothing behind."""
    proc, link = spawn_peer(tmp_path, "lo", TIMEOUT_S)
    try:
        yield link
        link.send({"op": "quit"})
    finally:
        link.close()
        code = stop_peer(proc, tmp_path, 10.0)
    assert code == 0, peer_log(tmp_path)
    assert_nothing_left(tmp_path)


def assert_nothing_left(directory: Path, names: tuple[str, ...] = ()) -> None:
    """No file in ``directory`` (contact files, peer log), and no BP5 profiling file of ours in /tmp."""
    left = sorted(p.name for p in directory.iterdir())
    assert not left, f"left behind in {directory}: {left}"
    for name in names:
        assert not list(Path("/tmp").glob(f"{name}_*_profiling.json")), f"BP5 profiling file of {name} left in /tmp"


def read_test_stream(link: PairLink, path: Path, mode: str, steps: int, nbytes: int, *, interval_s: float = 0.0,
                     read_sleep_s: float = 0.0) -> tuple[list[int], int, float]:
    """Have the peer write ``steps`` test steps; read them all, checking every CRC and payload.

    Returns the data steps' indices received, the steps written and the writer's time to write them.
    """
    from simai_core.streaming.adios2_sst import Adios2StreamReader

    config = StreamConfig(mode=mode, open_timeout_s=TIMEOUT_S, step_timeout_s=TIMEOUT_S)  # type: ignore[arg-type]
    link.send({"op": "steps", "path": str(path), "mode": mode, "steps": steps, "nbytes": nbytes,
               "interval_s": interval_s, "open_timeout_s": TIMEOUT_S, "step_timeout_s": TIMEOUT_S})
    got = []
    reader = Adios2StreamReader(path, config)
    first = join_writer(reader, link)  # opens it
    try:
        for info in reader.steps():
            if info.step_id < first:
                continue  # the async writer's empty joining steps
            data, crc = reader.get("data"), reader.get("crc")
            assert int(crc[0]) == zlib.crc32(data.data), f"step {info.step_id}: checksum mismatch"
            assert np.array_equal(data, payload(nbytes, seed=info.step_id - first))
            got.append(info.step_id - first)
            time.sleep(read_sleep_s)
    finally:
        reader.close()
    reply = link.recv(TIMEOUT_S)
    written = int(reply["written"])
    assert reader.discarded(first + written, first) == written - len(got)
    return got, written, float(reply["write_s"])


@needs_adios2
def test_sync_loses_no_step_and_data_are_intact(peer: PairLink, tmp_path: Path) -> None:
    got, written, _ = read_test_stream(peer, tmp_path / "sync", "sync", steps=40, nbytes=100_000)
    assert written == 40 and got == list(range(40))


@needs_adios2
def test_sync_throttles_the_writer_to_a_slow_reader_without_loss(peer: PairLink, tmp_path: Path) -> None:
    got, written, write_s = read_test_stream(peer, tmp_path / "slow", "sync", steps=12, nbytes=10_000, read_sleep_s=0.05)
    assert got == list(range(12)) and written == 12
    assert write_s >= (12 - 3) * 0.05, "the writer ran ahead of the reader by more than its queue (2 steps)"


@needs_adios2
def test_async_discards_are_counted_with_a_slow_reader(peer: PairLink, tmp_path: Path) -> None:
    got, written, write_s = read_test_stream(peer, tmp_path / "async", "async", steps=30, nbytes=200_000,
                                             interval_s=0.005, read_sleep_s=0.1)
    assert written == 30 and write_s < 30 * 0.1 / 2, "the async writer waited for the reader"
    assert 0 < len(got) < 30, f"a reader 20x slower than the writer received {len(got)} of 30 steps"
    assert got == sorted(set(got))  # in order, never twice; every one intact (checked while reading)


@needs_adios2
def test_a_missing_writer_fails_the_reader_within_its_deadline(tmp_path: Path) -> None:
    from simai_core.streaming.adios2_sst import Adios2StreamReader

    start = time.monotonic()
    with pytest.raises(StreamTimeoutError, match=r"no SST writer for .*within 2 s"):
        Adios2StreamReader(tmp_path / "nobody", StreamConfig(open_timeout_s=2)).open()
    assert time.monotonic() - start < 10
    assert_nothing_left(tmp_path)


@needs_adios2
def test_a_writer_without_reader_ends_at_its_deadline_instead_of_hanging(tmp_path: Path) -> None:
    """Sync SST open waits in C with the GIL held: the watchdog ends the process and says where it was."""
    code = ("from simai_core.streaming import StreamConfig\n"
            "from simai_core.streaming.adios2_sst import Adios2StreamWriter\n"
            "Adios2StreamWriter('lonely', StreamConfig(open_timeout_s=2)).open()\n")
    env = os.environ | {"TMPDIR": str(tmp_path)}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and time.monotonic() - start < 30
    assert "Timeout (0:00:02)" in proc.stderr and "_open_until_a_reader_joins" in proc.stderr
    # A killed writer cannot remove its contact file; the next writer of that name refuses to start.
    from simai_core.streaming.adios2_sst import Adios2StreamWriter

    with pytest.raises(StreamError, match=r"lonely\.sst exists"):
        Adios2StreamWriter(tmp_path / "lonely", StreamConfig()).open()
    (tmp_path / "lonely.sst").unlink()
    assert_nothing_left(tmp_path)


@needs_adios2
def test_bp5_round_trip_leaves_no_profiling_file(tmp_path: Path) -> None:
    from simai_core.streaming.adios2_sst import Adios2StreamReader, Adios2StreamWriter

    path = tmp_path / f"roundtrip-{os.getpid()}.bp"
    arrays = [np.arange(i, i + 6, dtype=np.float32).reshape(2, 3) for i in range(3)]
    with Adios2StreamWriter(path, engine="BP5") as writer:
        for array in arrays:
            writer.write_step({"x": array})
    with Adios2StreamReader(path, engine="BP5") as reader:
        read = [reader.get("x") for _ in reader.steps()]
    assert all(np.array_equal(a, b) for a, b in zip(arrays, read, strict=True)) and reader.received == [0, 1, 2]
    import shutil

    shutil.rmtree(path)
    assert_nothing_left(tmp_path, names=(path.name,))


def test_missing_adios2_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "adios2", None)  # import adios2 now raises ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install 'adios2=="):
        check_available()
    assert "pip install" in (unavailable_reason() or "")
