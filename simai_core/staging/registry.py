"""Backend registry: names to backend modules, imported only when used.

A backend module exposes ``check_available()`` (raise
:class:`~simai_core.errors.BackendUnavailableError` naming what to install),
``make_server(profile, workdir)`` and ``connect(address)``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from simai_core.errors import BackendUnavailableError, UnknownBackendError

if TYPE_CHECKING:
    from simai_core.profiles import MachineProfile
    from simai_core.staging.base import RawReference, StagingClient, StagingServer


@dataclass(frozen=True)
class BackendSpec:
    """A staging backend: its name, module and the pip extra that provides it."""

    name: str
    module: str
    extra: str | None
    summary: str
    scope: str = "world"  # "world": one server for the job; "node": one per node (node-local storage)


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec("redis", "simai_core.staging.redis", None, "a redis-server on the staging node, redis-py + hiredis"),
        BackendSpec("filesystem", "simai_core.staging.files", None, "files on a shared file system"),
        BackendSpec("nodelocal", "simai_core.staging.files", None, "files on node-local storage (/dev/shm)", "node"),
        BackendSpec("smartsim", "simai_core.staging.smartsim", "smartsim", "SmartSim Orchestrator + SmartRedis"),
        BackendSpec("dragon", "simai_core.staging.dragon", "dragon", "Dragon runtime + distributed dictionary (DDict)"),
    )
}


def backend_names() -> list[str]:
    """Every registered backend name."""
    return list(BACKENDS)


def get_spec(name: str) -> BackendSpec:
    """The spec of backend ``name``; an unknown name lists the known ones."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise UnknownBackendError(f"Unknown staging backend {name!r}; known backends: {', '.join(BACKENDS)}") from None


def load(name: str) -> ModuleType:
    """Import the module of backend ``name`` and check its dependencies are present."""
    spec = get_spec(name)
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        hint = f"pip install -e '.[{spec.extra}]'" if spec.extra else "make setup"
        raise BackendUnavailableError(f"Backend {name!r} needs {exc.name or exc}: install it with {hint}") from exc
    module.check_available(name)
    return module


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run here, or None when it can."""
    try:
        load(name)
    except BackendUnavailableError as exc:
        return str(exc)
    return None


def make_server(name: str, profile: MachineProfile, workdir: Path) -> StagingServer:
    """A (not yet started) server of backend ``name``."""
    return load(name).make_server(name, profile, workdir)  # type: ignore[no-any-return]


def raw_reference(name: str, address: str) -> RawReference:
    """The raw path that backend ``name`` is compared with (same server or directory)."""
    return load(name).raw_reference(name, address)  # type: ignore[no-any-return]


def second_references(name: str, address: str) -> dict[str, RawReference]:
    """Further named paths backend ``name`` is reported against (``*_vs_<name>``), beside its raw reference."""
    module = load(name)
    return dict(module.second_references(name, address)) if hasattr(module, "second_references") else {}


def connect(name: str, address: str) -> StagingClient:
    """A client of backend ``name`` connected to the server at ``address``."""
    return load(name).connect(name, address)  # type: ignore[no-any-return]
