"""The file backends beyond the shared contract: atomic overwrite under a concurrent reader, odd sizes,
.npy files that numpy reads (and that numpy wrote), a full device, and the raw reference's bytes.

Each runs on both put protocols: ``rename`` (a fresh file renamed into place, ``filesystem``) and
``slots`` (in place into two slots per key, ``nodelocal``); the slots protocol's own guarantees
(no read mixes two writes, a dead writer leaves the last value whole) have their own tests below.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from simai_core.errors import StagingFullError, StagingTimeoutError
from simai_core.staging import files
from simai_core.staging.files import FileClient, FileRaw, FileRawOpen

ODD_SIZES = [1, 3, 4095, 4097, 65_537, 1_048_579]


@pytest.fixture(params=["nodelocal", "filesystem"])
def area(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A staging directory on tmpfs (nodelocal) or on the disk holding tmp_path (filesystem)."""
    if request.param == "filesystem":
        yield tmp_path
        return
    yield from _tmpfs_dir("simai-test-files-")


def _tmpfs_dir(prefix: str) -> Iterator[Path]:
    """A new directory in /dev/shm, removed afterwards (the test is skipped without /dev/shm)."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm on this machine")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=[False, True], ids=["rename", "slots"])
def client(request: pytest.FixtureRequest, area: Path) -> Iterator[FileClient]:
    with FileClient("test", area, in_place=request.param) as client:
        yield client


@pytest.fixture
def rename_client(area: Path) -> Iterator[FileClient]:
    """A client of the rename protocol, whose tensors are plain .npy files."""
    with FileClient("test", area, in_place=False) as client:
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
def test_both_ways_of_replacing_leave_one_file(rename_client: FileClient, area: Path, exchange: bool) -> None:
    """Whichever way a put replaces the old file (chosen per file system), one whole file remains per key."""
    client = rename_client
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


@pytest.mark.parametrize("nbytes", ODD_SIZES)
def test_open_fd_reference_round_trips_every_byte(area: Path, nbytes: int) -> None:
    data = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    out, other = np.zeros_like(data), np.zeros_like(data)
    writer, reader = FileRawOpen(area), FileRawOpen(area)  # two clients: the bytes go through the file
    try:
        writer.put("kept", memoryview(np.ones(nbytes, np.uint8)))
        reader.get("kept", memoryview(other))
        writer.put("kept", memoryview(data))  # same descriptors, new value
        reader.get("kept", memoryview(out))
    finally:
        writer.close()
        reader.close()
    assert (other == 1).all()
    np.testing.assert_array_equal(out, data)


@pytest.mark.parametrize("array", [np.arange(12, dtype=np.float32).reshape(3, 4), np.array(2.5),
                                   np.zeros((0, 3), np.int16), np.arange(5, dtype=">i4"),
                                   np.array(["2024-01-02", "2025-03-04"], dtype="datetime64[D]"),
                                   np.zeros(3, [("a", "<i4"), ("b", "<f8")])], ids=str)
def test_numpy_reads_staged_files(rename_client: FileClient, area: Path, array: np.ndarray) -> None:
    rename_client.put_tensor("npy", array)
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


@pytest.mark.parametrize("in_place", [False, True], ids=["rename", "slots"])
def test_full_device_keeps_the_old_value(tiny_tmpfs: Path, in_place: bool) -> None:
    with FileClient("test", tiny_tmpfs, in_place=in_place) as client:
        old = np.arange(1000, dtype=np.int64)
        client.put_tensor("full", old)
        with pytest.raises(StagingFullError, match="No space left"):
            client.put_tensor("full", np.ones(1 << 20, np.uint8))
        np.testing.assert_array_equal(client.get_tensor("full"), old)
        assert [p.name for p in tiny_tmpfs.iterdir()] == ["full.slots" if in_place else _npy_file(tiny_tmpfs, "full").name]


# The slots protocol (nodelocal): puts write in place, a sequence check keeps reads whole.

@pytest.fixture
def shm() -> Iterator[Path]:
    """A directory on tmpfs, where nodelocal puts its slots files."""
    yield from _tmpfs_dir("simai-test-slots-")


def test_nodelocal_writes_in_place_and_filesystem_renames(shm: Path) -> None:
    with FileClient("nodelocal", shm) as local, FileClient("filesystem", shm) as shared:
        assert local.in_place and not shared.in_place
        local.put_tensor("a", np.arange(10))
        inode = (shm / "a.slots").stat().st_ino
        local.put_tensor("a", np.arange(10) * 2)  # same size: the same file, written in place
        assert (shm / "a.slots").stat().st_ino == inode
        assert (shm / "a.slots").stat().st_mode & 0o777 == 0o600
        np.testing.assert_array_equal(local.get_tensor("a"), np.arange(10) * 2)
        shared.put_tensor("b", np.arange(3))
        assert sorted(p.name for p in shm.iterdir()) == ["a.slots", "b.npy"]


def _overtaken_preadv(writer: FileClient, key: str, n: int, calls: list, mixed: list) -> Callable[..., int]:
    """A ``preadv`` whose first call is cut in half; between the halves ``writer`` puts ``key`` twice
    (all 2s: the other slot; all 3s: the slot being read). Each call is logged to ``calls`` as
    ``("preadv", fd, offset)``; the values the first call's buffer ended up holding go to ``mixed``."""
    real_preadv = os.preadv

    def preadv(fd: int, buffers: list, offset: int) -> int:
        first = not any(name == "preadv" for name, _, _ in calls)
        calls.append(("preadv", fd, offset))
        if not first:
            return real_preadv(fd, buffers, offset)
        head, into = buffers
        got = real_preadv(fd, [head, into[: n // 2]], offset)
        writer.put_tensor(key, np.full(n, 2, np.uint8))  # the other slot
        writer.put_tensor(key, np.full(n, 3, np.uint8))  # this slot, under the reader
        got += real_preadv(fd, [into[n // 2:]], offset + got)
        mixed.extend(np.unique(into).tolist())
        return got

    return preadv


def test_a_read_that_two_puts_overtake_starts_over(shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader's preadv is cut in half; between the halves two puts land, the second in the very slot
    being read. The first try's buffer then mixes two writes; the sequence check must throw it away."""
    n = 1 << 16
    with FileClient("test", shm, in_place=True) as reader, FileClient("test", shm, in_place=True) as writer:
        writer.put_tensor("seq", np.full(n, 1, np.uint8))
        calls: list[tuple[str, int, int]] = []
        mixed: list[int] = []
        monkeypatch.setattr(files.os, "preadv", _overtaken_preadv(writer, "seq", n, calls, mixed))
        out = np.empty(n, np.uint8)
        assert reader.get_tensor("seq", out=out) is out
    assert mixed == [1, 3], "the first try did not read across two writes"
    offsets = [offset for _, _, offset in calls]
    assert len(offsets) == 2 and offsets[0] == offsets[1]  # started over on the same slot, now generation 3's
    assert np.all(out == 3)


_WRITER = """
import sys, time
import numpy as np
from pathlib import Path
from simai_core.staging.files import FileClient
root, first, seconds = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
shapes = [(1 << 19,), (1 << 17, 4), (1 << 16,)]  # 1 MiB in two shapes, and 128 KiB: new files too
with FileClient("nodelocal", root) as client:
    print("ready", flush=True)
    end, i = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        client.put_tensor("shared", np.full(shapes[i % 3], first + i % 3, np.uint16))
        i += 1
    print(i, flush=True)
"""


def _writer(shm: Path, first: int, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(shm), str(first), str(seconds)],
                            stdout=subprocess.PIPE, text=True)


def test_no_read_mixes_two_writes_across_processes(shm: Path) -> None:
    """Two writer processes put values of their own fills (in place, and new files when the size changes)
    while two reader threads here get them: every read is one whole value, of the shape its fill was put with."""
    shapes = {1: (1 << 19,), 2: (1 << 17, 4), 3: (1 << 16,)}
    fills = {first + k: shapes[k + 1] for first in (1, 11) for k in range(3)}
    with FileClient("nodelocal", shm) as client:
        client.put_tensor("shared", np.full(shapes[1], 1, np.uint16))
        writers = [_writer(shm, first, 3.0) for first in (1, 11)]
        try:
            for writer in writers:
                assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
            errors: list[object] = []
            seen: set[int] = set()

            def read() -> None:
                out = np.empty(1 << 19, np.uint16)
                while any(w.poll() is None for w in writers):
                    try:
                        for got in (client.get_tensor("shared"), client.get_tensor("shared", out=out)):
                            fill = int(got.flat[0])
                            if fills.get(fill) != got.shape or not np.all(got == fill):
                                errors.append((got.shape, np.unique(got)[:5]))
                            seen.add(fill)
                    except ValueError as exc:  # only a value of another shape may refuse `out`
                        if "holds uint16" not in str(exc):
                            errors.append(exc)

            readers = [threading.Thread(target=read) for _ in range(2)]
            for thread in readers:
                thread.start()
            for thread in readers:
                thread.join(timeout=60)
                assert not thread.is_alive()
            puts = [int(w.communicate(timeout=30)[0].strip()) for w in writers]
        finally:
            for writer in writers:
                writer.kill()
                writer.communicate(timeout=30)
    assert not errors, f"mixed reads: {errors[:3]}"
    assert all(w.returncode == 0 for w in writers)
    assert len(seen) >= 4 and min(puts) > 10, f"reads and writes hardly overlapped: saw {seen}, puts {puts}"


def test_a_writer_killed_mid_put_leaves_a_whole_value_and_no_lock(shm: Path) -> None:
    """SIGKILL a process that keeps putting 8 MiB values, at random moments: each time the key holds
    one whole value, and the next put takes the lock at once."""
    rng = np.random.default_rng(0)
    script = _WRITER.replace("shapes = [(1 << 19,), (1 << 17, 4), (1 << 16,)]", "shapes = [(1 << 22,)] * 3")
    with FileClient("nodelocal", shm) as client:
        client.put_tensor("shared", np.full(1 << 22, 7, np.uint16))  # a value even if the first kill comes early
        for attempt in range(5):
            with subprocess.Popen([sys.executable, "-c", script, str(shm), str(10 * attempt + 1), "30"],
                                  stdout=subprocess.PIPE, text=True) as writer:
                assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
                time.sleep(float(rng.uniform(0.05, 0.3)))
                writer.kill()
                writer.wait(timeout=30)
            got = client.get_tensor("shared")
            assert got is not None and got.shape == (1 << 22,) and np.all(got == got.flat[0])
            start = time.monotonic()
            client.put_tensor("shared", np.full(1 << 22, 7, np.uint16))
            assert time.monotonic() - start < 2.0
            np.testing.assert_array_equal(client.get_tensor("shared"), np.full(1 << 22, 7, np.uint16))


def test_a_put_that_died_before_publishing_is_not_read(shm: Path) -> None:
    """A put that wrote its slot and died before the publishing pwrite: gets keep the last value."""
    with FileClient("nodelocal", shm) as client:
        client.put_tensor("half", np.full(4096, 1, np.int32))
        fd = os.open(shm / "half.slots", os.O_RDWR)
        try:
            gray, capacity, _ = files._Slots(fd, "half").control()
            new = np.full(4096, 2, np.int32)
            os.pwritev(fd, [files._seq_block(files._generation(gray) + 1), client._header(new.dtype, new.shape), new],
                       files._PAGE + ((files._generation(gray) + 1) & 1) * capacity)
        finally:
            os.close(fd)  # no publish
        np.testing.assert_array_equal(client.get_tensor("half"), np.full(4096, 1, np.int32))
        client.put_tensor("half", np.full(4096, 3, np.int32))
        np.testing.assert_array_equal(client.get_tensor("half", out=np.empty(4096, np.int32)), np.full(4096, 3, np.int32))


def test_a_put_waits_for_another_put_of_the_key_with_a_deadline(shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "_LOCK_DEADLINE_S", 0.3)
    with FileClient("nodelocal", shm) as client:
        client.put_tensor("locked", np.zeros(8))
        fd = os.open(shm / "locked.slots", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another put, stuck
            with pytest.raises(StagingTimeoutError, match="another put"):
                client.put_tensor("locked", np.ones(8))
        finally:
            os.close(fd)
        client.put_tensor("locked", np.ones(8))
        np.testing.assert_array_equal(client.get_tensor("locked"), np.ones(8))


@pytest.mark.parametrize("sizes", [(1000, 100_000), (100_000, 1000), (70_000, 65_000, 70_000)], ids=str)
def test_slots_follow_the_value_size(shm: Path, sizes: tuple[int, ...]) -> None:
    """A bigger value, or a far smaller one, gets a new slots file; a similar one reuses the slots."""
    with FileClient("nodelocal", shm) as client:
        for i, n in enumerate(sizes):
            client.put_tensor("sized", np.full(n, i, np.uint8))
            out = np.empty(n, np.uint8)
            assert client.get_tensor("sized", out=out) is out and np.all(out == i)
            capacity = (shm / "sized.slots").stat().st_size
            assert capacity <= 2 * files._PAGE + 2 * (4 * n + files._PAGE) + 64 * 1024 * 2


def test_in_place_put_on_a_full_device_keeps_the_old_value(tiny_tmpfs: Path) -> None:
    """The second slot's pages are taken at the first put that lands there: if they are not to be had,
    the put fails with StagingFullError and the published value stays."""
    with FileClient("nodelocal", tiny_tmpfs) as client:
        old = np.full(130 * 1024, 1, np.uint8)  # control page + 33 pages: a second slot does not fit in 64 pages
        client.put_tensor("full", old)
        with pytest.raises(StagingFullError, match="No space left"):
            client.put_tensor("full", np.full(130 * 1024, 2, np.uint8))
        np.testing.assert_array_equal(client.get_tensor("full"), old)


# A client keeps the slots files it reads open; a get of a value it read before guesses it.

def _stable(client: FileClient, key: str, out: np.ndarray) -> None:
    """Get ``key`` until the client guesses it: the second get that finds the same generation marks it stable."""
    for _ in range(3):
        assert client.get_tensor(key, out=out) is out


def test_a_guessed_read_that_two_puts_overtake_starts_over(shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader guesses the value it read before: its preadv comes first, with no control read before it.
    The preadv is cut in half and two puts land between the halves, the second in the very slot being
    read: the control read after it must throw the mixed buffer away."""
    n = 1 << 16
    with FileClient("test", shm, in_place=True) as reader, FileClient("test", shm, in_place=True) as writer:
        writer.put_tensor("guess", np.full(n, 1, np.uint8))
        out = np.empty(n, np.uint8)
        _stable(reader, "guess", out)
        real_pread = os.pread
        calls: list[tuple[str, int, int]] = []
        mixed: list[int] = []

        def pread(fd: int, size: int, offset: int) -> bytes:
            calls.append(("pread", fd, offset))
            return real_pread(fd, size, offset)

        monkeypatch.setattr(files.os, "preadv", _overtaken_preadv(writer, "guess", n, calls, mixed))
        monkeypatch.setattr(files.os, "pread", pread)
        assert reader.get_tensor("guess", out=out) is out
    assert mixed == [1, 3], "the guessed read did not read across two writes"
    # the reader's calls: guess, its check (which names generation 3), the same slot again, its check
    calls = [c for c in calls if c[1] == calls[0][1]]
    assert [c[0] for c in calls] == ["preadv", "pread", "preadv", "pread"], calls
    assert calls[0] == calls[2]
    assert np.all(out == 3)


def test_a_value_read_again_costs_one_preadv_and_one_pread(shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FileClient("nodelocal", shm) as client:
        client.put_tensor("again", np.arange(1000))
        out = np.empty(1000, np.int64)
        _stable(client, "again", out)
        calls: list[str] = []
        for name in ("open", "close", "pread", "preadv", "fstat"):
            real = getattr(os, name)
            monkeypatch.setattr(files.os, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
        monkeypatch.setattr(files, "_RECHECK_S", 1e9)
        assert client.get_tensor("again", out=out) is out
        assert calls == ["preadv", "pread"]
    np.testing.assert_array_equal(out, np.arange(1000))


def test_a_kept_file_that_another_client_replaces_or_deletes_is_not_read(shm: Path) -> None:
    """A put of another size (a new file renamed over the old) or a delete retires the old file first:
    a reader that keeps the old one open sees the new value, or no value, at its very next get."""
    with FileClient("nodelocal", shm) as reader, FileClient("nodelocal", shm) as writer:
        writer.put_tensor("moved", np.full(1000, 1, np.int32))
        out = np.empty(1000, np.int32)
        _stable(reader, "moved", out)
        writer.put_tensor("moved", np.full(100_000, 2, np.int32))  # a new file
        np.testing.assert_array_equal(reader.get_tensor("moved"), np.full(100_000, 2, np.int32))
        writer.put_tensor("moved", np.full(1000, 3, np.int32))  # and back
        _stable(reader, "moved", out)
        assert np.all(out == 3)
        writer.delete("moved")
        assert reader.get_tensor("moved", out=out) is None and reader.get_tensor("moved") is None
        writer.put_tensor("moved", np.full(1000, 4, np.int32))
        assert reader.get_tensor("moved", out=out) is out and np.all(out == 4)


def test_a_kept_file_removed_behind_the_backends_back_is_noticed(shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``rm`` of a slots file is seen within the recheck interval; removal of the whole directory raises."""
    with FileClient("nodelocal", shm) as client:
        client.put_tensor("rm", np.ones(100))
        out = np.empty(100)
        _stable(client, "rm", out)
        (shm / "rm.slots").unlink()
        time.sleep(files._RECHECK_S * 2)
        assert client.get_tensor("rm", out=out) is None
        client.put_tensor("rm", np.ones(100))
        _stable(client, "rm", out)
        shutil.rmtree(shm)
        time.sleep(files._RECHECK_S * 2)
        with pytest.raises(FileNotFoundError, match="was removed"):
            client.get_tensor("rm", out=out)
        with pytest.raises(FileNotFoundError, match="was removed"):
            client.put_tensor("rm", np.ones(100))


def test_a_directory_removed_while_its_key_vanished_is_named_not_the_key(shm: Path) -> None:
    """``check_store``: a missing key whose directory an ``rm -rf`` removes a moment later is reported as the removal."""
    with FileClient("nodelocal", shm) as client:
        client.put_tensor("k", np.ones(10))
        client.check_store(within_s=0.05)  # the directory is there: nothing to say
        client.delete("k")  # rm -rf: the files first, then, a moment later, the directory
        remover = threading.Timer(0.1, shutil.rmtree, args=(shm,))
        remover.start()
        start = time.monotonic()
        with pytest.raises(FileNotFoundError, match="was removed"):
            client.check_store(within_s=5.0)
        assert time.monotonic() - start < 4.0, "seen when it happened, not at the end of the watch"
        remover.join()


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_kept_files_are_bounded_per_thread_and_closed_with_the_client(shm: Path) -> None:
    before = _open_fds()
    client = FileClient("nodelocal", shm)
    for i in range(3 * files._KEEP_OPEN):
        client.put_tensor(f"k{i}", np.full(10, i))
        np.testing.assert_array_equal(client.get_tensor(f"k{i}"), np.full(10, i))
    assert len(_open_fds() - before) == 1 + files._KEEP_OPEN  # the directory and the kept files
    thread = threading.Thread(target=lambda: [client.get_tensor(f"k{i}") for i in range(5)])
    thread.start()
    thread.join(timeout=30)
    assert len(_open_fds() - before) == 1 + files._KEEP_OPEN + 5  # that thread's own
    client.close()
    assert _open_fds() - before == set()


def test_a_first_put_never_replaces_a_file_another_put_made(shm: Path) -> None:
    """Two first puts of a key race: the one that comes second writes into the first's file, in place,
    instead of renaming its own over it (a replaced file must be retired first)."""
    with FileClient("nodelocal", shm) as client:
        client.put_tensor("first", np.full(10, 1))
        inode = (shm / "first.slots").stat().st_ino
        value = np.full(10, 2)
        header = client._header(value.dtype, value.shape)
        assert not client._new_slots("first", header, value, files._SLOT_HEAD + len(header) + value.nbytes, None)
        assert [p.name for p in shm.iterdir()] == ["first.slots"] and (shm / "first.slots").stat().st_ino == inode
        np.testing.assert_array_equal(client.get_tensor("first"), np.full(10, 1))


def test_a_file_retired_by_a_put_that_died_is_read_and_replaced(shm: Path) -> None:
    """A put that retired the old file and died before renaming its new one over it: the old file,
    still under the key's name, is read; the next put replaces it with a live one."""
    with FileClient("nodelocal", shm) as reader, FileClient("nodelocal", shm) as writer:
        writer.put_tensor("dead", np.full(10, 1))
        out = np.empty(10, np.int64)
        _stable(reader, "dead", out)
        fd = os.open(shm / "dead.slots", os.O_RDWR)
        try:
            files._Slots(fd, "dead").retire()
        finally:
            os.close(fd)
        for _ in range(3):
            assert reader.get_tensor("dead", out=out) is out and np.all(out == 1)
        writer.put_tensor("dead", np.full(10, 2))
        assert reader.get_tensor("dead", out=out) is out and np.all(out == 2)
        assert files._Slots(os.open(shm / "dead.slots", os.O_RDONLY), "dead").control()[2] is False
        writer.delete("dead")
        assert not writer.exists("dead") and reader.get_tensor("dead") is None


def test_threads_of_one_client_take_turns_putting_a_key(shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each thread keeps its own descriptor, so the writer lock (flock, per open file) also keeps two threads
    of one client apart: no two slot writes at once, and every read (a third thread) one whole value."""
    n = 1 << 20
    inside, overlaps, errors, seen = [0], [0], [], set()
    real_write = files._Slots.write

    def write_alone(self: files._Slots, *args: object) -> None:
        inside[0] += 1
        overlaps[0] += inside[0] > 1
        try:
            real_write(self, *args)  # type: ignore[arg-type]
        finally:
            inside[0] -= 1

    monkeypatch.setattr(files._Slots, "write", write_alone)
    with FileClient("nodelocal", shm) as client:
        client.put_tensor("threads", np.full(n, 1, np.uint16))
        stop = threading.Event()

        def write(fill: int) -> None:
            value = np.full(n, fill, np.uint16)
            while not stop.is_set():
                client.put_tensor("threads", value)

        def read() -> None:
            out = np.empty(n, np.uint16)
            while not stop.is_set():
                try:
                    client.get_tensor("threads", out=out)
                except Exception as exc:  # reported by the main thread
                    errors.append(exc)
                    return
                if not np.all(out == out[0]):
                    errors.append(np.unique(out)[:5])
                seen.add(int(out[0]))

        threads = [threading.Thread(target=write, args=(fill,)) for fill in (1, 2)] + [threading.Thread(target=read)]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
            assert not thread.is_alive()
        last = client.get_tensor("threads")
    assert overlaps[0] == 0, f"{overlaps[0]} slot writes ran while another was running"
    assert not errors, f"mixed reads: {errors[:3]}"
    assert seen == {1, 2} and last is not None and np.all(last == last[0])


def test_a_forked_child_does_not_share_the_parents_writer_lock(shm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child forked while the parent holds a key's lock (mid-put) must wait for it: the child closes its copies
    of the parent's kept descriptors, whose flock it would otherwise share."""
    monkeypatch.setattr(files, "_LOCK_DEADLINE_S", 0.3)
    with FileClient("nodelocal", shm) as client:
        client.put_tensor("fork", np.ones(10))  # makes the file
        client.put_tensor("fork", np.zeros(10))  # keeps it open
        kept = client._thread_files("writers")["fork"]
        fcntl.flock(kept.fd, fcntl.LOCK_EX)  # the parent, mid-put
        pid = os.fork()
        if pid == 0:  # the child: its put must time out on the parent's lock
            code = 3
            try:
                client.put_tensor("fork", np.ones(10))
            except StagingTimeoutError:
                code = 0
            except BaseException:
                code = 4
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        fcntl.flock(kept.fd, fcntl.LOCK_UN)
        assert os.waitstatus_to_exitcode(status) == 0, "the child's put did not wait for the parent's lock"
        np.testing.assert_array_equal(client.get_tensor("fork"), np.zeros(10))
