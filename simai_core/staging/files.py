"""File backends: one file per key in a directory, written atomically (temp file + rename).

``filesystem`` puts the directory on a file system every node shares; ``nodelocal`` on
node-local storage (``/dev/shm`` by default), where only ranks of one node meet.
Tensors are ``.npy`` files (readable with ``numpy.load``); blobs are raw ``.bin`` files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from simai_core.errors import BackendUnavailableError, StagingFullError
from simai_core.profiles import MachineProfile
from simai_core.staging.base import ArrayLike, RawReference, StagingClient, StagingServer, as_numpy, check_out

_SUFFIXES = (".npy", ".bin")


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
    """Plain write/readinto of the buffer in the same directory."""
    return FileRaw(Path(address))


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
        self.path = Path(tempfile.mkdtemp(prefix=f"simai-{self.backend}-{os.getpid()}-", dir=self.parent))

    def stop(self) -> None:
        path, self.path = self.path, None
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

    def detail(self) -> dict[str, Any]:
        parent = self.parent.resolve()
        return {"path": str(parent), "filesystem": _fs_type(parent), "capacity_bytes": self.capacity_bytes}


def _remove_orphans(parent: Path, backend: str) -> None:
    """Remove staging directories left by killed runs on this host (their creating process is gone)."""
    for stale in parent.glob(f"simai-{backend}-*-*"):
        pid = stale.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
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


class FileClient(StagingClient):
    """Reads and writes files in one staging directory."""

    def __init__(self, backend: str, root: Path) -> None:
        self.backend = backend
        self.root = root
        if not root.is_dir():
            raise FileNotFoundError(f"Staging directory {root} does not exist (was the server started?)")

    def _path(self, key: str, suffix: str) -> Path:
        return self.root / (quote(key, safe="") + suffix)

    def put_tensor(self, key: str, array: ArrayLike) -> None:
        arr = as_numpy(array)
        header = _npy_header(arr)
        self._write_atomic(key, ".npy", [header, arr.data.cast("B")])

    def get_tensor(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        try:
            f = open(self._path(key, ".npy"), "rb", buffering=0)  # noqa: SIM115  (closed by the with below)
        except FileNotFoundError:
            return None
        with f:
            version = np.lib.format.read_magic(f)
            shape, _, dtype = np.lib.format._read_array_header(f, version)  # type: ignore[attr-defined]
            if out is None:
                out = np.empty(shape, dtype)
            else:
                check_out(key, out, dtype, shape)
            _read_into(f, out.data.cast("B") if out.size else memoryview(b""), key)
        return out

    def put_bytes(self, key: str, data: bytes | memoryview) -> None:
        self._write_atomic(key, ".bin", [memoryview(data).cast("B")])

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key, ".bin").read_bytes()
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return any(self._path(key, s).exists() for s in _SUFFIXES)

    def delete(self, key: str) -> None:
        for suffix in _SUFFIXES:
            self._path(key, suffix).unlink(missing_ok=True)

    def clean(self, prefix: str) -> int:
        start = quote(prefix, safe="")
        removed = 0
        for entry in os.scandir(self.root):
            if entry.name.startswith(start) and entry.name.endswith(_SUFFIXES):
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
        return removed

    def _write_atomic(self, key: str, suffix: str, parts: list[bytes | memoryview]) -> None:
        final = self._path(key, suffix)
        tmp = self.root / f".{uuid.uuid4().hex}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                for part in parts:
                    _write_all(fd, part)
            finally:
                os.close(fd)
            os.replace(tmp, final)  # readers see the old value or the new one, never half of one
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno == 28:  # ENOSPC
                raise StagingFullError(f"No space left in {self.root} for {key!r}: free space or choose "
                                       "another staging path (--simai-staging-path)") from None
            raise


class FileRaw(RawReference):
    """os.write of the buffer to a file and readinto back, with no header, temp file or rename."""

    description = "os.write / readinto of the raw buffer in the same directory"

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, key: str, data: memoryview) -> None:
        fd = os.open(self.root / f"raw.{quote(key, safe='')}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)

    def get(self, key: str, out: memoryview) -> None:
        with open(self.root / f"raw.{quote(key, safe='')}", "rb", buffering=0) as f:
            _read_into(f, out, key)


def _npy_header(arr: np.ndarray) -> bytes:
    """The .npy (format 1.0/2.0) header for a C-contiguous array."""
    header = {"descr": np.lib.format.dtype_to_descr(arr.dtype), "fortran_order": False, "shape": arr.shape}
    import io

    buf = io.BytesIO()
    np.lib.format._write_array_header(buf, header, None)  # type: ignore[attr-defined] # picks the format version that fits
    return buf.getvalue()


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_into(f: Any, view: memoryview, key: str) -> None:
    while view:
        n = f.readinto(view)
        if not n:
            raise OSError(f"{key!r}: file ended early (truncated write?)")
        view = view[n:]
