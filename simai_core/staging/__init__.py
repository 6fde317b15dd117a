"""Staging areas: the interface (:mod:`.base`), the registry and one module per backend."""

from simai_core.staging.base import RawReference, StagingClient, StagingServer
from simai_core.staging.registry import backend_names, connect, make_server

__all__ = ["RawReference", "StagingClient", "StagingServer", "backend_names", "connect", "make_server"]
