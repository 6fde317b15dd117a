"""Micro-benchmark parametrisation and options.

* The put/get sweep sizes come from options and the profile.
* ``--simai-idle S`` (default 0.5 s): the idle time before each timed call of the cold-call variants
  (``test_metadata_cold``, ``test_tensor_cold``), as a workflow's component sleeps through its step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from simai_core.bench.measure import PairedRounds
from simai_core.bench.plugin import sweep_sizes
from simai_core.sizes import format_size

IDLE_S = 0.5
#: Rounds of a cold-call benchmark unless ``--simai-rounds`` says otherwise (each one idles first).
COLD_ROUNDS = 6


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


@pytest.fixture
def after_idle(idle_s: float) -> Callable[[PairedRounds], Callable[[], None]]:
    """``after_idle(timing)``: a ``benchmark.pedantic`` setup: the round's barrier, then ``--simai-idle`` seconds of sleep.

    The sleep comes after the barrier because MPICH's barrier busy-polls, which would keep the rank awake:
    the timed call then finds the process, and the staging server, as a workflow's call does after its step.
    """
    def setup_for(timing: PairedRounds) -> Callable[[], None]:
        def setup() -> None:
            timing.setup()
            time.sleep(idle_s)
        return setup
    return setup_for
