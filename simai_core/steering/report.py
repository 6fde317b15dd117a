"""The steering motif's figures of merit, computed from a finished run.

Clocks: every time is ``time.time()`` on one node (the steerer and the simulations share it).

* steering latency (per simulation chosen by the learner): from the newest result in the
  model being staged to the chosen simulation running, split exactly into ``read`` (until
  the learner starts fitting: noticing and reading the results), ``fit``, ``choose``,
  ``write`` (the decision's task keys) and ``launch`` (from the tasks written to the
  simulation running);
* launch latency: from the launcher being asked to the simulation running (every launch);
* staleness: at each decision, results already staged but not in the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from simai_core.fom import FomSpec
from simai_core.steering.steerer import SteeringResult

SECONDS = FomSpec(unit="s", better="lower")
STEERING_PARTS = ("read", "fit", "choose", "write", "launch")

STEERING_FOMS: dict[str, FomSpec] = {
    "sims_to_target": FomSpec(unit="simulations", better="lower"),
    "time_to_target_s": SECONDS,
    "throughput_sims_per_s": FomSpec(unit="simulations/s", better="higher"),
    "steering_latency_p50_s": SECONDS,
    "steering_latency_p95_s": SECONDS,
    **{f"steer_{part}_{q}_s": SECONDS for part in STEERING_PARTS for q in ("p50", "p95")},
    "launch_latency_p50_s": SECONDS,
    "launch_latency_p95_s": SECONDS,
    "worker_utilisation_pct": FomSpec(unit="%", better="higher"),
    "ingest_GBps": FomSpec(unit="GB/s", better="higher"),
    "sim_write_latency_p50_s": SECONDS,
    "sim_write_latency_p95_s": SECONDS,
    "staleness_mean": FomSpec(unit="results", better="lower"),
    "staleness_max": FomSpec(unit="results", better="lower"),
    "failed_sims": FomSpec(unit="simulations", better="lower"),
    "best_param_error": FomSpec(unit="normalised", better="lower"),
}
COMPARE_FOMS: dict[str, FomSpec] = {
    "speedup_vs_random": FomSpec(unit="ratio", better="higher"),
    "ai_sims_to_target_median": FomSpec(unit="simulations", better="lower"),
    "random_sims_to_target_median": FomSpec(unit="simulations", better="lower"),
}


def _q(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def steering_samples(result: SteeringResult) -> dict[str, list[float]]:
    """Per chosen simulation (first attempts that started): total latency and its five parts."""
    out: dict[str, list[float]] = {name: [] for name in ("total", *STEERING_PARTS)}
    for decision in result.decisions:
        if decision.trigger_staged is None:
            continue  # the initial design follows no result
        for sim in decision.sims:
            rec = result.sims[sim]
            if rec.attempts > 1 or not rec.started:
                continue
            out["read"].append(decision.fit_start - decision.trigger_staged)
            out["fit"].append(decision.fit_s)
            out["choose"].append(decision.choose_s)
            out["write"].append(decision.write_s)
            out["launch"].append(rec.started - rec.write_end)
            out["total"].append(rec.started - decision.trigger_staged)
    return out


def staleness(result: SteeringResult) -> list[int]:
    """At each decision after the first: results staged before it chose but not in its model."""
    staged = sorted(result.sims[s].staged for s in result.completed)
    return [sum(t <= d.chosen_at for t in staged) - d.model_size for d in result.decisions
            if d.trigger_staged is not None]


def local_foms(result: SteeringResult) -> dict[str, float | list[float]]:
    """This run's FOM values (samples where a FOM is a median), for :func:`simai_core.bench.record.record`."""
    done = [result.sims[s] for s in result.completed]
    makespan = result.end - result.start
    workers = result.config.workers
    out: dict[str, float | list[float]] = {
        "throughput_sims_per_s": len(done) / makespan,
        "worker_utilisation_pct": 100.0 * sum(r.staged - r.started for r in done) / (workers * makespan),
        "failed_sims": float(len(result.failures)),
    }
    if done:
        out["best_param_error"] = result.best_error
        out["ingest_GBps"] = sum(r.read_bytes for r in done) / sum(r.read_s for r in done) / 1e9
        writes = [r.write_s for r in done]
        out["sim_write_latency_p50_s"], out["sim_write_latency_p95_s"] = _q(writes, 50), _q(writes, 95)
        launches = [r.started - r.launched for r in done]
        out["launch_latency_p50_s"], out["launch_latency_p95_s"] = _q(launches, 50), _q(launches, 95)
    if result.reached_after is not None and result.reached_at is not None:
        out["sims_to_target"] = float(result.reached_after)
        out["time_to_target_s"] = result.reached_at - result.start
    samples = steering_samples(result)
    if samples["total"]:
        out["steering_latency_p50_s"], out["steering_latency_p95_s"] = _q(samples["total"], 50), _q(samples["total"], 95)
        for part in STEERING_PARTS:
            out[f"steer_{part}_p50_s"], out[f"steer_{part}_p95_s"] = _q(samples[part], 50), _q(samples[part], 95)
    stale = staleness(result)
    if stale:
        out["staleness_mean"], out["staleness_max"] = float(np.mean(stale)), float(max(stale))
    return out


def outcome(result: SteeringResult) -> dict[str, Any]:
    """What the run ended with, for the ``simai`` block."""
    return {"reached": result.reached, "reason": result.reason, "completed": len(result.completed),
            "sims_to_target": result.reached_after, "budget": result.config.budget,
            "best_param_error": result.best_error, "tolerance": result.config.tolerance,
            "failures": result.failures, "cancelled_at_stop": result.cancelled,
            "makespan_s": result.end - result.start, "decisions": len(result.decisions)}
