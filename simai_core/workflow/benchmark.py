"""What the motif-6 benchmarks (mini and full) share: running the workflow in a benchmark, recording it, checking it.

The benchmark files stay thin: they build a :class:`~simai_core.workflow.config.WorkflowConfig`
from their options and call :func:`run_benchmark` / :func:`run_streamed_benchmark`, which
run the workflow once (``rounds=1``: a run is minutes long and identical on every rank),
write the event sidecar, record the FOMs (the full level adds the solver's, the trainer's
rates and the combined figure) and fail a run that did not converge or whose accounting
has a gap.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from simai_core import mpi
from simai_core.bench.record import record
from simai_core.events import write_events
from simai_core.fom import Fom, RankSpread, RunInfo
from simai_core.staging import registry
from simai_core.workflow.config import StreamedDataConfig, WorkflowConfig
from simai_core.workflow.driver import WorkflowResult, colocated_address, run_workflow
from simai_core.workflow.report import COMBINED_SPEC, COMBINED_TERMS, FULL_FOMS, MOTIF6_FOMS, combined_rate

# Per-rank accounting must explain the wall time up to this share.
MAX_UNACCOUNTED_PCT = 2.0


def write_sidecar(config: pytest.Config, nodeid: str, result: WorkflowResult, tmp_path: Path) -> str:
    """Write the events next to the benchmark JSON (rank 0); returns the path the JSON refers to."""
    json_path = getattr(config.option, "benchmark_json", None)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("::")[-1]).strip("_") + ".events.jsonl"
    if json_path:
        path = Path(json_path).with_name(f"{Path(json_path).stem}.{name}")
        reference = path.name  # relative to the JSON
    else:
        path = tmp_path / name
        reference = str(path)
    if mpi.rank() == 0:
        write_events(path, result.events())
    return reference


def needs(model: str, solver: str = "mock") -> None:
    """Skip with the reason when the workflow's optional dependencies are missing."""
    pytest.importorskip("torch")
    pytest.importorskip("mpipartition")
    if model == "gnn":
        pytest.importorskip("torch_geometric")
    if solver == "acoustic":
        pytest.importorskip("devito", reason="the full level's solver needs devito (pip install -e '.[full]')")


def problem_params(cfg: WorkflowConfig) -> dict[str, Any]:
    """What the producer is, for ``params`` (the mock's problem, or the solver's settings)."""
    if cfg.simulation.solver == "acoustic":
        from simai_core.solvers.acoustic import SAMPLE_FIELDS
        from simai_core.solvers.config import acoustic_size

        size = acoustic_size(cfg.problem.size)
        return {"problem_size": cfg.problem.size, "solver": "acoustic", "tile": list(size.tile),
                "points_per_rank": size.n_points, "sample_fields": list(SAMPLE_FIELDS),
                "acoustic": cfg.simulation.acoustic.model_dump(mode="json")}
    from simai_core.workflow.problem import problem_spec

    spec = problem_spec(cfg.problem.size)
    return {"problem_size": cfg.problem.size, "problem_inputs": cfg.problem.inputs,
            "problem_fields": list(spec.input_fields(cfg.problem.inputs)),
            "differs_from_reference": spec.differences(cfg.problem.inputs),
            "step_time_s": cfg.simulation.step_time_s, "step_cost": cfg.simulation.step_cost}


def run_benchmark(benchmark: Any, backend: str, staging_pool: Any, simai_run: Any, simai_profile: Any,
                  config: pytest.Config, request: pytest.FixtureRequest, tmp_path: Path, cfg: WorkflowConfig,
                  allow_unconverged: bool) -> dict[str, Fom]:
    """Run the workflow once on ``backend`` in ``cfg.deployment`` and record it."""
    world = mpi.world()
    shared = staging_pool.address(backend)
    deployment = cfg.deployment
    dragon_ranks = config.getoption("--simai-dragon-ranks") if backend == "dragon" else None

    def run_once() -> WorkflowResult:
        if dragon_ranks:  # ranks of an mpiexec the Dragon runtime starts, on the session's DDict
            from simai_core.staging.dragon_mpi import run_workflow as run_on_dragon_ranks

            return run_on_dragon_ranks(cfg, shared, dragon_ranks, tmp_path, profile_backend=simai_profile.ddp_backend)
        scope = (colocated_address(backend, shared, world, simai_profile, tmp_path) if deployment == "colocated"
                 else nullcontext(shared))
        with scope as address:
            return run_workflow(cfg, backend, address, tmp_path, world=world, profile_backend=simai_profile.ddp_backend)

    result = benchmark.pedantic(run_once, rounds=1, iterations=1)
    size = {"world_size": result.world_size} if dragon_ranks else {}
    return record_workflow(benchmark, config, request, tmp_path, cfg, result,
                           lambda params, **extra: simai_run(backend, params, deployment=deployment, **extra, **size),
                           allow_unconverged)


def streamed_config(cfg: WorkflowConfig, mode: str, queue_limit: int, simai_profile: Any) -> WorkflowConfig:
    """``cfg`` with its samples sent over ADIOS2 SST streams (clustered)."""
    staging = simai_profile.staging
    streamed = StreamedDataConfig(mode=mode, queue_limit=queue_limit, network_interface=staging.network_interface,
                                  data_plane=staging.stream_data_plane,
                                  directory=str(staging.shared_path / "streams") if staging.shared_path else None)
    return cfg.model_copy(update={"streamed_data": streamed, "deployment": "clustered"})


def run_streamed_benchmark(benchmark: Any, control: str, staging_pool: Any, simai_run: Any, simai_profile: Any,
                           config: pytest.Config, request: pytest.FixtureRequest, tmp_path: Path,
                           cfg: WorkflowConfig, allow_unconverged: bool) -> dict[str, Fom]:
    """Run the workflow once with its samples over SST streams, control keys on ``control``, and record it."""
    from simai_core.streaming.adios2_setup import unavailable_reason

    for reason in (unavailable_reason(), registry.unavailable_reason(control)):
        if reason is not None:
            pytest.skip(reason)
    staging_pool.client(control)  # starts the control server (collective)
    address = staging_pool.address(control)
    result = benchmark.pedantic(run_workflow, args=(cfg, control, address, tmp_path),
                                kwargs={"world": mpi.world(), "profile_backend": simai_profile.ddp_backend},
                                rounds=1, iterations=1)

    def run_info(params: dict[str, Any], **extra: Any) -> RunInfo:
        detail = {**params.pop("data_path", {}), "control_backend": control,
                  "control_detail": staging_pool.detail(control)}
        run: RunInfo = simai_run(control, params, deployment="clustered", **extra)
        return run.model_copy(update={"backend": "adios2", "backend_detail": detail})

    foms = record_workflow(benchmark, config, request, tmp_path, cfg, result, run_info, allow_unconverged)
    assert cfg.streamed_data is not None
    if cfg.streamed_data.mode == "sync":
        assert foms["discarded_steps"].value == 0, "a sync stream lost steps"
    return foms


def _combined(result: WorkflowResult) -> tuple[dict[str, Fom], dict[str, Any]]:
    """The combined figure (the same on every rank: it comes from every rank's report) and its terms."""
    rates = combined_rate(result.reports)
    if rates is None:
        return {}, {"combined_terms": COMBINED_TERMS}
    value = rates["combined"]
    fom = Fom(value=value, unit=COMBINED_SPEC.unit, better=COMBINED_SPEC.better,
              ranks=RankSpread(min=value, mean=value, max=value), samples=[value], samples_layout="rounds")
    return {"combined_rate": fom}, {"combined_terms": COMBINED_TERMS,
                                    "combined_values": {k: rates[k] for k in COMBINED_TERMS}}


def record_workflow(benchmark: Any, config: pytest.Config, request: pytest.FixtureRequest, tmp_path: Path,
                    cfg: WorkflowConfig, result: WorkflowResult, run_info: Any,
                    allow_unconverged: bool) -> dict[str, Fom]:
    """Record a finished run's FOMs (``run_info(params, **extra)`` builds its ``simai`` block) and check it."""
    result.raise_for_errors()
    outcome = result.outcome
    events = write_sidecar(config, request.node.nodeid, result, tmp_path)
    sim = cfg.simulation
    model = cfg.trainer.model
    params = {**problem_params(cfg), "model": cfg.model_kind, "residual": getattr(model, "residual", None),
              "criterion": sim.criterion, "min_skill": sim.min_skill if sim.criterion == "skill" else None,
              "tolerance": sim.tolerance if sim.criterion == "mse" else None,
              "check_points": sim.check_points,
              "check_patch_points": sim.check_patch_points if cfg.model_kind == "gnn" else None,
              "train_interval": sim.train_interval, "sim_fraction": cfg.sim_fraction, "window": cfg.trainer.window,
              **asdict(cfg.cadence()), **result.detail()}
    extra: dict[str, Any] = {"outcome": outcome.model_dump(), "events": events}
    if cfg.streamed_data is not None:
        extra["stream"] = result.stream_counts()
    full = sim.solver != "mock"
    measured: dict[str, Fom] = {}
    if full:
        measured, extra["combined"] = _combined(result)
        sim0 = next(r for r in result.reports if r.component == "sim")
        extra["solver"] = {k: sim0.detail[k] for k in ("global_shape", "topology", "dt_ms", "cfl_limit_ms", "sources",
                                                 "compile_cache", "compile_cache_dir")
                           if k in sim0.detail}
    elsewhere = result.mode == "mpi" and result.world_size != mpi.size()  # ranks a Dragon runtime started
    foms = record(benchmark, run_info(params, **extra), result.local_foms(), FULL_FOMS if full else MOTIF6_FOMS,
                  measured=measured, ranks=result.per_rank_foms() if elsewhere else None)
    check_run(foms, outcome, allow_unconverged)
    return foms


def check_run(foms: dict[str, Fom], outcome: Any, allow_unconverged: bool) -> None:
    """Fail an accounting gap, an unconverged run (unless allowed), and a "converged" run that never beat persistence."""
    for name in ("sim_unaccounted_pct", "train_unaccounted_pct"):
        assert foms[name].ranks.max < MAX_UNACCOUNTED_PCT, f"{name} = {foms[name].ranks.max:.2f} % (accounting gap)"
    if not outcome.converged and not allow_unconverged:
        pytest.fail(f"the surrogate did not converge: stopped by {outcome.reason} after {outcome.steps} steps, "
                    f"final skill {outcome.skill}, final MSE {outcome.final_mse} (criterion {outcome.criterion}; use "
                    "the allow-unconverged option to record such runs without failing)")
    if outcome.converged:  # whatever the criterion, a converged surrogate beats predicting no change
        assert outcome.skill is not None and outcome.skill > 0, f"converged with skill {outcome.skill}"
        assert foms["final_skill"].value > 0
