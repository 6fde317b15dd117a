"""Micro-benchmark parametrisation and options.

* The put/get sweep sizes come from options and the profile.
* ``--simai-idle S`` (default 0.5 s): the idle time before each timed call of the cold-call variants
  (``test_metadata_cold``, ``test_tensor_cold``), as a workflow's component sleeps through its step.
  Their ``neighbours`` parameter: ``idle``, every rank sleeps then calls; ``busy``, the odd ranks
  compute (one CPU-bound thread each) through the idle time and the call while the even ranks sleep
  then call, as a workflow's trainer ranks train while its simulation ranks sleep; ``busy_warm``, as
  ``busy``, but the calling ranks do not sleep: they compute :data:`WARM_S` after the round's barrier
  (whose wait MPICH spends polling), then call, as the simulation does at a sync point (snapshot,
  inference, collectives) before its staging calls; and the neighbours train as the motif-6 trainer
  does at ``--simai-trainer-size`` (:class:`~simai_core.workflow.trainer_load.TrainerLoad`: its MLP,
  mini-batch and table of snapshots, a short sleep after each step for the all-reduce). Its rounds are
  short, so it runs :data:`WARM_ROUNDS` of them: the calls' times are heavy-tailed, and their mean
  needs many.

Why ``busy_warm``: on a node whose cores the neighbours keep busy, a call that blocks for its reply
waits for a CPU when the reply wakes it. A rank that has just slept gets one at once (the scheduler
credits its sleep); a rank that has run past that credit waits behind the running neighbours, up to
a scheduler tick and more. Measured in the motif-6 workflow, that run-queue wait was most of a
simulation call's time. A neighbour that wakes often (the trainer, after each allreduce) preempts
such a caller even in a call that never sleeps (nodelocal); one that computes without a break
seldom does. And a trainer whose mini-batches gather from tens of MiB (medium) can slow a large put's
copies through the shared caches and memory more than 64-row mini-batches (small) do.
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
from simai_core.workflow.problem import SIZES

IDLE_S = 0.5
#: Rounds of a cold-call benchmark unless ``--simai-rounds`` says otherwise (each one idles first).
COLD_ROUNDS = 6
#: A busy neighbour computes this long past the idle time, to cover the callers' timed call.
BUSY_TAIL_S = 0.1
#: ``busy_warm``: the callers compute this long before the call: more than a scheduler tick (4 ms at the
#: common HZ=250), so any credit an earlier sleep gave them is spent, as after a sync point's work.
WARM_S = 0.01
#: Rounds of a ``busy_warm`` benchmark unless ``--simai-rounds`` says otherwise (no sleep: ~0.1 s each).
WARM_ROUNDS = 40
#: ``busy_warm``: the problem size whose trainer the neighbours emulate unless ``--simai-trainer-size`` says otherwise.
TRAINER_SIZE = "small"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--simai-idle", type=float, default=IDLE_S, metavar="S",
                     help=f"cold-call micro benchmarks: seconds each round sleeps after its barrier, "
                          f"before the timed call (default {IDLE_S})")
    parser.addoption("--simai-trainer-size", default=TRAINER_SIZE, choices=list(SIZES), metavar="SIZE",
                     help=f"cold-call micro benchmarks, neighbours=busy_warm: the neighbours train as the motif-6 "
                          f"trainer does on this problem size (default {TRAINER_SIZE}; predict prices a workflow with "
                          f"the busy_warm run of its size)")


def _cold_bytes(item: pytest.Item) -> int | None:
    """The value size of a cold-call benchmark (a metadata call: 0); None for any other test."""
    if "after_idle" not in getattr(item, "fixturenames", ()):
        return None
    callspec = getattr(item, "callspec", None)
    return int(callspec.params.get("cold_nbytes", 0)) if callspec is not None else 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the cold-call benchmarks first, smallest value first (the same order on every rank).

    They stand for a workflow's calls, and a process's history changes them: beside a training
    neighbour, a SmartSim put of 2 MiB took 9-14 ms in a process that had moved nothing larger (as
    in the workflow) and 5-6 ms once it had put and got 4 MiB values, on any connection.
    """
    keyed = [(_cold_bytes(item), item) for item in items]
    cold = sorted(((size, item) for size, item in keyed if size is not None), key=lambda pair: pair[0])
    items[:] = [item for _, item in cold] + [item for size, item in keyed if size is None]


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
def cold_rounds(pytestconfig: pytest.Config, neighbours: str) -> int:
    """Rounds of a cold-call benchmark: ``--simai-rounds``, else :data:`COLD_ROUNDS` (``busy_warm``: :data:`WARM_ROUNDS`)."""
    return int(pytestconfig.getoption("--simai-rounds") or (WARM_ROUNDS if neighbours == "busy_warm" else COLD_ROUNDS))


@pytest.fixture
def cold_idle_s(idle_s: float, neighbours: str) -> float:
    """Seconds a calling rank sleeps in each round: ``--simai-idle``; 0 with ``busy_warm`` (it computes instead)."""
    return 0.0 if neighbours == "busy_warm" else idle_s


@pytest.fixture(params=["idle", "busy", "busy_warm"])
def neighbours(request: pytest.FixtureRequest) -> str:
    """What the other ranks do while a cold call's rank sleeps: sleep too (``idle``) or compute (``busy``, odd ranks;
    ``busy_warm``: the callers also compute :data:`WARM_S` before their call)."""
    if request.param != "idle" and mpi.size() < 2:
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
def trainer_size(pytestconfig: pytest.Config) -> str:
    """The problem size whose trainer ``busy_warm`` neighbours emulate (``--simai-trainer-size``)."""
    return str(pytestconfig.getoption("--simai-trainer-size", default=TRAINER_SIZE))


@pytest.fixture
def neighbour_params(neighbours: str, trainer_size: str) -> dict[str, str]:
    """The cold-call benchmark's parameters that say what the neighbours did."""
    return {"neighbours": neighbours, **({"trainer_size": trainer_size} if neighbours == "busy_warm" else {})}


@pytest.fixture
def after_idle(cold_idle_s: float, neighbours: str, trainer_size: str) -> Callable[[PairedRounds], Callable[[], None]]:
    """``after_idle(timing)``: a ``benchmark.pedantic`` setup: the round's barrier, then ``--simai-idle`` seconds of sleep
    (a busy neighbour computes instead, through the callers' call too; ``busy_warm`` callers compute :data:`WARM_S`
    instead of sleeping, and its neighbours train as the motif-6 trainer does at ``--simai-trainer-size``).

    The sleep comes after the barrier because MPICH's barrier busy-polls, which would keep the rank awake:
    the timed call then finds the process, and the staging server, as a workflow's call does after its step.
    """
    load = None
    if neighbours == "busy_warm" and not caller(neighbours):
        from simai_core.workflow.trainer_load import TrainerLoad  # deferred: imports torch

        load = TrainerLoad(trainer_size)  # type: ignore[arg-type]  # one of SIZES: the option's choices

    def setup_for(timing: PairedRounds) -> Callable[[], None]:
        def setup() -> None:
            timing.setup()
            warm = WARM_S if neighbours == "busy_warm" else 0.0
            if caller(neighbours):
                time.sleep(cold_idle_s)
                _compute(warm)
            elif load is not None:
                load.run(warm + BUSY_TAIL_S)
            else:
                _compute(cold_idle_s + warm + BUSY_TAIL_S)
        return setup
    return setup_for
