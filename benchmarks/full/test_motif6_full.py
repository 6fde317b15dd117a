"""Motif 6 full benchmark: online training of a GNN surrogate from a real, domain-decomposed solver.

The same workflow as the mini benchmark (driver, staging and stream data paths,
deployments, trainer, accounting: :mod:`simai_core.workflow.benchmark`), with the Devito
acoustic-wave solver (:mod:`simai_core.solvers.acoustic`) in place of the mock: Devito's
own MPI over the simulation ranks, K time steps per loop step, and at every sync point
each simulation rank sends its tile's sample (u at n and n-1, the velocity; target u at
n + K). A residual GNN on the tile's grid graph learns it; inference is judged on the
tile's interior against persistence (u at n + K = u at n), and the run stops after 5
consecutive checks with skill >= min_skill. Compile time, solver throughput, trainer
samples/s and the combined rate are FOMs of their own (``level: "full"``).
"""

from __future__ import annotations

from typing import Any

import pytest

from simai_core.solvers.config import acoustic_size
from simai_core.workflow.benchmark import needs, run_benchmark, run_streamed_benchmark, streamed_config
from simai_core.workflow.config import WorkflowConfig

pytestmark = [pytest.mark.full, pytest.mark.motif6]

#: One loop step is K solver steps, not an emulated 0.5 s: no step_time.
FULL_DEFAULTS = {"max_steps": 20000, "step_time_s": 0.0, "min_skill": 0.3}


def full_config(config: pytest.Config, deployment: str) -> WorkflowConfig:
    """The workflow configuration of the full level from the command-line options."""

    def opt(name: str) -> Any:
        return config.getoption(name, default=None)

    size = opt("--simai-full-size") or "small"
    acoustic = {"horizon_steps": opt("--simai-full-horizon"), "dt_ms": opt("--simai-full-dt-ms")}
    sim = {"solver": "acoustic", "acoustic": {k: v for k, v in acoustic.items() if v is not None},
           "train_interval": opt("--simai-full-train-interval"), "max_steps": opt("--simai-full-max-steps"),
           "min_skill": opt("--simai-full-min-skill")}
    # A solver outruns the trainer on small tiles: train on the newest 100 sync steps, skip older ones unread.
    trainer = {"model": {"kind": "gnn", "residual": True}, "window": 100,
               "checkpoint_every": opt("--simai-full-checkpoint-every"),
               "epoch_batches": opt("--simai-full-epoch-batches")}
    data: dict[str, Any] = {
        "problem": {"size": size, "dtype": "float32"},  # the solver's own precision: the sample is its fields
        "graph": {"k": 2 * acoustic_size(size).dim},  # the axis neighbours of a grid point
        "simulation": FULL_DEFAULTS | {k: v for k, v in sim.items() if v is not None},
        "trainer": {k: v for k, v in trainer.items() if v is not None},
        "deployment": deployment,
    }
    if opt("--simai-full-sim-fraction") is not None:
        data["sim_fraction"] = opt("--simai-full-sim-fraction")
    return WorkflowConfig.model_validate(data)


@pytest.mark.timeout(1500)
@pytest.mark.parametrize("deployment", ["clustered", "colocated"])
def test_online_training_solver(benchmark, backend, staging, staging_pool, simai_run, simai_profile, pytestconfig,
                                request, tmp_path, deployment):
    needs("gnn", "acoustic")
    cfg = full_config(pytestconfig, deployment)
    run_benchmark(benchmark, backend, staging_pool, simai_run, simai_profile, pytestconfig, request, tmp_path, cfg,
                  pytestconfig.getoption("--simai-full-allow-unconverged"))


@pytest.mark.adios2
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_online_training_solver_streamed(benchmark, staging_pool, simai_run, simai_profile, pytestconfig, request,
                                         tmp_path, mode):
    needs("gnn", "acoustic")
    cfg = streamed_config(full_config(pytestconfig, "clustered"), mode,
                          pytestconfig.getoption("--simai-stream-queue", default=2), simai_profile)
    run_streamed_benchmark(benchmark, pytestconfig.getoption("--simai-stream-control", default="redis"), staging_pool,
                           simai_run, simai_profile, pytestconfig, request, tmp_path, cfg,
                           pytestconfig.getoption("--simai-full-allow-unconverged"))
