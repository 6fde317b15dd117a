"""The file backends beyond the shared contract: atomic overwrite under a concurrent reader, odd sizes,
.npy files that numpy reads (and that numpy wrote), a full device, and the raw reference's bytes."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from simai_core.errors import StagingFullError
from simai_core.staging import files
from simai_core.staging.files import FileClient, FileRaw

ODD_SIZES = [1, 3, 4095, 4097, 65_537, 1_048_579]


@pytest.fixture(params=["nodelocal", "filesystem"])
def area(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A staging directory on tmpfs (nodelocal) or on the disk holding tmp_path (filesystem)."""
    if request.param == "filesystem":
        yield tmp_path
        return
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm on this machine")
    shm = Path(tempfile.mkdtemp(prefix="simai-test-files-", dir="/dev/shm"))
    try:
        yield shm
    finally:
        shutil.rmtree(shm, ignore_errors=True)


@pytest.fixture
def client(area: Path) -> Iterator[FileClient]:
    with FileClient("test", area) as client:
        yield client


def _npy_file(area: Path, key: str) -> Path:
    return area / (quote(key, safe="") + ".npy")


def test_reader_never_sees_a_torn_value(client: FileClient, area: Path) -> None:
    """A writer overwrites one key with values of two shapes, each filled with its own number; a reader (with
    and without ``out``) must always get one whole value: the shape of its fill, every element alike."""
    values = {1: np.full(1 << 20, 1, np.uint16), 2: np.full((1 << 18, 4), 2, np.uint16),
              3: np.full(1 << 20, 3, np.uint16)}
    client.put_tensor("torn", values[1])
    stop, errors, seen = threading.Event(), [], set()

    def check(got: np.ndarray | None) -> None:
        fill = int(got.flat[0]) if got is not None and got.size else -1
        if fill not in values or got.shape != values[fill].shape or not np.all(got == fill):
            errors.append(None if got is None else (got.shape, np.unique(got)[:5]))
        seen.add(fill)

    def write() -> None:
        while not stop.is_set():
            for value in values.values():
                client.put_tensor("torn", value)

    def read() -> None:
        out = np.empty(1 << 20, np.uint16)
        while not stop.is_set():
            try:
                check(client.get_tensor("torn"))
                check(client.get_tensor("torn", out=out))
            except ValueError as exc:  # only the whole 2-D value may refuse the 1-D `out`
                if "holds uint16[262144, 4]" not in str(exc):
                    errors.append(exc)
            except Exception as exc:  # reported by the main thread
                errors.append(exc)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and not errors and len(seen) < 3:
        time.sleep(0.05)
    time.sleep(0.5)  # keep overlapping a while after every value has been seen
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert not errors, f"torn reads: {errors[:3]}"
    assert seen == {1, 2, 3}, "the reader did not see every value: reads did not overlap writes"
    assert not [p for p in area.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange+unlink", "rename"])
def test_both_ways_of_replacing_leave_one_file(client: FileClient, area: Path, exchange: bool) -> None:
    """Whichever way a put replaces the old file (chosen per file system), one whole file remains per key."""
    if exchange and not client._dir.exchange and files._renameat2 is None:
        pytest.skip("no renameat2 in this C library")
    client._dir.exchange = exchange
    for value in range(3):
        client.put_tensor("replaced", np.full(1000 + value, value, np.int32))
        client.put_bytes("replaced", bytes([value]) * (10 + value))
    np.testing.assert_array_equal(client.get_tensor("replaced"), np.full(1002, 2, np.int32))
    assert client.get_bytes("replaced") == b"\x02" * 12
    assert sorted(p.name for p in area.iterdir()) == ["replaced.bin", "replaced.npy"]


@pytest.mark.parametrize("nbytes", ODD_SIZES)
def test_odd_sizes_round_trip(client: FileClient, nbytes: int) -> None:
    data = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    client.put_tensor("odd", data)
    np.testing.assert_array_equal(client.get_tensor("odd"), data)
    out = np.empty_like(data)
    assert client.get_tensor("odd", out=out) is out
    np.testing.assert_array_equal(out, data)
    client.put_bytes("odd", data.tobytes())
    assert client.get_bytes("odd") == data.tobytes()


@pytest.mark.parametrize("nbytes", ODD_SIZES)
def test_raw_reference_round_trips_every_byte(area: Path, nbytes: int) -> None:
    data = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    out = np.zeros_like(data)
    raw = FileRaw(area)
    try:
        raw.put("raw", memoryview(np.ones(nbytes + 100, np.uint8)))
        raw.put("raw", memoryview(data))  # overwritten in place, then cut to its size: no stale tail
        raw.get("raw", memoryview(out))
    finally:
        raw.close()
    np.testing.assert_array_equal(out, data)
    assert (area / "raw.raw").stat().st_size == nbytes


@pytest.mark.parametrize("array", [np.arange(12, dtype=np.float32).reshape(3, 4), np.array(2.5),
                                   np.zeros((0, 3), np.int16), np.arange(5, dtype=">i4"),
                                   np.array(["2024-01-02", "2025-03-04"], dtype="datetime64[D]"),
                                   np.zeros(3, [("a", "<i4"), ("b", "<f8")])], ids=str)
def test_numpy_reads_staged_files(client: FileClient, area: Path, array: np.ndarray) -> None:
    client.put_tensor("npy", array)
    loaded = np.load(_npy_file(area, "npy"))
    assert loaded.dtype == array.dtype and loaded.shape == array.shape
    np.testing.assert_array_equal(loaded, array)


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_files_numpy_wrote_are_read(client: FileClient, area: Path, version: tuple[int, int]) -> None:
    """A header laid out by numpy, in either format version, is parsed; with ``out`` too."""
    array = np.arange(30, dtype=np.float64).reshape(5, 6)
    with open(_npy_file(area, "numpy"), "wb") as f:
        np.lib.format.write_array(f, array, version=version)
    np.testing.assert_array_equal(client.get_tensor("numpy"), array)
    out = np.empty_like(array)
    assert client.get_tensor("numpy", out=out) is out
    np.testing.assert_array_equal(out, array)


def test_fortran_ordered_file_is_refused(client: FileClient, area: Path) -> None:
    np.save(_npy_file(area, "fortran"), np.asfortranarray(np.arange(6.0).reshape(2, 3)))
    with pytest.raises(ValueError, match="Fortran"):
        client.get_tensor("fortran")


def test_out_with_another_ndim_is_refused(client: FileClient) -> None:
    """``out`` whose header would differ in length from the stored one (another ndim) is refused too."""
    client.put_tensor("ndim", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="float32"):
        client.get_tensor("ndim", out=np.empty(24, np.float32))
    with pytest.raises(ValueError, match="float32"):
        client.get_tensor("ndim", out=np.empty((4, 3, 2), np.float32))


def test_object_arrays_are_refused(client: FileClient) -> None:
    with pytest.raises(TypeError, match="object"):
        client.put_tensor("object", np.array([{}, None], dtype=object))
    assert not client.exists("object")


def test_closed_client_touches_nothing(area: Path) -> None:
    client = FileClient("test", area)
    client.close()
    client.close()
    with pytest.raises(OSError):
        client.put_tensor("closed", np.zeros(3))
    assert not list(area.iterdir())


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (needs the right to mount; skipped without it), unmounted at the end."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True, timeout=30, check=True)


def test_full_device_keeps_the_old_value(tiny_tmpfs: Path) -> None:
    with FileClient("test", tiny_tmpfs) as client:
        old = np.arange(1000, dtype=np.int64)
        client.put_tensor("full", old)
        with pytest.raises(StagingFullError, match="No space left"):
            client.put_tensor("full", np.ones(1 << 20, np.uint8))
        np.testing.assert_array_equal(client.get_tensor("full"), old)
        assert [p.name for p in tiny_tmpfs.iterdir()] == [_npy_file(tiny_tmpfs, "full").name]
