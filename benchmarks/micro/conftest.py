"""Micro-benchmark parametrisation and options.

* The put/get sweep sizes come from options and the profile.
* ``--simai-idle S`` (default 0.5 s): the idle time before each timed call of the cold-call variants
  (``test_metadata_cold``, ``test_tensor_cold``), as a workflow's component sleeps through its step.
  Their ``neighbours`` parameter: ``idle``, every rank sleeps then calls; ``busy``, the odd ranks
  compute (one CPU-bound thread each) through the idle time and the call while the even ranks sleep
  then call, as a workflow's trainer ranks train while its simulation ranks sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

from simai_core import mpi
from simai_core.bench.measure import PairedRounds
from simai_core.bench.plugin import sweep_sizes
from simai_core.sizes import format_size

IDLE_S = 0.5
#: Rounds of a cold-call benchmark unless ``--simai-rounds`` says otherwise (each one idles first).
COLD_ROUNDS = 6
#: A busy neighbour computes this long past the idle time, to cover the callers' timed call.
BUSY_TAIL_S = 0.1


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--simai-idle", type=float, default=IDLE_S, metavar="S",
                     help=f"cold-call micro benchmarks: seconds each round sleeps after its barrier, "
                          f"before the timed call (default {IDLE_S})")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "nbytes" in metafunc.fixturenames:
        sizes = sweep_sizes(metafunc.config)
        metafunc.parametrize("nbytes", sizes, ids=[format_size(s) for s in sizes])


@pytest.fixture
def idle_s(pytestconfig: pytest.Config) -> float:
    """Seconds a cold-call round sleeps after its barrier (``--simai-idle``; this conftest may not be loaded first)."""
    idle = float(pytestconfig.getoption("--simai-idle", default=IDLE_S))
    if idle < 0:
        raise pytest.UsageError("--simai-idle must be >= 0")
    return idle


@pytest.fixture
def cold_rounds(pytestconfig: pytest.Config) -> int:
    """Rounds of a cold-call benchmark: ``--simai-rounds``, else :data:`COLD_ROUNDS`."""
    return int(pytestconfig.getoption("--simai-rounds") or COLD_ROUNDS)


@pytest.fixture(params=["idle", "busy"])
def neighbours(request: pytest.FixtureRequest) -> str:
    """What the other ranks do while a cold call's rank sleeps: sleep too (``idle``) or compute (``busy``, odd ranks)."""
    if request.param == "busy" and mpi.size() < 2:
        pytest.skip("busy neighbours need 2 or more ranks")
    return str(request.param)


def caller(neighbours: str) -> bool:
    """Whether this rank times calls in a cold-call round (with busy neighbours, the odd ranks compute instead)."""
    return neighbours == "idle" or mpi.rank() % 2 == 0


@pytest.fixture
def cold_caller(neighbours: str) -> bool:
    """Whether this rank times calls in a cold-call round (:func:`caller`)."""
    return caller(neighbours)


def _compute(seconds: float) -> None:
    """Keep one CPU busy for ``seconds`` (small matrix products: no allocation, no sleep)."""
    a = np.ones((64, 64))
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a = a @ a * (1.0 / 64)


@pytest.fixture
def after_idle(idle_s: float, neighbours: str) -> Callable[[PairedRounds], Callable[[], None]]:
    """``after_idle(timing)``: a ``benchmark.pedantic`` setup: the round's barrier, then ``--simai-idle`` seconds of sleep
    (a busy neighbour computes instead, through the callers' call too).

    The sleep comes after the barrier because MPICH's barrier busy-polls, which would keep the rank awake:
    the timed call then finds the process, and the staging server, as a workflow's call does after its step.
    """
    def setup_for(timing: PairedRounds) -> Callable[[], None]:
        def setup() -> None:
            timing.setup()
            if caller(neighbours):
                time.sleep(idle_s)
            else:
                _compute(idle_s + BUSY_TAIL_S)
        return setup
    return setup_for
