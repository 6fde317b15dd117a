"""Predicted against measured: each motif-6 mini benchmark of a run, predicted from a micro run of the same machine.

The prediction takes from the mini benchmark only what staging does not decide: its
parameters (problem, model, sync interval, step time, ranks), the steps it ran, the
epochs the trainer trained and how many checkpoints reached the simulation (from the
events sidecar when there is one, else ``min(sync steps, epochs / checkpoint_every)``).
Every cost comes from the micro run. Measured traffic per sync step is, per rank, the
category's share (``sim_data_pct``...) times that rank's wall time, over the sync steps,
averaged over the component's ranks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from simai_core.predict.estimate import COMPONENTS, Contention, Prediction, predict
from simai_core.predict.model import CostModel, backends, cost_model
from simai_core.predict.workflow import shape, sync_steps
from simai_core.report.loading import Bench, ReportInputError, Run
from simai_core.workflow.config import WorkflowConfig
from simai_core.workflow.timers import TRAFFIC

WALL = {"sim": "time_to_solution_s", "train": "trainer_time_s"}


def workflow_config(bench: Bench) -> WorkflowConfig:
    """The workflow configuration a mini benchmark ran with, from its ``params``."""
    p = bench.params
    try:
        return WorkflowConfig.model_validate({
            "problem": {"size": p["problem_size"], "inputs": p.get("problem_inputs", "well_posed")},
            "simulation": {"train_interval": p["train_interval"], "step_time_s": p["step_time_s"]},
            "trainer": {"model": {"kind": p["model"]}, "checkpoint_every": p.get("checkpoint_every", 10),
                        "mini_batch": p.get("mini_batch"), "epoch_batches": p.get("epoch_batches")},
            "deployment": bench.simai.deployment if bench.simai and bench.simai.deployment else "clustered",
            "sim_fraction": p.get("sim_fraction", 0.5)})
    except (KeyError, ValueError) as exc:
        raise ReportInputError(f"benchmark {bench.name!r}: params do not describe a motif-6 workflow ({exc})") from None


def _fom(bench: Bench, name: str) -> float:
    fom = bench.foms.get(name)
    if fom is None:
        raise ReportInputError(f"benchmark {bench.name!r} has no FOM {name!r}")
    return fom.value


def _per_rank(bench: Bench, name: str) -> list[float]:
    fom = bench.foms.get(name)
    if fom is None:
        return []
    return list(fom.samples) if fom.samples and fom.samples_layout == "ranks" else [fom.value]


def measured_traffic_s(bench: Bench, component: str, category: str | None, n_sync: int) -> float | None:
    """Measured traffic seconds per rank per sync step: share x wall time per rank, over the sync steps, mean over ranks."""
    walls = _per_rank(bench, WALL[component])
    cats = TRAFFIC if category is None else (category,)
    shares = [_per_rank(bench, f"{component}_{c}_pct") for c in cats]
    if not walls or any(len(s) != len(walls) for s in shares):
        return None
    per_rank = [sum(s[i] for s in shares) / 100.0 * walls[i] for i in range(len(walls))]
    return sum(per_rank) / len(per_rank) / n_sync


def checkpoint_fetches(run: Run, bench: Bench, n_sync: int, epochs: float, every: int) -> float:
    """Checkpoints fetched per simulation rank: from the events sidecar, else bounded by the epochs trained."""
    path = run.events_path(bench)
    if path is not None and path.is_file():
        per_rank: dict[int, int] = {}
        with path.open() as f:
            for line in f:
                e = json.loads(line)
                if e.get("component") == "sim" and e.get("kind") == "checkpoint" and e.get("what") == "fetch":
                    per_rank[e["rank"]] = per_rank.get(e["rank"], 0) + 1
        sims = bench.params.get("sim_ranks") or max(len(per_rank), 1)
        return sum(per_rank.values()) / sims
    return float(min(n_sync, int(epochs) // every))


@dataclass
class CheckResult:
    """One mini benchmark: its prediction and the measured figures it is checked against."""

    bench: Bench
    prediction: Prediction
    measured: dict[tuple[str, str], float | None]  # (component, category or 'traffic') -> seconds per sync step

    def rows(self) -> list[tuple[str, str, float, float | None]]:
        """(component, figure, predicted, measured) in seconds per sync step, then overhead %, time to solution."""
        out: list[tuple[str, str, float, float | None]] = []
        for comp in COMPONENTS:
            for cat in (*TRAFFIC, "traffic"):
                pred = self.prediction.traffic_s(comp, None if cat == "traffic" else cat)
                out.append((comp, f"{cat} s/sync", pred, self.measured[(comp, cat)]))
            share = self.bench.foms.get(f"{comp}_overhead_pct")
            out.append((comp, "overhead %", self.prediction.overhead_pct(comp), share.value if share else None))
        out.append(("sim", "time to solution s", self.prediction.time_to_solution_s,
                    _fom(self.bench, "time_to_solution_s")))
        return out

    def error(self, component: str, category: str = "traffic") -> float | None:
        """Relative error (predicted - measured) / measured of one traffic figure per sync step."""
        meas = self.measured[(component, category)]
        pred = self.prediction.traffic_s(component, None if category == "traffic" else category)
        return (pred - meas) / meas if meas else None


def check_bench(run: Run, bench: Bench, model: CostModel, contention: Contention = "node") -> CheckResult:
    """Predict one mini benchmark from ``model`` and collect its measured figures."""
    cfg = workflow_config(bench)
    n_sync = sync_steps(int(_fom(bench, "steps")), cfg.simulation.train_interval)
    epochs = _fom(bench, "epochs")
    every = cfg.cadence().checkpoint_every
    fetches = checkpoint_fetches(run, bench, n_sync, epochs, every)
    world = bench.world_size or 1
    ranks = world if world > 1 else 2  # serial: the simulation here, the trainer as a second process
    s = shape(cfg, ranks, fetches_per_sync=fetches / n_sync, epochs_per_sync=epochs / n_sync)
    pred = predict(model, s, n_sync, steps=int(_fom(bench, "steps")), contention=contention)
    measured = {(comp, cat): measured_traffic_s(bench, comp, None if cat == "traffic" else cat, n_sync)
                for comp in COMPONENTS for cat in (*TRAFFIC, "traffic")}
    return CheckResult(bench, pred, measured)


def mini_benches(run: Run) -> list[Bench]:
    """The run's motif-6 workflow benchmarks on a staging backend (streamed ones excluded: no stream model)."""
    return [b for b in run.benches if b.level == "mini" and b.simai is not None and b.simai.motif == "motif6"
            and b.base_name == "test_online_training"]


def check_runs(mini: Run, micro: Sequence[Run], contention: Contention = "node") -> list[CheckResult]:
    """Every mini benchmark of ``mini``, checked against the ``micro`` runs' model of its backend and problem size.

    (:func:`~simai_core.predict.model.cost_model`: the problem size picks the ``busy_warm`` runs.)
    """
    benches = mini_benches(mini)
    if not benches:
        raise ReportInputError(f"{mini.label}: no motif-6 mini benchmark (test_online_training) in it")
    missing = sorted({b.backend or "" for b in benches} - set(backends(micro)))
    if missing:
        raise ReportInputError(f"the micro run(s) did not measure {', '.join(missing)}; run the micro benchmarks on it")
    models: dict[tuple[str, str], CostModel] = {}
    results = []
    for b in benches:
        key = (b.backend or "", str(b.params["problem_size"]))
        if key not in models:  # one model per backend and size, however many benchmarks share it
            models[key] = cost_model(micro, *key)
        results.append(check_bench(mini, b, models[key], contention))
    return results


def _err(pred: float, meas: float | None) -> str:
    return f"{100 * (pred - meas) / meas:+.0f} %" if meas else "-"


def check_table(results: Sequence[CheckResult]) -> Table:
    """Predicted against measured, per benchmark, component and category."""
    table = Table(title="predicted vs measured (traffic per component rank and sync step)")
    for name in ("benchmark", "component", "figure", "predicted", "measured", "error"):
        table.add_column(name, justify="left" if name in ("benchmark", "component", "figure") else "right")
    for res in results:
        p = res.bench.params
        label = (f"{res.bench.backend} {p.get('problem_size')} {p.get('model')} {res.bench.world_size} ranks, "
                 f"{res.prediction.sync_steps} syncs")
        for comp, fig, pred, meas in res.rows():
            scale = 1e3 if fig.endswith("s/sync") else 1.0
            unit_fig = fig.replace("s/sync", "ms/sync")
            table.add_row(label, comp, unit_fig, f"{pred * scale:.3f}", "-" if meas is None else f"{meas * scale:.3f}",
                          _err(pred, meas))
            label = ""
    return table


@dataclass
class Repeats:
    """Several runs of one mini benchmark (one command run again): each run's prediction and measured figures."""

    label: str
    results: list[CheckResult]

    def figure(self, component: str, category: str) -> tuple[float, list[float]]:
        """Mean predicted seconds per sync step, and each run's measured ones (runs without the figure left out)."""
        cat = None if category == "traffic" else category
        predicted = sum(r.prediction.traffic_s(component, cat) for r in self.results) / len(self.results)
        measured = [m for r in self.results if (m := r.measured[(component, category)]) is not None]
        return predicted, measured


def repeats(results: Sequence[CheckResult]) -> list[Repeats]:
    """``results`` grouped by benchmark: its name, problem size, world size and deployment, in first-seen order."""
    groups: dict[tuple[object, ...], Repeats] = {}
    for res in results:
        b = res.bench
        key = (b.name, b.params.get("problem_size"), b.world_size, b.simai.deployment if b.simai else None)
        label = f"{b.backend} {b.params.get('problem_size')} {b.params.get('model')} {b.world_size} ranks"
        groups.setdefault(key, Repeats(label, [])).results.append(res)
    return list(groups.values())


def repeats_table(groups: Sequence[Repeats], within_pct: float) -> Table:
    """Per benchmark and figure: the mean prediction against the measured mean, its range, and the runs it is within."""
    table = Table(title="predicted vs measured over repeated runs (traffic per component rank and sync step, ms)")
    for name in ("benchmark", "runs", "component", "figure", "predicted", "measured mean", "measured range",
                 "error of mean", f"runs within {within_pct:g} %"):
        table.add_column(name, justify="left" if name in ("benchmark", "component", "figure") else "right")
    for group in groups:
        label = group.label
        for comp in COMPONENTS:
            for cat in (*TRAFFIC, "traffic"):
                pred, meas = group.figure(comp, cat)
                mean = sum(meas) / len(meas) if meas else None
                near = sum(abs(pred - m) <= within_pct / 100 * m for m in meas)
                table.add_row(label, str(len(group.results)) if label else "", comp, cat, f"{pred * 1e3:.3f}",
                              "-" if mean is None else f"{mean * 1e3:.3f}",
                              f"{min(meas) * 1e3:.3f}..{max(meas) * 1e3:.3f}" if meas else "-", _err(pred, mean),
                              f"{near} of {len(meas)}")
                label = ""
    return table


def render_check(results: Sequence[CheckResult], console: Console, within_pct: float = 30.0) -> None:
    """The comparison table (runs of one benchmark repeated: per benchmark over its runs), then the model's warnings."""
    groups = repeats(results)
    if len(groups) < len(results):
        console.print(repeats_table(groups, within_pct))
    else:
        console.print(check_table(results))
    seen: list[str] = []
    for res in results:
        seen.extend(w for w in res.prediction.warnings if w not in seen)
    for warning in seen:
        console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    console.print("not modelled: coupling compute (inference, checkpoint load, graph build) and waits, so time to "
                  "solution is under- and overhead % over-predicted by their share", markup=False, highlight=False,
                  soft_wrap=True)
