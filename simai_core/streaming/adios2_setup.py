"""What the installed ADIOS2 can do, and the engine parameters and JSON facts that follow from it.

Everything here imports ``adios2`` only when called, so a missing package is reported
(:func:`unavailable_reason`, with the install command) rather than raised at import.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any

from simai_core.errors import BackendUnavailableError
from simai_core.net import LOOPBACK
from simai_core.streaming.base import StreamConfig

INSTALL_HINT = "pip install 'adios2==2.12.1.1001' (or pip install -e '.[adios2]')"


def check_available() -> None:
    """Raise :class:`BackendUnavailableError` with the install command when adios2 is missing."""
    try:
        import adios2  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(f"ADIOS2 streams need the adios2 package: {INSTALL_HINT}") from exc


def unavailable_reason() -> str | None:
    """Why ADIOS2 streams cannot run here, or None when they can."""
    try:
        check_available()
    except BackendUnavailableError as exc:
        return str(exc)
    return None


def built_with_mpi() -> bool:
    """Whether the installed ADIOS2 can share one stream across the ranks of a communicator."""
    import adios2

    return bool(adios2.is_built_with_mpi)


def sst_data_planes() -> frozenset[str] | None:
    """The SST data planes the installed ADIOS2 was built with (from its SSTConfig.h), None when unknown."""
    import adios2

    roots = [Path(adios2.__file__).parent / "include", Path(sys.prefix) / "include"]
    for root in roots:
        header = root / "adios2" / "toolkit" / "sst" / "SSTConfig.h"
        if header.is_file():
            text = header.read_text()
            planes = {"WAN"}
            for macro, plane in (("LIBFABRIC", "RDMA"), ("UCX", "UCX"), ("MPI", "MPI")):
                if re.search(rf"^#define SST_HAVE_{macro}\b", text, re.MULTILINE):
                    planes.add(plane)
            return frozenset(planes)
    return None


def choose_data_plane(config: StreamConfig) -> str:
    """The SST data plane: as configured, else RDMA (libfabric) or UCX off loopback when built in, else WAN.

    On loopback RDMA buys nothing. When the build's planes are unknown, RDMA is requested and
    ADIOS2 falls back to WAN (with a warning) if it lacks it.
    """
    if config.data_plane != "auto":
        return config.data_plane.upper()
    if config.network_interface in LOOPBACK:
        return "WAN"
    planes = sst_data_planes()
    if planes is None:
        return "RDMA"
    return next((p for p in ("RDMA", "UCX") if p in planes), "WAN")


def sst_parameters(config: StreamConfig) -> dict[str, str]:
    """The SST engine parameters for ``config`` (the same on both ends)."""
    sync = config.mode == "sync"
    return {
        "DataTransport": choose_data_plane(config),
        # sockets: an isolated small step waits ~40 ms (Nagle + delayed ACK); enet does not, but stalled 64 MiB steps
        "ControlTransport": "sockets",
        "NetworkInterface": config.network_interface,
        "MarshalMethod": "BP5",
        "OpenTimeoutSecs": str(max(1, math.ceil(config.open_timeout_s))),  # the reader's wait for a writer
        "QueueLimit": str(config.queue_limit),
        "QueueFullPolicy": "Block" if sync else "Discard",
        "RendezvousReaderCount": "1" if sync else "0",
        "StatsLevel": "0",  # no min/max pass over every array
    } | dict(config.engine_params)


def stream_detail(config: StreamConfig, engine: str = "SST", comm: Any = None) -> dict[str, Any]:
    """``simai.backend_detail`` for a stream with ``config`` on ``engine``."""
    import adios2

    shared = comm is not None and built_with_mpi()
    detail: dict[str, Any] = {"adios2": adios2.__version__, "engine": engine, "mpi": built_with_mpi(),
                              "layout": "one stream per communicator" if shared else "one stream per writer process"}
    if engine == "SST":
        params = sst_parameters(config)
        planes = sst_data_planes()
        detail |= {"data_plane": params["DataTransport"], "data_planes_built": sorted(planes) if planes else "unknown",
                   "control_transport": params["ControlTransport"], "network_interface": config.network_interface,
                   "marshal": params["MarshalMethod"], "mode": config.mode, "queue_limit": config.queue_limit,
                   "queue_full_policy": params["QueueFullPolicy"],
                   "rendezvous_reader_count": int(params["RendezvousReaderCount"])}
    if config.engine_params:
        detail["engine_params"] = dict(config.engine_params)
    return detail
