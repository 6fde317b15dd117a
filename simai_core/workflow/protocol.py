"""What the simulation and the trainer say to each other through the staging area.

Keys (all under ``simai/<run_id>/`` so that runs sharing a server never collide):

=====================  ==========  =====================================================
key                    writer      content
=====================  ==========  =====================================================
``meta/size``          sim heads   int64 ``[n_points, n_in, n_out, dim, sim_size, interval]``
``graph/<s>/pos``      sim rank s  coordinates ``(n, dim)`` (GNN only)
``graph/<s>/edges``    sim rank s  int64 edge index ``(2, E)`` (GNN only)
``data/<s>/<step>``    sim rank s  snapshot ``(n, 2 n_in)`` at a sync step (staged data path)
``stream/<s>/steps``   sim rank s  int64 ``[steps written]`` to its stream (streamed data path)
``sim/status``         sim heads   int64 ``[last_complete_step, stop_code, heartbeat]``
``train/status``       trainer hd  int64 ``[checkpoint_version, epoch, done, heartbeat]``
``train/model``        trainer hd  TorchScript checkpoint (bytes)
``error/<component>``  any rank    UTF-8 message of a failure
=====================  ==========  =====================================================

One status key per direction means one read per poll. Heartbeats are counters, not
timestamps, so no clocks need to agree: a reader notes when the counter last changed
on its own monotonic clock.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from simai_core.errors import SimaiError
from simai_core.staging.base import StagingClient
from simai_core.workflow.timers import Accounting

STOP_CODES = {0: "running", 1: "tolerance", 2: "max_steps", 3: "error", 4: "skill"}
#: Stop reasons that mean the surrogate met the configured criterion.
CONVERGED = ("skill", "tolerance")
STOP_REASONS = {v: k for k, v in STOP_CODES.items()}


class WorkflowError(SimaiError):
    """A workflow component failed.

    ``agreed`` is true when every rank of the component raised it together
    (:func:`~simai_core.workflow.collective.agree`), so that none is left waiting for another.
    """

    agreed = False


class PeerFailedError(WorkflowError):
    """The other component reported a failure."""


class PeerTimeoutError(WorkflowError, TimeoutError):
    """The other component stopped giving signs of life before its deadline."""


class Keys:
    """Staging key names of one workflow run."""

    def __init__(self, run_id: str) -> None:
        self.prefix = f"simai/{run_id}/"
        self.size = self.prefix + "meta/size"
        self.sim_status = self.prefix + "sim/status"
        self.train_status = self.prefix + "train/status"
        self.model = self.prefix + "train/model"

    def pos(self, sim_rank: int) -> str:
        """Coordinates of a simulation rank."""
        return f"{self.prefix}graph/{sim_rank}/pos"

    def edges(self, sim_rank: int) -> str:
        """Edge index of a simulation rank's graph."""
        return f"{self.prefix}graph/{sim_rank}/edges"

    def data(self, sim_rank: int, step: int) -> str:
        """Snapshot of a simulation rank at a sync step."""
        return f"{self.prefix}data/{sim_rank}/{step}"

    def stream_steps(self, sim_rank: int) -> str:
        """Steps a simulation rank wrote to its stream, published before it closes the stream."""
        return f"{self.prefix}stream/{sim_rank}/steps"

    def error(self, component: str) -> str:
        """Failure message of a component."""
        return f"{self.prefix}error/{component}"


class Heartbeat:
    """Writes a status array with a rising counter, at most every ``interval_s`` unless forced."""

    def __init__(self, client: StagingClient, key: str, interval_s: float) -> None:
        self.client = client
        self.key = key
        self.interval_s = interval_s
        self.counter = 0
        self._last = -float("inf")

    def due(self) -> bool:
        """Whether the next :meth:`write` without ``force`` would write."""
        return time.monotonic() - self._last >= self.interval_s

    def write(self, fields: list[int], force: bool = False) -> bool:
        """Store ``fields + [counter]`` (``fields`` first); returns whether it wrote."""
        if not force and not self.due():
            return False
        self.counter += 1
        self.client.put_tensor(self.key, np.array([*fields, self.counter], dtype=np.int64))
        self._last = time.monotonic()
        return True


class PeerMonitor:
    """Watches the other component's status key and error key; says when it is dead.

    ``heartbeat_index`` is the position of the counter in the peer's status array.
    """

    def __init__(self, client: StagingClient, keys: Keys, peer: str, heartbeat_index: int,
                 startup_timeout_s: float, peer_timeout_s: float) -> None:
        self.client = client
        self.peer = peer
        self.status_key = keys.sim_status if peer == "sim" else keys.train_status
        self.error_key = keys.error(peer)
        self.heartbeat_index = heartbeat_index
        self.startup_timeout_s = startup_timeout_s
        self.peer_timeout_s = peer_timeout_s
        self._since = time.monotonic()
        self._beat: int | None = None
        self.status: np.ndarray | None = None

    def read(self) -> np.ndarray | None:
        """Read the peer's status (and error) once; raise if it failed or went silent."""
        message = self.client.get_bytes(self.error_key)
        if message is not None:
            raise PeerFailedError(f"the {self.peer} component failed: {message.decode(errors='replace')}")
        status = self.client.get_tensor(self.status_key)
        now = time.monotonic()
        if status is not None and int(status[self.heartbeat_index]) != self._beat:
            self._beat = int(status[self.heartbeat_index])
            self._since = now
        self.status = status
        self._check_deadline(now)
        return status

    def _check_deadline(self, now: float) -> None:
        silent = now - self._since
        if self._beat is None and silent > self.startup_timeout_s:
            raise PeerTimeoutError(
                f"the {self.peer} component gave no sign of life within {self.startup_timeout_s:g} s "
                f"(no {self.status_key!r} key): it did not start, or it was killed"
            )
        if self._beat is not None and silent > self.peer_timeout_s:
            raise PeerTimeoutError(
                f"the {self.peer} component has been silent for {silent:.1f} s (> {self.peer_timeout_s:g} s, "
                f"last heartbeat {self._beat}): it was killed or hangs"
            )


#: How long a component that misses an announced key watches for its store's removal before blaming the key.
STORE_REMOVAL_S = 0.5


def fetch_announced(client: StagingClient, acc: Accounting, keys: Keys, key: str, category: str,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Get a tensor the simulation announced, timed as ``category``; :class:`WorkflowError` when it is missing."""
    with acc.section(category, key=key.removeprefix(keys.prefix)) as ev:
        array = client.get_tensor(key, out=out)
        if array is not None:
            ev["nbytes"] = array.nbytes
    if array is None:
        client.check_store(within_s=STORE_REMOVAL_S)  # a staging directory being removed says so
        raise WorkflowError(f"staging key {key!r} is missing although the simulation announced it")
    return array


def publish_error(client: StagingClient | None, keys: Keys, component: str, message: str) -> None:
    """Tell the peer that ``component`` failed."""
    if client is None:
        return
    # Best effort: the staging area itself may be what failed, and that must not mask the original error.
    with contextlib.suppress(Exception):
        client.put_bytes(keys.error(component), message.encode())
