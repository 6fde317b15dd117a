"""Staging servers for a pytest session: started once, shared by every rank, always stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simai_core import mpi
from simai_core.profiles import MachineProfile
from simai_core.staging import registry
from simai_core.staging.base import StagingClient, StagingServer
from simai_core.workflow.layout import node_comm


class StagingPool:
    """Starts each backend's server on first use, shares its address, connects every rank.

    The server runs on rank 0, or on each node's first rank for node-scoped backends (nodes as
    :func:`~simai_core.workflow.layout.node_comm` sees them: virtual ones when set).

    Every rank must ask for the same backends in the same order (pytest runs the same
    tests everywhere), since starting a server is collective.
    """

    def __init__(self, profile: MachineProfile, workdir: Path, staging_path: Path | None = None,
                 shards: int | None = None) -> None:
        self.profile = profile
        self.workdir = workdir
        self.staging_path = staging_path
        self.shards = shards
        self._servers: dict[str, StagingServer] = {}
        self._clients: dict[str, StagingClient] = {}
        self._details: dict[str, dict[str, Any]] = {}
        self._addresses: dict[str, str] = {}

    def client(self, backend: str) -> StagingClient:
        """This rank's client of ``backend``, starting its server on first use."""
        if backend not in self._clients:
            address, detail = self._start(backend)
            self._details[backend] = detail
            self._addresses[backend] = address
            self._clients[backend] = registry.connect(backend, address)
        return self._clients[backend]

    def address(self, backend: str) -> str:
        """The address clients of a started backend connect to."""
        return self._addresses[backend]

    def detail(self, backend: str) -> dict[str, Any]:
        """The backend_detail of a started backend."""
        return self._details[backend]

    def _start(self, backend: str) -> tuple[str, dict[str, Any]]:
        spec = registry.get_spec(backend)
        comm = mpi.world()
        group = node_comm(comm) if spec.scope == "node" else comm
        try:
            return mpi.bcast_result(lambda: self._start_here(backend), comm=group)
        finally:
            if group is not comm:
                group.Free()

    def _start_here(self, backend: str) -> tuple[str, dict[str, Any]]:
        profile = self.profile
        update: dict[str, Any] = {}
        if self.staging_path is not None:
            update |= {"node_local_path": self.staging_path, "shared_path": self.staging_path}
        if self.shards is not None:
            update["shards"] = self.shards
        if update:
            profile = profile.model_copy(update={"staging": profile.staging.model_copy(update=update)})
        server = registry.make_server(backend, profile, self.workdir / backend)
        server.start()
        self._servers[backend] = server
        return server.address, server.detail()

    def close(self) -> None:
        """Close every client, then (after all ranks closed theirs) stop every server."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        if mpi.size() > 1:
            mpi.barrier()
        for server in self._servers.values():
            server.stop()
        self._servers.clear()

    def stop_servers_now(self) -> None:
        """Stop this rank's servers without talking to other ranks (for aborts and interrupts)."""
        for server in self._servers.values():
            server.stop()
        self._servers.clear()

