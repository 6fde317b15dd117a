"""Motif 6 mini benchmark: online training of a surrogate from a running (mock) simulation.

One benchmark per backend x deployment x model runs the whole workflow once
(``rounds=1``: a workflow run is minutes long and identical on every rank). Under
``mpiexec -n N`` the ranks split into simulation and trainer roles; serially the
trainer runs as a separate process. FOMs go to ``extra_info``; per-event samples to a
JSON-lines sidecar next to the benchmark JSON (``simai.events``). A run whose
surrogate did not converge is recorded and fails the test unless
``--simai-allow-unconverged`` is given; "converged" means, by default, skill against
persistence of at least ``--simai-min-skill`` (0.5) for 5 consecutive checks
(``--simai-criterion mse`` restores the reference's absolute MSE rule), and a run called
converged must beat persistence (skill > 0) whatever the criterion. Each check judges a fixed
sample of ``--simai-check-points`` points per simulation rank (default 4096, ``all``: every
point; see :mod:`simai_core.workflow.check`), recorded in ``params``.

``test_online_training_streamed`` (marker ``adios2``) sends the snapshots over ADIOS2 SST
streams instead, one per simulation rank to the trainer rank that owns it, in sync and
async mode; control keys, the GNN graphs and the checkpoints still go through a staging
backend (``--simai-stream-control``, default redis), named in ``backend_detail``. Its
``backend`` is ``adios2`` and it adds the FOM ``discarded_steps``.
"""

from __future__ import annotations

from typing import Any

import pytest

from simai_core.workflow.benchmark import needs, run_benchmark, run_streamed_benchmark, streamed_config
from simai_core.workflow.config import StreamedDataConfig, WorkflowConfig

pytestmark = [pytest.mark.mini, pytest.mark.motif6]


def motif6_config(config: pytest.Config, deployment: str, model: str,
                  streamed: StreamedDataConfig | None = None) -> WorkflowConfig:
    """The workflow configuration from the command-line options (reference defaults otherwise)."""

    def opt(name: str) -> Any:
        return config.getoption(name, default=None)

    sim = {"criterion": opt("--simai-criterion"), "min_skill": opt("--simai-min-skill"),
           "tolerance": opt("--simai-tolerance"), "max_steps": opt("--simai-max-steps"),
           "step_time_s": opt("--simai-step-time"), "step_cost": opt("--simai-step-cost"),
           "train_interval": opt("--simai-train-interval")}
    trainer = {"model": {"kind": model}, "window": opt("--simai-window"), "mini_batch": opt("--simai-mini-batch"),
               "epoch_batches": opt("--simai-epoch-batches"), "checkpoint_every": opt("--simai-checkpoint-every")}
    problem = {"size": opt("--simai-problem-size") or "small", "inputs": opt("--simai-inputs")}
    data: dict[str, Any] = {
        "problem": {k: v for k, v in problem.items() if v is not None},
        "simulation": {k: v for k, v in sim.items() if v is not None},
        "trainer": {k: v for k, v in trainer.items() if v is not None},
        "deployment": deployment,
        "streamed_data": streamed.model_dump() if streamed is not None else None,
    }
    if opt("--simai-check-points") is not None:  # "all": every interior point, as the reference
        check = opt("--simai-check-points")
        data["simulation"]["check_points"] = None if check == "all" else check
    if opt("--simai-sim-fraction") is not None:
        data["sim_fraction"] = opt("--simai-sim-fraction")
    return WorkflowConfig.model_validate(data)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("model", ["mlp", "gnn"])
@pytest.mark.parametrize("deployment", ["clustered", "colocated"])
def test_online_training(benchmark, backend, staging, staging_pool, simai_run, simai_profile, pytestconfig,
                         request, tmp_path, deployment, model):
    needs(model)
    cfg = motif6_config(pytestconfig, deployment, model)
    run_benchmark(benchmark, backend, staging_pool, simai_run, simai_profile, pytestconfig, request, tmp_path, cfg,
                  pytestconfig.getoption("--simai-allow-unconverged"))


@pytest.mark.adios2
@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("model", ["mlp", "gnn"])
def test_online_training_streamed(benchmark, staging_pool, simai_run, simai_profile, pytestconfig, request, tmp_path,
                                  model, mode):
    needs(model)
    cfg = streamed_config(motif6_config(pytestconfig, "clustered", model), mode,
                          pytestconfig.getoption("--simai-stream-queue"), simai_profile)
    run_streamed_benchmark(benchmark, pytestconfig.getoption("--simai-stream-control"), staging_pool, simai_run,
                           simai_profile, pytestconfig, request, tmp_path, cfg,
                           pytestconfig.getoption("--simai-allow-unconverged"))
