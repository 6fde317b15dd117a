"""Options of the full benchmarks (read when pytest is pointed at benchmarks/full or below).

Named ``--simai-full-*`` so that they never clash with the mini benchmark's options when
both directories are collected; the stream options of the mini benchmark
(``--simai-stream-control``, ``--simai-stream-queue``) are read with their defaults when
the mini conftest is not loaded.
"""

from __future__ import annotations

from typing import Any

import pytest

_OPTIONS: dict[str, tuple[Any, type, str]] = {
    "--simai-full-size": ("small", str, "solver size: debug, small, medium, large (3-D) (default small)"),
    "--simai-full-horizon": (None, int, "K: solver time steps per loop step; the target is u at n + K (default 4)"),
    "--simai-full-train-interval": (None, int, "loop steps between sync points (default 5)"),
    "--simai-full-max-steps": (None, int, "loop step limit (default 20000)"),
    "--simai-full-min-skill": (None, float, "skill of a successful check (default 0.3)"),
    "--simai-full-dt-ms": (None, float, "solver time step in ms (default: half the CFL limit; above it is refused)"),
    "--simai-full-checkpoint-every": (None, int, "epochs between checkpoints (default 10)"),
    "--simai-full-epoch-batches": (None, int, "most mini-batches per epoch (default 4)"),
    "--simai-full-sim-fraction": (None, float, "share of ranks (per node if colocated) that simulate (default 0.5)"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("simai-full", "SimAI-Bench full benchmarks")
    for name, (default, kind, help_text) in _OPTIONS.items():
        group.addoption(name, default=default, type=kind, help=help_text)
    group.addoption("--simai-full-allow-unconverged", action="store_true", default=False,
                    help="record a run whose surrogate did not converge without failing the test")
