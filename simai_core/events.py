"""Per-event samples of a workflow run, kept in a JSON-lines sidecar next to the benchmark JSON.

Each line is one event: ``{"component": "sim"|"train", "rank": int, "kind": str,
"t0_s": float, "dt_s": float, "nbytes": int | null, ...}`` where ``t0_s`` counts
from the workflow's common start (rank 0's clock, broadcast) and ``kind`` is one of
``step``, ``meta``, ``data``, ``checkpoint``, ``inference``, ``epoch``, ``wait``.
The benchmark's ``extra_info.simai.events`` names the sidecar file (relative to the JSON).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

EVENT_KINDS = ("step", "meta", "data", "checkpoint", "inference", "epoch", "wait")


def write_events(path: Path, events: Iterable[Mapping[str, Any]]) -> None:
    """Write events as JSON lines (one object a line)."""
    with path.open("w") as f:
        for event in events:
            f.write(json.dumps(event) + "\n")


def read_events(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines event sidecar."""
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]
