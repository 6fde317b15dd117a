"""File backends: one file per key in a directory.

``filesystem`` puts the directory on a file system every node shares; ``nodelocal`` on
node-local storage (``/dev/shm`` by default), where only ranks of one node meet.
``filesystem`` tensors are ``.npy`` files (readable with ``numpy.load``); blobs of both are raw
``.bin`` files, and both replace a blob's file as below.

``nodelocal`` tensors are ``.slots`` files written in place (see :class:`_Slots`): two slots per
key that puts alternate between, a published generation, and a sequence check on every read, so
a reader gets one whole value without the put allocating fresh pages. A client keeps the slots
files it reads open (see :class:`_Kept`): a get of a value it read before is one ``preadv`` and
one check. Only one node's page cache sees these files, so the in-place protocol is never used on
a shared file system.

A put is openat of a uniquely named temp file, one writev of header and data, close, and a
rename over the key's file (on file systems other than tmpfs, an exchange of the two names and
an unlink of the old file: ext4 and btrfs flush a file's data before a rename that replaces
another, which costs milliseconds). A get with ``out=`` is openat, one preadv of header and
data, close. A key's name always refers to a whole file, and a file is never written again
once it has a key's name, so a reader sees the old value or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import io
import itertools
import os
import re
import shutil
import socket
import stat
import struct
import tempfile
import threading
import time
import weakref
from functools import lru_cache
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import numpy as np

from simai_core.errors import BackendUnavailableError, StagingFullError, StagingTimeoutError
from simai_core.profiles import MachineProfile
from simai_core.staging.base import ArrayLike, RawReference, StagingClient, StagingServer, as_numpy, check_out

_SUFFIXES = (".npy", ".bin", ".slots")
_NPY_MAGIC = b"\x93NUMPY"
_HEADER_GUESS = 256  # bytes read first when the header's size is not known (ours are 128)


def check_available(name: str) -> None:
    """File backends need nothing beyond the standard library and numpy."""


def make_server(name: str, profile: MachineProfile, workdir: Path) -> FileStagingArea:
    """A staging directory: under the profile's node-local path (nodelocal) or shared path (filesystem)."""
    if name == "nodelocal":
        parent = profile.staging.node_local_path
    elif profile.staging.shared_path is not None:
        parent = profile.staging.shared_path
    else:
        parent = workdir
        workdir.mkdir(parents=True, exist_ok=True)
    return FileStagingArea(name, Path(parent), capacity_bytes=profile.staging.memory_bytes)


def connect(name: str, address: str) -> FileClient:
    """A client of the staging directory ``address``."""
    return FileClient(name, Path(address))


def raw_reference(name: str, address: str) -> RawReference:
    """Plain write/readinto of the buffer in the same directory, overwriting in place."""
    return FileRaw(Path(address))


def second_references(name: str, address: str) -> dict[str, RawReference]:
    """Two more plain paths, each a named reference FOM.

    ``truncate``: the everyday write (``open(path, "wb")``), onto fresh pages as an atomic put's must be.
    ``open_fd``: one ``pwritev``/``preadv`` on a descriptor kept open across calls, the fastest plain
    path, blind to the file being replaced or removed.
    """
    root = Path(address)
    return {"truncate": FileRaw(root, truncate=True), "open_fd": FileRawOpen(root)}


class FileStagingArea(StagingServer):
    """Owns a fresh staging directory for the run and removes it, with everything in it, on stop."""

    def __init__(self, backend: str, parent: Path, capacity_bytes: int | None = None) -> None:
        self.backend = backend
        self.parent = parent
        self.capacity_bytes = capacity_bytes
        self.path: Path | None = None

    @property
    def address(self) -> str:
        if self.path is None:
            raise RuntimeError("staging directory not created yet: call start()")
        return str(self.path)

    def start(self) -> None:
        if not self.parent.is_dir():
            raise BackendUnavailableError(f"Backend {self.backend!r}: directory {self.parent} does not exist; "
                                          "set staging.node_local_path / shared_path in the machine profile "
                                          "or pass --simai-staging-path")
        _remove_orphans(self.parent, self.backend)
        prefix = f"simai-{self.backend}.{socket.gethostname()}.{os.getpid()}."
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.parent))

    def stop(self) -> None:
        path, self.path = self.path, None
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

    def detail(self) -> dict[str, Any]:
        parent = self.parent.resolve()
        return {"path": str(parent), "filesystem": _fs_type(parent), "capacity_bytes": self.capacity_bytes}


def _remove_orphans(parent: Path, backend: str) -> None:
    """Remove staging directories that killed runs of this user left on this host.

    A directory is named ``simai-<backend>.<host>.<pid>.<random>``. A process id means something
    only on its own host: on a shared file system another node's live run must keep its
    directory, so only this host's directories whose process is gone, and that are ours, go.
    """
    pattern = re.compile(rf"simai-{re.escape(backend)}\.(?P<host>.+)\.(?P<pid>\d+)\.[^.]+")
    host, uid = socket.gethostname(), os.getuid()
    for stale in parent.glob(f"simai-{backend}.*"):
        match = pattern.fullmatch(stale.name)
        if match is None or match["host"] != host or Path(f"/proc/{match['pid']}").exists():
            continue
        info = stale.lstat()
        if stat.S_ISDIR(info.st_mode) and info.st_uid == uid:  # never a link, never another user's
            shutil.rmtree(stale, ignore_errors=True)


def _fs_type(path: Path) -> str:
    """The file-system type of the mount holding ``path`` (from /proc/mounts)."""
    best, fstype = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, kind, *_ = line.split()
            if str(path).startswith(mount) and len(mount) > len(best):
                best, fstype = mount, kind
    except OSError:
        pass
    return fstype


class _Directory:
    """An open descriptor of a directory: names are resolved relative to it (openat), not walked from /."""

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise FileNotFoundError(f"Staging directory {root} does not exist (was the server started?)") from None
        self._finalizer = weakref.finalize(self, os.close, self.fd)
        # tmpfs replaces by rename as cheaply as by exchange, and saves the unlink.
        self.exchange = _renameat2 is not None and _fs_type(root.resolve()) != "tmpfs"

    def close(self) -> None:
        """Close the descriptor; later calls fail with EBADF instead of reaching another file."""
        self.fd = -1
        self._finalizer()

    def check_present(self) -> None:
        """Raise if the directory was removed while open (a removed directory has no links left)."""
        if os.fstat(self.fd).st_nlink == 0:
            raise FileNotFoundError(f"The staging directory {self.root} was removed while the run used it")

    def replace(self, tmp: str, name: str) -> None:
        """Put the file ``tmp`` under ``name`` in one step, and remove the file that was there."""
        if self.exchange:
            assert _renameat2 is not None
            if _renameat2(self.fd, tmp.encode(), self.fd, name.encode(), _RENAME_EXCHANGE) == 0:
                os.unlink(tmp, dir_fd=self.fd)  # the old value, now under the temp name
                return
            if ctypes.get_errno() != errno.ENOENT:  # ENOENT: no old value. Else no exchange here (NFS,
                self.exchange = False                # Lustre: EINVAL): rename, which says what is wrong if anything
        os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def place_new(self, tmp: str, name: str) -> bool:
        """Put the file ``tmp`` under ``name`` unless a file has that name already (then False, ``tmp`` stays)."""
        if _renameat2 is not None:
            if _renameat2(self.fd, tmp.encode(), self.fd, name.encode(), _RENAME_NOREPLACE) == 0:
                return True
            code = ctypes.get_errno()
            if code == errno.EEXIST:
                return False
            if code not in (errno.EINVAL, errno.ENOSYS):
                raise OSError(code, os.strerror(code), name)
        try:  # no renameat2 flags here: a hard link is never made over an existing name either
            os.link(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except FileExistsError:
            return False
        os.unlink(tmp, dir_fd=self.fd)
        return True


def _load_renameat2() -> Any:
    """The C library's renameat2 (glibc 2.28 and later), or None."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2  # linux/fs.h


class FileClient(StagingClient):
    """Reads and writes files in one staging directory.

    ``in_place`` (default: for ``nodelocal``) writes tensors in place into two slots per key
    (:class:`_Slots`); otherwise each put writes a fresh ``.npy`` file and renames it into place.
    In place, each thread keeps the slots files it used open (:class:`_Kept`; at most
    :data:`_KEEP_OPEN` each for gets and puts) until :meth:`close`.
    """

    def __init__(self, backend: str, root: Path, in_place: bool | None = None) -> None:
        self.backend = backend
        self.root = root
        self._dir = _Directory(root)
        self._last_header: tuple[Any, Any, bytes] = (None, None, b"")
        self.in_place = backend == "nodelocal" if in_place is None else in_place
        self._local = threading.local()  # each thread keeps its own slots files open: no fd is shared
        self._kept = _ClientFiles()
        self._finalizer = weakref.finalize(self, self._kept.close_all)

    def close(self) -> None:
        self._finalizer()
        self._dir.close()

    def check_store(self, within_s: float = 0.0) -> None:
        deadline = time.monotonic() + within_s
        while True:
            self._dir.check_present()
            if time.monotonic() >= deadline:
                return
            time.sleep(0.01)

    def put_tensor(self, key: str, array: ArrayLike) -> None:
        arr = as_numpy(array)
        if arr.dtype.hasobject:
            raise TypeError(f"Cannot stage a {arr.dtype} array: object arrays have no byte representation")
        header = self._header(arr.dtype, arr.shape)
        if self.in_place:
            self._put_slots(key, header, arr)
        else:
            self._write_atomic(key, _NPY[key], (header, arr), len(header) + arr.nbytes)

    def get_tensor(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """Fetch the array under ``key``; with ``out``, header and data come in one read.

        If ``out`` does not match the stored dtype and shape, ValueError is raised and ``out`` may
        have been written. In place, a ``.npy`` file (one numpy wrote) is read when no slots file exists.
        """
        if self.in_place:
            got = self._get_slots(key, out)
            if got is not None:
                return got
            # no slots file: perhaps a .npy file
        try:
            fd = os.open(_NPY[key], _READ, dir_fd=self._dir.fd)
        except FileNotFoundError:
            self._dir.check_present()  # a missing key, not a missing store
            return None
        try:
            if out is not None and self._read_expected(fd, key, out):
                return out
            return _read_npy(fd, key, out)
        finally:
            os.close(fd)

    def _get_slots(self, key: str, out: np.ndarray | None) -> np.ndarray | None:
        """The value of the key's slots file, through the descriptor this thread keeps; None if there is no such file."""
        expected = None if out is None else self._header(out.dtype, out.shape)
        kept_files = getattr(self._local, "readers", None) or self._thread_files("readers")
        kept = kept_files.get(key)
        if kept is not None:
            got = kept.read(out, expected, fresh=False)
            if got is not None:
                return got
            kept_files.drop(key)  # retired or removed: the key's name says which file is current now
        try:
            fd = os.open(_SLOTS[key], _READ, dir_fd=self._dir.fd)
        except FileNotFoundError:
            return None
        return kept_files.add(key, fd).read(out, expected, fresh=True)

    def _thread_files(self, role: str) -> _KeptFiles:
        """This thread's kept files for gets (``readers``) or puts (``writers``)."""
        kept_files = getattr(self._local, role, None)
        if kept_files is None:
            kept_files = self._kept.child()
            setattr(self._local, role, kept_files)
        return cast(_KeptFiles, kept_files)

    def put_bytes(self, key: str, data: bytes | memoryview) -> None:
        self._write_atomic(key, _BIN[key], (data,), memoryview(data).nbytes)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            fd = os.open(_BIN[key], _READ, dir_fd=self._dir.fd)
        except FileNotFoundError:
            self._dir.check_present()
            return None
        try:
            return _read_to_end(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)

    def exists(self, key: str) -> bool:
        found = ((self.in_place and self._exists(_SLOTS[key])) or self._exists(_NPY[key])
                 or self._exists(_BIN[key]))
        if not found:
            self._dir.check_present()
        return found

    def _exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self._dir.fd)
        except FileNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        self._thread_files("readers").drop(key)
        self._thread_files("writers").drop(key)
        self._unlink_slots(_SLOTS[key])
        for name in (_NPY[key], _BIN[key]):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=self._dir.fd)

    def clean(self, prefix: str) -> int:
        start = quote(prefix, safe="")
        removed = 0
        self._thread_files("readers").drop_all()
        self._thread_files("writers").drop_all()
        for entry in os.scandir(self.root):
            if entry.name.startswith(start) and entry.name.endswith(_SUFFIXES):
                if entry.name.endswith(".slots"):
                    self._unlink_slots(entry.name)
                else:
                    Path(entry.path).unlink(missing_ok=True)
                removed += 1
        return removed

    def _unlink_slots(self, name: str) -> None:
        """Retire the slots file ``name`` (readers that keep it open then look again by name), then unlink it."""
        deadline = time.monotonic() + _LOCK_DEADLINE_S
        while True:
            try:
                fd = os.open(name, os.O_RDWR | os.O_CLOEXEC, dir_fd=self._dir.fd)
            except FileNotFoundError:
                return
            try:
                slots = _Slots(fd, name)
                slots.lock()
                if slots.current(self._dir.fd, name):
                    slots.retire()
                    os.unlink(name, dir_fd=self._dir.fd)
                    return
            finally:
                os.close(fd)
            _check_deadline(deadline, name)

    def _header(self, dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes:
        """The .npy header of ``dtype`` and ``shape``; the last one is kept at hand (a dict lookup costs more)."""
        last = self._last_header
        if last[0] is dtype and last[1] == shape:
            return last[2]
        header = _npy_header(dtype, shape)
        self._last_header = (dtype, shape, header)
        return header

    def _read_expected(self, fd: int, key: str, out: np.ndarray) -> bool:
        """One preadv of the header that ``out`` implies and of the data into ``out``; False if the file's differs."""
        expected = self._header(out.dtype, out.shape)
        header = bytearray(len(expected))
        buffers: list[Any] = [header, out]
        try:
            n = os.preadv(fd, buffers, 0)
        except (ValueError, BufferError):  # `out` is not C-contiguous or not writable: _read_npy says which
            return False
        if header != expected:
            return False
        if n < len(expected) + out.nbytes:  # over 2 GiB (one read's limit) or a cut file
            _preadv_all(fd, key, _bytes_view(out)[n - len(expected):], n)
        return True

    def _put_slots(self, key: str, header: bytes, arr: np.ndarray) -> None:
        """Write ``arr`` in place into the key's free slot; a new slots file only for the first put or a new size."""
        need = _SLOT_HEAD + len(header) + arr.nbytes
        name, deadline = _SLOTS[key], time.monotonic() + _LOCK_DEADLINE_S
        writers = self._thread_files("writers")
        while True:
            kept = writers.get(key)
            if kept is None or kept.removed():
                writers.drop(key)
                try:
                    fd = os.open(name, os.O_RDWR | os.O_CLOEXEC, dir_fd=self._dir.fd)
                except FileNotFoundError:
                    if self._new_slots(key, header, arr, need, None):
                        return
                    _check_deadline(deadline, key)
                    continue  # another put made the file first: write into it
                kept = writers.add(key, fd)
            written = self._put_into(kept.fd, key, name, header, arr, need)
            if written is not None:
                if not written:  # it replaced the file: the one kept is retired
                    writers.drop(key)
                return
            writers.drop(key)  # replaced or deleted meanwhile: look again by name
            _check_deadline(deadline, key)

    def _put_into(self, fd: int, key: str, name: str, header: bytes, arr: np.ndarray, need: int) -> bool | None:
        """Under the key's lock, write ``arr`` into the free slot of ``fd`` (True), or swap in a new file (False).

        None if ``fd`` is no longer the key's file.
        """
        slots = _Slots(fd, key)
        slots.lock()
        try:
            gray, capacity, retired = slots.control()
            if retired and not slots.current(self._dir.fd, name):
                return None
            if retired or not _fits(need, capacity):  # a bigger value, or one far smaller (or a put that died
                self._new_slots(key, header, arr, need, fd)  # replacing): a new file, swapped in
                return False
            try:
                slots.write(gray, capacity, header, arr, need)
            except OSError as exc:
                if _is_full(exc):
                    raise self._full(key) from None
                raise
            return True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _new_slots(self, key: str, header: bytes, arr: np.ndarray, need: int, old: int | None) -> bool:
        """A slots file sized for ``need`` holding ``arr`` as generation 2, put under the key's name.

        ``old``: the key's slots file, locked; it is retired just before the new one replaces it.
        Without ``old`` the new file is placed only if the name is free (else False): a file
        replaced without being retired would keep serving readers that hold it open.
        """
        capacity = -(-need // _PAGE) * _PAGE
        control = _CONTROL.pack(_SLOTS_MAGIC, _gray(2), capacity, _LIVE).ljust(_PAGE, b"\0")
        return self._write_atomic(key, _SLOTS[key], (control, _seq_block(2), header, arr),
                                  _PAGE + _SLOT_HEAD + len(header) + arr.nbytes, new_slots=True, retire=old)

    def _full(self, key: str) -> StagingFullError:
        return StagingFullError(f"No space left in {self.root} for {key!r}: free space or choose "
                                "another staging path (--simai-staging-path)")

    def _write_atomic(self, key: str, name: str, parts: tuple[Any, ...], nbytes: int,
                      new_slots: bool = False, retire: int | None = None) -> bool:
        """Write ``parts`` to a fresh temp file and put it under ``name``: readers see the old value or the new.

        ``new_slots``: a slots file, which replaces only the file ``retire`` (retired first), or no file (else False).
        """
        tmp, dir_fd = _temp_name(), self._dir.fd
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            try:
                _writev_all(fd, parts, nbytes)
            finally:
                os.close(fd)
            if new_slots and retire is None:
                placed = self._dir.place_new(tmp, name)
                if not placed:
                    os.unlink(tmp, dir_fd=dir_fd)
                return placed
            if retire is not None:
                _Slots(retire, key).retire()
            self._dir.replace(tmp, name)
            return True
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            if _is_full(exc):
                raise self._full(key) from None
            if exc.errno == errno.ENOENT:
                self._dir.check_present()
            raise


def _is_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


# The slots file: a control page, then two slots of ``capacity`` bytes each (a multiple of the page).
#   control: magic, published generation g (Gray-coded), capacity, retired mark (set, under the
#   writer lock, before the file is replaced or unlinked; readers that keep it open then look again)
#   slot g % 2 at _PAGE + (g % 2) * capacity: sequence block (g, Gray-coded, in its first 8 bytes),
#   .npy header, data.
# Generations are Gray-coded so that the two values a concurrent read of a word can mix differ in
# one byte: a read that overlaps the store gets the old value or the new one, never a third.
_PAGE = 4096
_SLOT_HEAD = 64  # the sequence block; keeps the header, and so the data, 64-byte aligned
_SLOTS_MAGIC = b"SIMAISL2"
_CONTROL = struct.Struct("<8s8sQ8s")  # magic, published generation (Gray), slot capacity, retired mark
_LIVE, _RETIRED = bytes(8), b"\xff" * 8
_READ_DEADLINE_S = 10.0  # a get that puts keep overwriting gives up after this
_LOCK_DEADLINE_S = 10.0  # a put waits this long for another put of the key
_KEEP_OPEN = 16  # slots files a client keeps open per thread (the least recently read one goes first)
_IDLE_CLOSE_S = 1.0  # a kept file unread this long is closed when the thread opens another
_RECHECK_S = 0.01  # how often a kept file is checked for removal behind the backend's back (rm, rmtree)


def _check_deadline(deadline: float, key: str) -> None:
    if time.monotonic() > deadline:
        raise StagingTimeoutError(f"{key!r}: the key's file kept being replaced for {_LOCK_DEADLINE_S:g} s")


def _gray(generation: int) -> bytes:
    return (generation ^ (generation >> 1)).to_bytes(8, "little")


def _generation(gray: bytes) -> int:
    """Inverse of :func:`_gray`."""
    value = int.from_bytes(gray, "little")
    shift = 1
    while value >> shift:
        value ^= value >> shift
        shift <<= 1
    return value


def _fits(need: int, capacity: int) -> bool:
    """Whether a value of ``need`` bytes (sequence block included) stays in slots of ``capacity``."""
    return need <= capacity and (need * 4 > capacity or capacity <= 64 * 1024)


def _seq_block(generation: int) -> bytes:
    return _gray(generation).ljust(_SLOT_HEAD, b"\0")


class _Slots:
    """The in-place protocol on one open slots file: a seqlock over two slots (the writer's side).

    A put (under an exclusive ``flock``, so puts of one key take turns) reads the published
    generation g, writes generation g+1 into the other slot with one ``pwritev`` of sequence
    block, header and data, in that order, and then publishes g+1 with one ``pwrite``. The slot
    of the published value is never written, so a put that dies part-way leaves the last value
    whole; the lock goes with its process. Reads: :class:`_Kept`.
    """

    __slots__ = ("fd", "key")

    def __init__(self, fd: int, key: str) -> None:
        self.fd, self.key = fd, key

    def lock(self) -> None:
        """Take the key's writer lock; StagingTimeoutError if another put holds it past the deadline."""
        deadline = 0.0
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                deadline = deadline or time.monotonic() + _LOCK_DEADLINE_S
                if time.monotonic() > deadline:
                    raise StagingTimeoutError(f"{self.key!r}: another put held the key for "
                                              f"{_LOCK_DEADLINE_S:g} s") from None
                time.sleep(1e-4)

    def control(self) -> tuple[bytes, int, bool]:
        """The published generation (Gray-coded), the slot capacity, and whether the file is retired."""
        control = os.pread(self.fd, _CONTROL.size, 0)
        if control[:8] != _SLOTS_MAGIC:
            raise ValueError(f"{self.key!r}: not a slots file")
        return control[8:16], int.from_bytes(control[16:24], "little"), control[24:] != _LIVE

    def current(self, dir_fd: int, name: str) -> bool:
        """Whether this (locked) file is still the one under ``name``: not retired, or retired by a put that died."""
        if os.pread(self.fd, 8, 24) == _LIVE:
            return True
        try:
            return os.stat(name, dir_fd=dir_fd).st_ino == os.fstat(self.fd).st_ino
        except FileNotFoundError:
            return False

    def retire(self) -> None:
        """Mark the file as about to leave its name (under :meth:`lock`)."""
        os.pwrite(self.fd, _RETIRED, 24)

    def write(self, gray: bytes, capacity: int, header: bytes, arr: np.ndarray, need: int) -> None:
        """Write the generation after ``gray`` into the free slot, then publish it (under :meth:`lock`)."""
        generation = _generation(gray) + 1
        offset = _PAGE + (generation & 1) * capacity
        parts: tuple[Any, ...] = (_seq_block(generation), header, arr)
        written = os.pwritev(self.fd, parts, offset)
        if written != need:
            _write_rest(self.fd, parts, written, offset)
        os.pwrite(self.fd, _gray(generation), 8)


class _Kept:
    """A slots file a thread keeps open to read one key, and the generation its last get found there.

    A get reads the published generation g (one ``pread`` of the control block), slot g % 2's
    sequence block, header and data (one ``preadv``), then the control block again: unless it
    still says g, a put into that slot may have started, and the get starts over with what it
    just read. A get that finds the generation the last get found (the value did not change)
    guesses it the next time: it reads the slot first, then the control block once, so a value
    read again costs one ``preadv`` and one ``pread``. That is safe because g was published
    (its slot whole) before the last get's read, and a control block still saying g afterwards
    means no put of g+2 (the next into that slot) began in between.

    A file whose control block is marked retired (a put replaced it, or a delete removed it) is
    no longer the key's: :meth:`read` returns None and the caller opens the key's name again.
    Removal behind the backend's back (``rm``, ``rmtree``) is seen by ``fstat`` within
    :data:`_RECHECK_S`.
    """

    __slots__ = ("checked", "expected", "fd", "gray", "head", "key", "offset", "seen", "stable", "total", "used",
                 "want")

    def __init__(self, fd: int, key: str, now: float) -> None:
        self.fd, self.key = fd, key
        self.gray, self.offset, self.seen, self.stable = b"", 0, b"", False  # seen: the control block, if live
        self.used = self.checked = now
        # The guess: slot head (sequence block and header) of the last value read into an `out` of header
        # `expected`, a buffer for the next one, and the bytes that preadv brings.
        self.expected: bytes | None = None
        self.want, self.head, self.total = b"", bytearray(), 0

    def removed(self) -> bool:
        """Whether the file lost its last name behind the backend's back (checked every :data:`_RECHECK_S`)."""
        now = self.used = time.monotonic()
        if now - self.checked > _RECHECK_S:
            if os.fstat(self.fd).st_nlink == 0:
                return True
            self.checked = now
        return False

    def control(self, control: bytes) -> tuple[bytes, int, bool]:
        """The published generation (Gray-coded), its slot's offset, and whether the file is retired."""
        if not control.startswith(_SLOTS_MAGIC):
            raise ValueError(f"{self.key!r}: not a slots file")
        gray = control[8:16]
        parity = int.from_bytes(gray, "little").bit_count() & 1
        return gray, _PAGE + parity * int.from_bytes(control[16:24], "little"), control[24:] != _LIVE

    def read(self, out: np.ndarray | None, expected: bytes | None, fresh: bool) -> np.ndarray | None:
        """The published value, into ``out`` if given (``expected``: the header ``out`` implies).

        None if the file is no longer the key's. ``fresh``: the file was opened by name for this
        get, so it is read even if retired (it was the key's when opened).
        """
        fd = self.fd
        if not fresh and self.removed():
            return None
        into = out is not None and expected is not None
        if self.stable and into and expected is self.expected:  # guess: the value read last, into the same kind of out
            buffers: list[Any] = [self.head, out]
            try:
                n = os.preadv(fd, buffers, self.offset)
            except (ValueError, BufferError):  # `out` not C-contiguous or not writable: parsed below
                n = -1
            control = os.pread(fd, _CONTROL.size, 0)
            if control == self.seen and n == self.total and self.head == self.want:
                return out  # the same generation, published before the read and after: whole
        else:
            control = os.pread(fd, _CONTROL.size, 0)
        gray, offset, retired = self.control(control)
        self.stable = gray == self.gray
        deadline = 0.0
        while True:
            if retired and not fresh:
                return None
            self.gray, self.offset, self.seen = gray, offset, b"" if retired else control
            if into and self._into(out, expected, gray, offset):
                control = os.pread(fd, _CONTROL.size, 0)
                if control[8:16] == self.gray:
                    return out
            else:
                got = self._read_parsed(gray, offset, out)
                if got is not None:
                    return got
                control = os.pread(fd, _CONTROL.size, 0)
            gray, offset, retired = self.control(control)
            deadline = deadline or time.monotonic() + _READ_DEADLINE_S
            if time.monotonic() > deadline:
                raise StagingTimeoutError(f"{self.key!r}: puts overwrote the value throughout {_READ_DEADLINE_S:g} s of reads")

    def _into(self, out: Any, expected: Any, gray: bytes, offset: int) -> bool:
        """One ``preadv`` of the slot at ``offset`` into ``out``: whether it came whole, of ``gray`` and ``expected``.

        Whether a put overlapped the read is the caller's check.
        """
        head = bytearray(_SLOT_HEAD + len(expected))
        try:
            n = os.preadv(self.fd, [head, out], offset)
        except (ValueError, BufferError):  # `out` not C-contiguous or not writable: parsed instead
            return False
        if n != len(head) + out.nbytes or not head.startswith(gray) or not head.endswith(expected):
            return False
        self.expected, self.want, self.head, self.total = expected, bytes(head), head, n  # the next guess
        return True

    def _read_parsed(self, gray: bytes, offset: int, out: np.ndarray | None) -> np.ndarray | None:
        """Parse the slot's header, read its data into ``out`` (checked) or a new array; None if a put came in between."""
        try:
            start = os.pread(self.fd, _SLOT_HEAD + _HEADER_GUESS, offset)
            if start[:8] != gray:
                return None
            got = _read_npy_at(self.fd, self.key, out, start[_SLOT_HEAD:], offset + _SLOT_HEAD)
        except (ValueError, OSError):
            if os.pread(self.fd, 8, offset) == gray:
                raise  # the slot held our generation throughout: the error is real
            return None
        return got if os.pread(self.fd, 8, offset) == gray else None


class _KeptFiles(dict[str, _Kept]):
    """One thread's kept slots files for gets or for puts, by key (at most :data:`_KEEP_OPEN`)."""

    def add(self, key: str, fd: int) -> _Kept:
        """Keep ``fd`` for ``key``; files unused for :data:`_IDLE_CLOSE_S`, and the oldest past the limit, close."""
        now = time.monotonic()
        for old in [k for k, kept in self.items() if now - kept.used > _IDLE_CLOSE_S]:
            self.drop(old)
        if len(self) >= _KEEP_OPEN:
            self.drop(min(self, key=lambda k: self[k].used))
        kept = self[key] = _Kept(fd, key, now)
        return kept

    def drop(self, key: str) -> None:
        kept = self.pop(key, None)
        if kept is not None:
            os.close(kept.fd)

    def drop_all(self) -> None:
        while self:
            self.drop(next(iter(self)))


class _ClientFiles:
    """Every thread's kept files of one client: :meth:`child` makes one set per thread and role."""

    def __init__(self) -> None:
        self._children: list[_KeptFiles] = []
        self._lock = threading.Lock()
        _ALL_CLIENT_FILES.add(self)

    def child(self) -> _KeptFiles:
        kept_files = _KeptFiles()
        with self._lock:
            self._children.append(kept_files)
        return kept_files

    def close_all(self) -> None:
        with self._lock:
            for kept_files in self._children:
                kept_files.drop_all()
            self._children.clear()

    def after_fork(self) -> None:
        """In a forked child: close the copies of the parent's descriptors.

        A copy shares the parent's open file, and so its ``flock``: a child's put would not wait for the parent's.
        """
        self._lock = threading.Lock()  # another thread may have held it at the fork
        for kept_files in self._children:
            kept_files.drop_all()


def _after_fork() -> None:
    for client_files in list(_ALL_CLIENT_FILES):
        client_files.after_fork()


_ALL_CLIENT_FILES: weakref.WeakSet[_ClientFiles] = weakref.WeakSet()
os.register_at_fork(after_in_child=_after_fork)


def _write_rest(fd: int, parts: tuple[Any, ...], written: int, offset: int | None = None) -> None:
    """Finish a ``writev`` (``offset`` None) or a ``pwritev`` at ``offset`` that the kernel cut short (over 2 GiB)."""
    views = [_bytes_view(p) for p in parts]
    position = None if offset is None else offset + written
    while True:
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if not views:
            return
        views[0] = views[0][written:]
        written = os.writev(fd, views) if position is None else os.pwritev(fd, views, position)
        if not written:
            raise OSError(errno.EIO, "write made no progress")
        if position is not None:
            position += written


class FileRaw(RawReference):
    """The plain path, no staging layer and no atomicity (a reader can see half a value).

    put overwrites the key's file in place: openat without O_TRUNC, one write, fstat (ftruncate only
    if the old file was longer), close. get: openat, one readv into ``out``, close.
    """

    description = "in-place os.write / os.readv of the raw buffer in the same directory (no header, temp file or rename)"

    def __init__(self, root: Path, truncate: bool = False) -> None:
        self._dir = _Directory(root)
        self._truncate = truncate
        if truncate:
            self.description = "O_TRUNC os.write / os.readv of the raw buffer in the same directory (fresh pages each put)"

    def close(self) -> None:
        self._dir.close()

    def put(self, key: str, data: memoryview) -> None:
        # In place, not O_TRUNC: truncating frees the pages (blocks) the write then allocates again,
        # twice the time on tmpfs, and on ext4 the close of a truncated file flushes it (milliseconds).
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if self._truncate else 0)
        fd = os.open(_RAW[key], flags, 0o600, dir_fd=self._dir.fd)
        try:
            _writev_all(fd, (data,), data.nbytes)
            if not self._truncate and os.fstat(fd).st_size > data.nbytes:
                os.ftruncate(fd, data.nbytes)
        finally:
            os.close(fd)

    def get(self, key: str, out: memoryview) -> None:
        fd = os.open(_RAW[key], _READ, dir_fd=self._dir.fd)
        try:
            n = os.readv(fd, [out])
            if n < len(out):
                _preadv_all(fd, key, out[n:], n)
        finally:
            os.close(fd)


class FileRawOpen(RawReference):
    """The plain path on a descriptor kept open per key.

    One ``pwritev`` (put) or ``preadv`` (get) at offset 0: no lookup, no atomicity, and blind to the
    file being replaced or removed.
    """

    description = "os.pwritev / os.preadv of the raw buffer on the key's file kept open (no openat or close per call)"

    def __init__(self, root: Path) -> None:
        self._dir = _Directory(root)
        self._fds: dict[str, int] = {}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._dir.close()

    def _fd(self, key: str) -> int:
        if (fd := self._fds.get(key)) is None:
            fd = self._fds[key] = os.open(_RAW[key], os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=self._dir.fd)
        return fd

    def put(self, key: str, data: memoryview) -> None:
        fd = self._fd(key)
        if os.pwritev(fd, [data], 0) != data.nbytes:
            raise OSError(f"{key!r}: short write")

    def get(self, key: str, out: memoryview) -> None:
        _preadv_all(self._fd(key), key, out, 0)


class _Names(dict[str, str]):
    """File name per key, cached (quote() costs more than the system calls of a small get); bounded."""

    def __init__(self, prefix: str, suffix: str) -> None:
        super().__init__()
        self.prefix, self.suffix = prefix, suffix

    def __missing__(self, key: str) -> str:
        if len(self) >= 4096:
            self.clear()
        name = self[key] = f"{self.prefix}{quote(key, safe='')}{self.suffix}"
        return name


_NPY, _BIN, _RAW, _SLOTS = _Names("", ".npy"), _Names("", ".bin"), _Names("raw.", ""), _Names("", ".slots")
_READ = os.O_RDONLY | os.O_CLOEXEC


# Temp names unique across hosts (shared file systems), processes and calls; renewed in a forked child.
_temp_prefix = ""
_temp_count = itertools.count()


def _renew_temp_prefix() -> None:
    global _temp_prefix
    _temp_prefix = f".{socket.gethostname()}.{os.getpid()}."


def _temp_name() -> str:
    return f"{_temp_prefix}{next(_temp_count)}.tmp"


_renew_temp_prefix()
os.register_at_fork(after_in_child=_renew_temp_prefix)


@lru_cache(maxsize=256)
def _npy_header(dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes:
    """The .npy header (format 1.0, or 2.0 when it does not fit) of a C-contiguous array, as numpy.save writes it."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, header)
    except ValueError:  # header over 64 KiB: format 2.0 has a 4-byte length
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


@lru_cache(maxsize=256)
def _parse_npy_header(header: bytes) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """(shape, dtype, data offset) of a .npy file that starts with ``header``."""
    f = io.BytesIO(header)
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f".npy format {version} is not read by this backend")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(f)
    if fortran_order and len(shape) > 1:
        raise ValueError("Fortran-ordered .npy files are not staged by this backend")
    return shape, dtype, f.tell()


def _read_npy(fd: int, key: str, out: np.ndarray | None) -> np.ndarray:
    """Read a .npy file whose header is not known in advance (no ``out``, or one that may not match)."""
    return _read_npy_at(fd, key, out, os.pread(fd, _HEADER_GUESS, 0), 0)


def _read_npy_at(fd: int, key: str, out: np.ndarray | None, start: bytes, base: int) -> np.ndarray:
    """Read the .npy value at ``base`` in the file, given its first bytes ``start``."""
    if not start.startswith(_NPY_MAGIC) or len(start) < 10:
        raise ValueError(f"{key!r}: not a .npy file")
    size = 10 + int.from_bytes(start[8:10], "little") if start[6] == 1 else 12 + int.from_bytes(start[8:12], "little")
    if len(start) < size:
        start += os.pread(fd, size - len(start), base + len(start))
    shape, dtype, offset = _parse_npy_header(bytes(start[:size]))
    if out is None:
        out = np.empty(shape, dtype)
    else:
        check_out(key, out, dtype, shape)
    _preadv_all(fd, key, out, base + offset)
    return out


def _preadv_all(fd: int, key: str, buffer: Any, offset: int) -> None:
    """Fill ``buffer`` from ``offset`` on, however many reads that takes."""
    view = _bytes_view(buffer)
    while view:
        n = os.preadv(fd, [view], offset)
        if not n:
            raise OSError(f"{key!r}: file ended early (truncated write?)")
        view, offset = view[n:], offset + n


def _writev_all(fd: int, parts: tuple[Any, ...], nbytes: int) -> None:
    """One writev of every part (``nbytes`` in all); more only if the kernel takes less (over 2 GiB)."""
    written = os.writev(fd, parts)
    if written != nbytes:
        _write_rest(fd, parts, written)


def _bytes_view(buffer: Any) -> memoryview:
    """A flat byte view of a C-contiguous buffer (an ndarray of any dtype, datetime64 included)."""
    if isinstance(buffer, np.ndarray):
        return memoryview(cast(Any, buffer.reshape(-1).view(np.uint8)))
    return memoryview(buffer).cast("B")


def _read_to_end(fd: int, size: int) -> bytes:
    """The whole file (``size`` bytes by fstat); the rare short read is followed up."""
    data = os.read(fd, size)
    while len(data) < size and (more := os.read(fd, size - len(data))):
        data += more
    return data
