"""The writer end of a stream pair in its own process: ``python -m simai_core.streaming.peer HOST:PORT TIMEOUT_S``.

A serial benchmark or test has one process; it starts this peer (:func:`~.pair.spawn_peer`),
which connects back over the pair link and then runs what it is sent, one command at a time:

* ``{"op": "plan", "plan": {...}}``: the writer end of a benchmark :class:`~.harness.Plan`;
* ``{"op": "steps", ...}``: a test stream: after the join handshake (:func:`~.harness.join_reader`),
  ``steps`` steps, step ``first + i`` holding the random ``data`` of seed ``i`` and its CRC-32
  in ``crc``, ``interval_s`` apart; it answers ``{"written": steps, "write_s": seconds}`` (before close);
* ``{"op": "quit"}``.

It exits when told to, when the link closes (its parent died) or after ``TIMEOUT_S`` idle.
It never imports MPI.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import zlib
from typing import Any

import numpy as np

from simai_core.streaming.adios2_sst import Adios2StreamWriter
from simai_core.streaming.base import StreamConfig
from simai_core.streaming.harness import Plan, join_reader, payload, run_side
from simai_core.streaming.pair import TOKEN_ENV, PairLink
from simai_core.streaming.sides import make_side


def write_test_steps(link: PairLink, command: dict[str, Any]) -> None:
    """The ``steps`` command: seeded data with CRC-32s, after the reader said it joined."""
    config = StreamConfig(mode=command["mode"], queue_limit=command.get("queue_limit", 2),
                          open_timeout_s=command.get("open_timeout_s", 60.0),
                          step_timeout_s=command.get("step_timeout_s", 60.0))
    with Adios2StreamWriter(command["path"], config) as writer:
        first = join_reader(writer, link, config.mode, config.open_timeout_s)
        start = time.perf_counter()
        for i in range(command["steps"]):
            data = payload(command["nbytes"], seed=i)
            writer.write_step({"data": data, "crc": np.array([zlib.crc32(data.data)], np.uint32)})
            time.sleep(command.get("interval_s", 0.0))
        written, seconds = writer.steps_written - first, time.perf_counter() - start
    link.send({"written": written, "write_s": seconds})


def serve(link: PairLink, idle_timeout_s: float) -> None:
    """Run commands until ``quit``."""
    while True:
        command = link.recv(idle_timeout_s)
        if command["op"] == "quit":
            return
        if command["op"] == "plan":
            run_side(make_side(link, Plan(**command["plan"]), writer=True))
        elif command["op"] == "steps":
            write_test_steps(link, command)
        else:
            raise ValueError(f"unknown peer command {command['op']!r}")


def main(argv: list[str]) -> int:
    """Connect to the parent and serve it; exit code 1 (traceback on stderr) on any failure."""
    address, timeout_s = argv[1], float(argv[2])
    try:
        # The token leaves the environment first: nothing this process starts inherits it.
        link = PairLink.connect(address, timeout_s, token=os.environ.pop(TOKEN_ENV, None) or None)
        try:
            serve(link, timeout_s)
        finally:
            link.close()
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
