"""torch.distributed over the trainer's MPI communicator (imports torch).

Rendezvous without fixed ports: trainer rank 0 opens a ``TCPStore`` on an ephemeral
port (``port=0``) and broadcasts the port over MPI, so concurrent jobs on one node
never collide (the reference hard-coded port 2345).
"""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

_GPU_BACKENDS = {"cuda": "nccl", "xpu": "xccl"}


def pick_device(requested: str, local_index: int) -> torch.device:
    """The training device: ``auto`` takes a GPU when one is visible (``local_index`` modulo the count)."""
    kind = requested
    if requested == "auto":
        if torch.cuda.is_available():
            kind = "cuda"
        elif hasattr(torch, "xpu") and torch.xpu.is_available():
            kind = "xpu"
        else:
            kind = "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if kind == "cuda" else torch.xpu.device_count()
    if count == 0:
        raise RuntimeError(f"device {kind!r} requested but none is visible")
    return torch.device(kind, local_index % count)


def pick_backend(requested: str, device: torch.device, profile_backend: str | None = None) -> str:
    """The process-group backend: gloo on CPU; on a GPU the machine profile's choice, else nccl / xccl."""
    if requested != "auto":
        return requested
    if device.type == "cpu":
        return "gloo"
    if profile_backend and profile_backend != "gloo":
        return profile_backend
    return _GPU_BACKENDS.get(device.type, "gloo")


def _master_host(comm: Any) -> str:
    hosts = comm.allgather(socket.gethostname())
    # All on one node: loopback avoids depending on how the host name resolves.
    return "127.0.0.1" if len(set(hosts)) == 1 else hosts[0]


def init_process_group(comm: Any, backend: str, timeout_s: float) -> Any:
    """Initialise the default process group over the ranks of ``comm`` (collective); returns the store."""
    host = _master_host(comm)
    timeout = timedelta(seconds=timeout_s)
    rank, size = comm.Get_rank(), comm.Get_size()
    store = None
    port = 0
    if rank == 0:
        store = dist.TCPStore(host, 0, size, is_master=True, timeout=timeout, wait_for_workers=False)
        port = store.port
    port = comm.bcast(port, root=0)
    if rank != 0:
        store = dist.TCPStore(host, port, size, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout)
    return store


def shutdown_process_group() -> None:
    """Destroy the default process group if one exists."""
    if dist.is_initialized():
        dist.destroy_process_group()
