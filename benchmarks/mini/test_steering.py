"""Steering mini benchmark: an AI learner chooses the next simulations of a running ensemble.

``test_steering`` runs one whole steered ensemble per backend x launcher x mode (x policy,
``--simai-steering-policies``; AI by default) on seed ``--simai-steering-seeds``'s first:
MPI diffusion solves whose sensor readings are fitted against observations made from hidden
parameters, until the best parameters found are within ``--simai-steering-tolerance`` of the
hidden ones (the target) or the budget is spent. ``test_steering_vs_random`` runs the AI and
the random policy on the same budget and seeds (pool launcher, streaming) and records the
speed-up, the medians over the seeds and every seed's outcome.

Under ``mpiexec -n N`` rank 0 steers; with the pool launcher, ranks ``1..W x R`` are the
persistent workers (with fewer ranks, or serially, the pool is one ``mpiexec`` started for the
run); the other ranks wait. The dragon backend runs serially, its simulations as Dragon processes: the
pool is one Dragon ``ProcessGroup``, the dragon launcher a Dragon ``Process`` per simulation; mpiexec and
smartsim run on every other backend.
"""

from __future__ import annotations

import statistics
import uuid
from typing import Any

import pytest

from simai_core import mpi
from simai_core.bench.record import record
from simai_core.sizes import parse_size
from simai_core.steering.collective import run_collective
from simai_core.steering.config import SteeringConfig
from simai_core.steering.report import COMPARE_FOMS, STEERING_FOMS, local_foms, outcome
from simai_core.steering.steerer import SteeringResult

pytestmark = [pytest.mark.mini, pytest.mark.steering]
pytest.importorskip("sklearn")


def steering_config(config: pytest.Config, launcher: str, mode: str, policy: str, seed: int | None = None
                    ) -> SteeringConfig:
    """The run's configuration from the command-line options."""

    def opt(name: str) -> Any:
        return config.getoption(f"--simai-steering-{name}")

    seeds = [int(s) for s in opt("seeds").split(",")]
    return SteeringConfig(run_id=uuid.uuid4().hex[:12], launcher=launcher, mode=mode, policy=policy,
                          workers=int(opt("workers")), ranks_per_sim=int(opt("ranks-per-sim")),
                          budget=int(opt("budget")), seed=seeds[0] if seed is None else seed,
                          tolerance=float(opt("tolerance")), field_bytes=parse_size(opt("field-size")),
                          deadline_s=float(opt("deadline")))


def skip_unsupported(backend: str, launcher: str) -> None:
    """The dragon backend's clients must be Dragon processes; the dragon launcher needs that backend's runtime."""
    if launcher not in (("pool", "dragon") if backend == "dragon" else ("pool", "mpiexec", "smartsim")):
        pytest.skip(f"launcher {launcher} does not run on backend {backend}: the dragon backend's simulations must be "
                    "Dragon processes (pool: a ProcessGroup; dragon: a Process each), and the dragon launcher needs "
                    "that backend's runtime")


def params_of(cfg: SteeringConfig, result: SteeringResult | None) -> dict[str, Any]:
    """The ``params`` block: the configuration and how simulations were launched."""
    params = cfg.model_dump(exclude={"run_id", "fail", "release_after_s"})
    if result is not None:
        params["launcher_detail"] = result.launcher_detail
    return params


@pytest.mark.timeout(900)
def test_steering(benchmark, backend, staging, staging_pool, simai_run, pytestconfig, tmp_path,
                  steering_launcher, steering_mode, steering_policy):
    skip_unsupported(backend, steering_launcher)
    cfg = steering_config(pytestconfig, steering_launcher, steering_mode, steering_policy)
    address = staging_pool.address(backend)
    holder: list[SteeringResult | None] = []
    benchmark.pedantic(lambda: holder.append(run_collective(cfg, staging, backend, address, tmp_path)),
                       rounds=1, iterations=1)
    result = holder[0]
    local = local_foms(result) if result is not None else {}
    extra = {"outcome": outcome(result)} if result is not None else {}
    run = simai_run(backend, params_of(cfg, result), **extra)
    record(benchmark, run, local, STEERING_FOMS)
    if result is None:
        return
    assert len(set(result.completed)) == len(result.completed), "a result was ingested twice"
    if cfg.policy == "ai" and not result.reached and not pytestconfig.getoption("--simai-steering-allow-unreached"):
        pytest.fail(f"the steered run did not reach the target: stopped by {result.reason} after "
                    f"{len(result.completed)} simulations, best parameter error {result.best_error:.3f} "
                    f"(tolerance {cfg.tolerance}); use --simai-steering-allow-unreached to record it without failing")


@pytest.mark.timeout(1800)
def test_steering_vs_random(benchmark, backend, staging, staging_pool, simai_run, pytestconfig, tmp_path):
    launcher = "pool"
    if launcher not in pytestconfig.getoption("--simai-steering-launchers").split(","):
        pytest.skip("the comparison runs on the pool launcher, not selected by --simai-steering-launchers")
    seeds = [int(s) for s in pytestconfig.getoption("--simai-steering-seeds").split(",")]
    address = staging_pool.address(backend)
    runs: dict[str, list[SteeringResult | None]] = {"ai": [], "random": []}

    def compare() -> None:
        for seed in seeds:
            for policy in ("ai", "random"):
                cfg = steering_config(pytestconfig, launcher, "streaming", policy, seed)
                runs[policy].append(run_collective(cfg, staging, backend, address, tmp_path / f"{policy}{seed}"))

    benchmark.pedantic(compare, rounds=1, iterations=1)
    cfg = steering_config(pytestconfig, launcher, "streaming", "ai")
    params = {**params_of(cfg, None), "seeds": seeds, "policies": ["ai", "random"]}
    if mpi.rank() != 0:
        record(benchmark, simai_run(backend, params), {}, COMPARE_FOMS)
        return
    ai, rnd = [_effective(r) for r in runs["ai"]], [_effective(r) for r in runs["random"]]
    local: dict[str, Any] = {"ai_sims_to_target_median": [v for v, _ in ai],
                             "random_sims_to_target_median": [v for v, _ in rnd],
                             "speedup_vs_random": statistics.median(v for v, _ in rnd) / statistics.median(v for v, _ in ai)}
    per_seed = {policy: [outcome(r) for r in rs if r is not None] for policy, rs in runs.items()}
    comparison = {"random_lower_bound": any(not ok for _, ok in rnd),
                  "rule": "unreached runs count as the budget, so the speed-up is a lower bound when random_lower_bound",
                  "ai_reached": sum(ok for _, ok in ai), "random_reached": sum(ok for _, ok in rnd),
                  "seeds": len(seeds)}
    run = simai_run(backend, params, outcome=per_seed, comparison=comparison)
    foms = record(benchmark, run, local, COMPARE_FOMS)
    assert comparison["ai_reached"] > len(seeds) / 2, f"the steered runs reached the target in {ai} of {seeds}"
    assert foms["speedup_vs_random"].value > 1.0, f"steering needed no fewer simulations than random: {ai} vs {rnd}"


def _effective(result: SteeringResult | None) -> tuple[float, bool]:
    """Simulations to target, or the budget when not reached (with whether it was reached)."""
    assert result is not None
    if result.reached_after is not None:
        return float(result.reached_after), True
    return float(result.config.budget), False
