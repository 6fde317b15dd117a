"""Options of the mini benchmarks (read when pytest is pointed at benchmarks/mini or below)."""

from __future__ import annotations

from typing import Any

import pytest

_OPTIONS: dict[str, tuple[Any, str]] = {
    "--simai-problem-size": ("small", "motif 6 problem size: debug, small, medium, large, very_large (default small)"),
    "--simai-criterion": (None, "stop criterion: skill (skill against persistence >= --simai-min-skill, default) or "
                                "mse (MSE <= --simai-tolerance, the reference's rule)"),
    "--simai-min-skill": (None, "skill of a successful check under the skill criterion (default 0.5)"),
    "--simai-tolerance": (None, "inference MSE of a successful check under the mse criterion (default: the reference's 0.01)"),
    "--simai-inputs": (None, "well_posed (u and v on every size, default) or reference (u alone on debug and small, "
                             "which no model can advance one step)"),
    "--simai-mini-batch": (None, "trainer mini-batch (default: MLP n_points/16 within [64, 8192], GNN 1 graph patch)"),
    "--simai-epoch-batches": (None, "most mini-batches per epoch (default: MLP 65536 samples' worth within [8, 64], "
                                    "64 on debug and small, 16 on medium; GNN 4)"),
    "--simai-checkpoint-every": (None, "epochs between checkpoints (default 10)"),
    "--simai-check-points": (None, "interior points per simulation rank the surrogate check judges (default 4096; "
                                   "all: every point)"),
    "--simai-max-steps": (None, "simulation step limit (default 1000)"),
    "--simai-step-time": (None, "seconds of emulated simulation work per step (default 0.5)"),
    "--simai-step-cost": (None, "emulated work: sleep or kernel (default sleep)"),
    "--simai-train-interval": (None, "steps between sync points (default 5)"),
    "--simai-sim-fraction": (None, "share of ranks (per node if colocated) that simulate (default 0.5)"),
    "--simai-window": (None, "trainer keeps only the newest N sync steps (default: all)"),
}

# Steering motif (benchmarks/mini/test_steering.py).
_STEERING_OPTIONS: dict[str, tuple[Any, str]] = {
    "--simai-steering-launchers": ("pool,mpiexec,smartsim,dragon",
                                   "steering: launchers to run, of pool, mpiexec, smartsim, dragon (default all; each "
                                   "runs where it can: dragon on the dragon backend only, the others on every other)"),
    "--simai-steering-modes": ("batch,streaming", "steering: batch (refit after every W results), streaming (after "
                                                  "every result); default both"),
    "--simai-steering-policies": ("ai", "steering: policies of the launcher x mode benchmarks, of ai, random (default "
                                        "ai; test_steering_vs_random runs both)"),
    "--simai-steering-workers": ("4", "steering: W, simulations running at once (default 4)"),
    "--simai-steering-ranks-per-sim": ("1", "steering: MPI ranks per simulation (default 1)"),
    "--simai-steering-budget": ("64", "steering: most simulations per run (default 64)"),
    "--simai-steering-seeds": ("0,1,2", "steering: seeds of the AI-vs-random comparison; the first is the launcher x "
                                        "mode benchmarks' (default 0,1,2)"),
    "--simai-steering-tolerance": ("0.05", "steering: target, largest normalised parameter error (default 0.05)"),
    "--simai-steering-field-size": ("64KiB", "steering: size of each simulation's field, 16KiB to 16MiB (sets the "
                                             "grid; CG cost grows as its cube: 16MiB takes minutes per simulation)"),
    "--simai-steering-deadline": ("600", "steering: seconds one run may take before it is stopped (default 600)"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("simai-mini", "SimAI-Bench mini benchmarks")
    for name, (default, help_text) in _OPTIONS.items():
        group.addoption(name, default=default, help=help_text)
    group.addoption("--simai-stream-control", default="redis",
                    help="staging backend of the control keys and checkpoints when the data are streamed (default redis)")
    group.addoption("--simai-stream-queue", type=int, default=2,
                    help="SST queue limit of the streamed data path (default 2; 1 costs ~40 ms per small step here)")
    group.addoption("--simai-allow-unconverged", action="store_true", default=False,
                    help="record a run whose surrogate did not converge without failing the test")
    for name, (default, help_text) in _STEERING_OPTIONS.items():
        group.addoption(name, default=default, help=help_text)
    group.addoption("--simai-steering-allow-unreached", action="store_true", default=False,
                    help="steering: record an AI run that did not reach the target without failing the test")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Steering: one benchmark per launcher x mode x policy named by the options."""
    for fixture, option in (("steering_launcher", "--simai-steering-launchers"),
                            ("steering_mode", "--simai-steering-modes"),
                            ("steering_policy", "--simai-steering-policies")):
        if fixture in metafunc.fixturenames:
            values = [v.strip() for v in metafunc.config.getoption(option).split(",") if v.strip()]
            metafunc.parametrize(fixture, values, ids=values)

