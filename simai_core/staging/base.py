"""The staging-area abstraction: a server with a lifecycle and a key-value client.

Every backend (redis, filesystem, nodelocal, smartsim, dragon, ...) implements
:class:`StagingServer` (start, address, stop) and :class:`StagingClient`
(tensors, bytes, exists, poll, delete, clean). Keys are named by the caller:
the simulation and the trainer agree on them.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any, Self

import numpy as np

from simai_core.errors import StagingTimeoutError

ArrayLike = Any  # numpy.ndarray or torch.Tensor (torch is imported only when used)


def as_numpy(array: ArrayLike) -> np.ndarray:
    """Return a C-contiguous numpy view of ``array`` (a torch tensor is moved to the CPU)."""
    if not isinstance(array, np.ndarray):
        array = array.detach().cpu().numpy()  # torch.Tensor: zero-copy on the CPU
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)  # keeps 0-d shapes


def check_out(key: str, out: np.ndarray, dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
    """Raise ValueError unless ``out`` can receive the value under ``key``: same dtype and shape, C-contiguous."""
    if out.dtype != dtype or out.shape != shape or not out.flags.c_contiguous:
        raise ValueError(f"{key!r} holds {dtype}{list(shape)}; `out` is {out.dtype}{list(out.shape)}"
                         f"{'' if out.flags.c_contiguous else ' (not C-contiguous)'}")


class StagingClient(ABC):
    """A connection to a staging area, one per process.

    ``get_*`` return ``None`` for a missing key; ``delete`` of a missing key is a no-op.
    """

    backend: str = ""

    @abstractmethod
    def put_tensor(self, key: str, array: ArrayLike) -> None:
        """Store an array (any dtype and shape) under ``key``, replacing any old value."""

    @abstractmethod
    def get_tensor(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """Fetch the array under ``key``; fill ``out`` in place when given (shape and dtype must match)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes | memoryview) -> None:
        """Store an opaque blob (a serialized checkpoint, say) under ``key``."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes | None:
        """Fetch the blob under ``key``."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` holds a value."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; quiet when it is missing."""

    @abstractmethod
    def clean(self, prefix: str) -> int:
        """Remove every key starting with ``prefix``; return how many were removed."""

    def close(self) -> None:  # noqa: B027  (optional hook: many clients hold nothing to release)
        """Release the connection; calling it twice is harmless."""

    def check_store(self, within_s: float = 0.0) -> None:  # noqa: B027  (optional hook: most stores cannot vanish)
        """Raise when the store itself is gone, not just a key, watching ``within_s`` for a removal under way.

        For a key that another component announced and that is missing: an ``rm -rf`` of a staging
        directory removes its files before the directory, so the key can vanish first.
        """

    def poll(self, key: str, timeout_s: float, interval_s: float = 1e-3, max_interval_s: float = 0.05) -> bool:
        """Wait until ``key`` exists, with exponential backoff; False when ``timeout_s`` passes first."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.exists(key):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(interval_s, remaining))
            interval_s = min(interval_s * 2, max_interval_s)

    def wait_for(self, key: str, timeout_s: float) -> None:
        """Like :meth:`poll` but raise :class:`StagingTimeoutError` on the deadline."""
        if not self.poll(key, timeout_s):
            raise StagingTimeoutError(f"Key {key!r} did not appear in the {self.backend} staging area within {timeout_s:g} s")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StagingServer(ABC):
    """The server side of a staging area: start it once, hand ``address`` to every client, stop it."""

    backend: str = ""

    @abstractmethod
    def start(self) -> None:
        """Bring the server up and return once it accepts clients (or raise)."""

    @abstractmethod
    def stop(self) -> None:
        """Shut the server down and free its resources; calling it twice is harmless."""

    @property
    @abstractmethod
    def address(self) -> str:
        """What a client needs to connect, as a string that can be broadcast to other ranks."""

    def detail(self) -> dict[str, Any]:
        """Facts for ``simai.backend_detail`` in the JSON (versions, memory, paths)."""
        return {}

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()  # a half-started server (a process, a directory) is torn down too
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class RawReference(ABC):
    """The plain path a backend is measured against: the same server or directory, no staging layer.

    ``*_vs_raw`` FOMs divide a backend's throughput by this path's, measured in the same run
    on the same bytes.
    """

    description: str = ""

    @abstractmethod
    def put(self, key: str, data: memoryview) -> None:
        """Store the raw bytes."""

    @abstractmethod
    def get(self, key: str, out: memoryview) -> None:
        """Fetch the raw bytes (into ``out`` where the path can read in place)."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release connections or files."""
