"""Synthetic but realistic benchmark runs in the suite's JSON schema, for tests and demos.

Micro runs model a put/get sweep as ``latency = overhead + nbytes / bandwidth`` per backend;
mini runs carry an overhead breakdown, an outcome and an events sidecar. :func:`with_samples`
gives every FOM (and the round times) samples scattered around its value, as the suite
records them, for the regression gate's tests.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from simai_core.events import write_events
from simai_core.sizes import format_size

# backend -> (per-operation overhead in s, bandwidth in GB/s)
BACKENDS = {"filesystem": (80e-6, 2.0), "redis": (40e-6, 1.2)}
SIZES = (1024, 16 * 1024, 256 * 1024, 4 * 2**20, 64 * 2**20)
MEMCPY_GBPS = 10.0
OVERHEADS = ("meta", "data", "checkpoint", "inference", "unaccounted")


def fom(value: float, unit: str, better: str, spread: float = 0.0) -> dict[str, Any]:
    """A FOM record; ``spread`` is the relative half-width of the rank spread around the value."""
    lo, hi = value * (1 - spread), value * (1 + spread)
    return {"value": value, "unit": unit, "better": better, "ranks": {"min": min(lo, hi), "mean": value, "max": max(lo, hi)}}


def stats(median: float, rounds: int = 20, scatter: float = 0.02) -> dict[str, Any]:
    """pytest-benchmark round statistics (seconds) around ``median`` with relative scatter."""
    iqr, sd = 2 * scatter * median, 1.5 * scatter * median
    return {"min": median * (1 - 3 * scatter), "max": median * (1 + 5 * scatter), "mean": median * (1 + scatter / 2),
            "stddev": sd, "rounds": rounds, "median": median, "iqr": iqr, "q1": median - iqr / 2,
            "q3": median + iqr / 2, "iqr_outliers": 0, "stddev_outliers": 1, "outliers": "1;0",
            "ld15iqr": median * (1 - 3 * scatter), "hd15iqr": median * (1 + 3 * scatter),
            "ops": 1 / median, "total": median * rounds, "iterations": 1}


def bench(test: str, ident: str, simai: dict[str, Any], foms: dict[str, Any], median: float,
          rounds: int = 20, module: str = "benchmarks/test_micro.py") -> dict[str, Any]:
    """One pytest-benchmark entry with the simai ``extra_info`` blocks."""
    base: dict[str, Any] = {"schema": 1, "motif": None, "backend_detail": {}, "deployment": None, "world_size": 2,
            "machine": "local", "params": {}}
    return {"group": None, "name": f"{test}[{ident}]", "fullname": f"{module}::{test}[{ident}]",
            "params": {"case": ident}, "param": ident, "options": {"timer": "perf_counter"},
            "stats": stats(median, rounds), "extra_info": {"simai": {**base, **simai}, "fom": foms}}


def run_doc(benchmarks: Iterable[dict[str, Any]], node: str = "node-a", profile: str = "local") -> dict[str, Any]:
    """A whole pytest-benchmark JSON document around some benchmarks."""
    return {
        "machine_info": {"node": node, "processor": "x86_64", "machine": "x86_64", "python_version": "3.11.2",
                         "system": "Linux", "cpu": {"brand_raw": "Example CPU @ 2.0GHz"},
                         "simai": {"profile": profile, "memcpy_GBps": MEMCPY_GBPS}},
        "commit_info": {"id": "0123456789abcdef", "dirty": False, "branch": "main"},
        "benchmarks": list(benchmarks),
        "datetime": "2024-05-01T12:00:00.000000+00:00",
        "version": "5.1.0",
    }


def micro_bench(backend: str, op: str, nbytes: int, scale: float = 1.0) -> dict[str, Any]:
    """A put or get benchmark of one backend and message size; ``scale`` multiplies the latency."""
    overhead, gbps = BACKENDS[backend]
    latency = (overhead + nbytes / (gbps * 1e9)) * scale * (0.8 if op == "get" else 1.0)
    rate = nbytes / latency / 1e9
    foms = {f"{op}_latency_s": fom(latency, "s", "lower", 0.03),
            f"{op}_GBps": fom(2 * rate, "GB/s", "higher"),  # sum over 2 ranks
            f"{op}_vs_raw": fom(rate / MEMCPY_GBPS, "ratio", "higher", 0.03)}
    simai = {"level": "micro", "motif": "put_get", "backend": backend, "params": {"nbytes": nbytes, "op": op}}
    return bench("test_put_get", f"{backend}-{op}-{format_size(nbytes)}", simai, foms, latency)


def micro_run(backends: Iterable[str] = ("filesystem", "redis"), sizes: Iterable[int] = SIZES,
              ops: Iterable[str] = ("put", "get"), **doc: Any) -> dict[str, Any]:
    """A micro put/get sweep over backends, ops and sizes."""
    sizes, ops = list(sizes), list(ops)
    return run_doc([micro_bench(b, op, n) for b in backends for op in ops for n in sizes], **doc)


def mini_bench(backend: str, deployment: str, model: str, events: str | None = None) -> dict[str, Any]:
    """A mini workflow benchmark with its overhead breakdown (% of each component's wall time)."""
    weight = {"filesystem": 1.5, "redis": 1.0}.get(backend, 1.0) * (1.3 if deployment == "clustered" else 1.0)
    pcts = {"meta": 1.5, "data": 6.0, "checkpoint": 3.0, "inference": 4.0, "wait": 2.0, "unaccounted": 0.8}
    foms = {f"{comp}_{k}_pct": fom(v * weight * (0.7 if comp == "train" else 1.0), "%", "lower", 0.1)
            for comp in ("sim", "train") for k, v in pcts.items()}
    for comp in ("sim", "train"):  # as the suite reports them: the coupling total and the compute share
        parts = [foms[f"{comp}_{k}_pct"]["value"] for k in ("meta", "data", "checkpoint", "inference")]
        foms[f"{comp}_overhead_pct"] = fom(sum(parts), "%", "lower")
        foms[f"{comp}_compute_pct"] = fom(100 - sum(f["value"] for k, f in foms.items()
                                                 if k.startswith(comp) and not k.endswith("overhead_pct")), "%", "lower")
    foms["workflow_s"] = fom(4.0 * weight, "s", "lower")
    foms["final_skill"] = fom(0.6, "ratio", "higher", 0.05)
    simai = {"level": "mini", "motif": "sim_train", "backend": backend, "deployment": deployment,
             "params": {"model": model, "problem": "heat2d", "deployment": deployment},
             "outcome": {"converged": True, "reason": "mse below tolerance", "final_mse": 2e-4, "tolerance": 1e-3}}
    if events:
        simai["events"] = events
    return bench("test_sim_train", f"{backend}-{deployment}-{model}", simai, foms, 4.0 * weight, rounds=1,
                 module="benchmarks/test_mini.py")


def mini_events(steps: int = 20, sim_ranks: int = 2) -> list[dict[str, Any]]:
    """Events of a small workflow: sim steps with transfers, checkpoints, inference; train epochs."""
    events = []
    for rank in range(sim_ranks):
        t = 0.0
        for i in range(steps):
            events.append({"component": "sim", "rank": rank, "kind": "step", "t0_s": t, "dt_s": 0.1, "nbytes": None})
            t += 0.1
            for kind, dt, nbytes in (("meta", 0.002, 64), ("data", 0.012, 4 * 2**20)):
                events.append({"component": "sim", "rank": rank, "kind": kind, "t0_s": t, "dt_s": dt, "nbytes": nbytes})
                t += dt
            if i % 3 == 2:
                events.append({"component": "sim", "rank": rank, "kind": "inference", "t0_s": t, "dt_s": 0.02,
                               "nbytes": 2**16})
                t += 0.02
            if i % 5 == 4:
                events.append({"component": "sim", "rank": rank, "kind": "checkpoint", "t0_s": t, "dt_s": 0.05,
                               "nbytes": 16 * 2**20})
                t += 0.05
    t = 0.05
    for epoch in range(8):
        train = {"component": "train", "rank": 0}
        events.append({**train, "kind": "wait", "t0_s": t, "dt_s": 0.04, "nbytes": None})
        events.append({**train, "kind": "epoch", "t0_s": t + 0.04, "dt_s": 0.24, "nbytes": None, "epoch": epoch})
        events.append({**train, "kind": "data", "t0_s": t + 0.04, "dt_s": 0.02, "nbytes": 8 * 2**20})
        events.append({**train, "kind": "compute", "t0_s": t + 0.06, "dt_s": 0.22, "nbytes": None})
        t += 0.3
    return events


def mini_run(directory: Path | None = None, **doc: Any) -> dict[str, Any]:
    """A mini run over backends and deployments; with ``directory``, writes the first one's events sidecar."""
    events = None
    if directory is not None:
        (directory / "events").mkdir(parents=True, exist_ok=True)
        events = "events/mini-redis-colocated.jsonl"
        write_events(directory / events, mini_events())
    benches = [mini_bench("redis", "colocated", "mlp", events), mini_bench("redis", "clustered", "mlp"),
               mini_bench("filesystem", "colocated", "mlp"), mini_bench("filesystem", "colocated", "gnn")]
    return run_doc(benches, **doc)


def worsen(run: dict[str, Any], fom_name: str, pct: float, bench_index: int = 0) -> dict[str, Any]:
    """A copy of ``run`` with one FOM moved ``pct`` percent in its bad direction (negative: better)."""
    out = copy.deepcopy(run)
    f = out["benchmarks"][bench_index]["extra_info"]["fom"][fom_name]
    factor = 1 + pct / 100 if f["better"] == "lower" else 1 - pct / 100
    f["value"] *= factor
    f["ranks"] = {k: v * factor for k, v in f["ranks"].items()}
    if f.get("samples"):
        f["samples"] = [v * factor for v in f["samples"]]
    return out


def scattered(value: float, n: int, scatter: float, seed: int) -> list[float]:
    """``n`` samples normally scattered around ``value`` (relative standard deviation ``scatter``)."""
    rng = np.random.default_rng(seed)
    return [float(v) for v in value * (1 + scatter * rng.standard_normal(n))]


def with_samples(run: dict[str, Any], n: int = 20, scatter: float = 0.02, seed: int = 0) -> dict[str, Any]:
    """A copy of ``run`` whose FOMs and round times carry ``n`` samples each, scattered around their values.

    Each benchmark and FOM draws from its own seed (``seed`` plus its position), so two calls
    with different seeds give two runs from one distribution.
    """
    out = copy.deepcopy(run)
    for i, b in enumerate(out["benchmarks"]):
        for j, f in enumerate(b["extra_info"]["fom"].values()):
            f["samples"] = scattered(f["value"], n, scatter, seed * 100_003 + i * 101 + j)
        b["stats"]["data"] = scattered(b["stats"]["median"], n, scatter, seed * 100_003 + i * 101 + 99)
    return out
