"""What other users on a shared node must not touch: private directories, 0600 files, our own processes.

A run keeps state under the shared temp dir (per-rank temp dirs, Dragon's run records, the Redis
config with its password). Another local user can pre-create those paths, as directories of
their own, open ones or symlinks, to make the run write secrets where they can read them or act
on records they wrote. Everything here refuses such state with :class:`NotPrivateError` instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import NoReturn

from simai_core.errors import SimaiError

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class NotPrivateError(SimaiError, PermissionError):
    """A path the run needs private (owned by this user, no access for others) is not."""


class SharedMachineWarning(UserWarning):
    """Something on the node that the run refused to trust (and went on without)."""


def private_dir(path: Path) -> Path:
    """``path`` as a directory only this user can use: created 0700, or checked when it exists.

    The parent must exist. An existing directory of this user that others can read but not write
    (an older run's 0755) is narrowed to 0700, as pytest does with its own base temp. Raises
    :class:`NotPrivateError` when ``path`` is a symlink, not a directory, owned by another user,
    or writable by group or others.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    check_private_dir(path)
    return path


def check_private_dir(path: Path) -> None:
    """Raise :class:`NotPrivateError` unless ``path`` is a real directory of this user that no one else can write."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        _refuse(path, "a symlink" if os.path.islink(path) else "not a directory")
    try:
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid != os.geteuid():
            _refuse(path, f"owned by uid {st.st_uid}, not by you (uid {os.geteuid()})")
        if mode & 0o022:
            _refuse(path, f"writable by other users (mode {mode:04o}, needs 0700)")
        if mode & 0o077:
            os.fchmod(fd, mode & 0o700)
    finally:
        os.close(fd)


def _refuse(path: Path, problem: str) -> NoReturn:
    raise NotPrivateError(f"{path} must be a private directory of yours but is {problem}; another user on this "
                          f"node could plant or read files there. Remove it (or, if it is yours, chmod 700 it) "
                          f"and run again.")


def write_private(path: Path, data: str | bytes) -> None:
    """Create ``path`` with mode 0600 and write ``data``; never follows or reuses an existing file or link."""
    try:
        fd = os.open(path, _FILE_FLAGS, 0o600)
    except (FileExistsError, IsADirectoryError):
        raise NotPrivateError(f"{path} already exists (a file or link this run did not make): refusing to write "
                              f"private data there. Remove it and run again.") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def replace_private(path: Path, data: str | bytes) -> None:
    """Atomically replace ``path`` (in a private directory) by a new 0600 file holding ``data``."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover of ours: the directory is private
    write_private(tmp, data)
    os.replace(tmp, path)  # rename replaces a link at ``path`` itself, never its target


def is_own_file(path: Path) -> bool:
    """Whether ``path`` is a regular file of this user, not a link; :class:`FileNotFoundError` if it is gone."""
    st = path.lstat()
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()


def read_own_file(path: Path) -> bytes:
    """The bytes of regular file ``path`` owned by this user; :class:`NotPrivateError` for a link or another's file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotPrivateError(f"{path} is a symlink: refusing to read it") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise NotPrivateError(f"{path} is not a regular file of yours (uid {st.st_uid}): refusing to trust it")
        return f.read()


def process_identity(pid: int) -> tuple[int, int] | None:
    """``(start time in clock ticks since boot, uid)`` of a live, non-zombie process; None when it is gone.

    The start time (field 22 of ``/proc/<pid>/stat``) together with the PID names one process
    for the life of the node, so a PID that the kernel reused is told apart.
    """
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(b")") + 2:].split()  # field 3 onwards: the name in field 2 may hold spaces
    if fields[0] == b"Z":
        return None
    return int(fields[22 - 3]), uid


def is_own_process(pid: int, start_ticks: int) -> bool:
    """Whether ``pid`` is still the process that started at ``start_ticks`` and belongs to this user."""
    now = process_identity(pid)
    return now is not None and now == (start_ticks, os.geteuid())
