"""Decisions that every rank of a component must take together.

A rank that sees a failure (a dead peer, a staging error) must not raise alone: its
siblings would wait for it forever in the next collective. :func:`agree` runs a local
probe, all-gathers the results, and makes every rank raise the same error when any
probe failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from simai_core.workflow.protocol import PeerFailedError, PeerTimeoutError, WorkflowError
from simai_core.workflow.timers import Accounting

T = TypeVar("T")

_ERRORS: dict[str, type[WorkflowError]] = {
    "PeerFailedError": PeerFailedError,
    "PeerTimeoutError": PeerTimeoutError,
}


def agree(comm: Any, acc: Accounting, probe: Callable[[], T] | None, category: str = "meta") -> list[T | None]:
    """Run ``probe`` (timed as ``category``; ``None`` = nothing to probe on this rank) and all-gather.

    Returns every rank's result (``None`` where nothing was probed). If a probe raised on
    any rank, every rank raises: the peer errors keep their type, anything else becomes
    a :class:`WorkflowError` naming the rank.
    """
    payload: tuple[bool, Any] = (True, None)
    if probe is not None:
        try:
            with acc.section(category):
                payload = (True, probe())
        except Exception as exc:
            payload = (False, (type(exc).__name__, str(exc)))
    with acc.section("wait"):
        results = comm.allgather(payload)
    for rank, (ok, value) in enumerate(results):
        if not ok:
            name, message = value
            error = _ERRORS.get(name, WorkflowError)(
                message if name in _ERRORS else f"{name} on {acc.component} rank {rank}: {message}"
            )
            error.agreed = True
            raise error
    return [value for _, value in results]
