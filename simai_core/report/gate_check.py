"""Measuring the regression gate on real runs of one benchmark command: false alarms and detections.

Given N runs of the same command on the same machine (``simai-bench gate-check RUN...``),
every pair ``(i, j)``, ``i < j``, is compared twice with :func:`compare_runs`, run ``i`` as
the base:

* **as measured**: the runs differ by chance only, so any regression is a *false alarm*;
* **with a synthetic change**: run ``j``'s FOMs and round times (value, rank spread,
  samples, ``stats.data``) moved ``change_pct`` percent in their bad direction (lower-better
  figures times 1.25, higher-better times 0.75 for 25 %). The pair is *detected* when the
  comparison fails (exit 1 of ``simai-bench compare``).

Then, per metric, the change is injected into that metric alone (every other figure as
measured), and the metric counts as detected in that pair when its row is judged worse.
The largest change seen between runs as measured tells which threshold a metric needs.
A metric whose injected change is no larger than its own margin (an absolute floor such as
1 point for a ``%`` FOM near zero) cannot be flagged by design and is counted apart.

**Between-run noise.** :func:`between_run_noise` measures, per metric, how far a run's estimate
moves from run to run beyond what its own blocks explain; ``compare_runs(noise=...)`` then tests
with it instead of the per-pair estimate. ``gate_check(runs, calibrate=k)`` measures it on the
first ``k`` runs and counts false alarms and detections on the pairs of the others only, so that
the rates are not judged on the runs the noise came from.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from simai_core.report.compare import (
    ABS_FLOORS,
    Comparison,
    MetricKey,
    Noise,
    bench_estimates,
    bench_rows,
    compare_runs,
    decide_one,
    make_settings,
    with_event_foms,
)
from simai_core.report.loading import Bench, ReportInputError, Run, parse_run, read_json
from simai_core.report.units import sig

# Round-time statistics that scale with the round times; ``ops`` scales inversely.
_SCALED_STATS = ("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3", "ld15iqr", "hd15iqr", "total")


def _factor(better: str, pct: float) -> float:
    return 1 + pct / 100 if better == "lower" else 1 - pct / 100


def _scale_fom(fom: dict[str, Any], pct: float) -> None:
    k = _factor(fom["better"], pct)
    fom["value"] *= k
    fom["ranks"] = {name: v * k for name, v in fom["ranks"].items()}
    if fom.get("samples"):
        fom["samples"] = [v * k for v in fom["samples"]]


def _scale_stats(stats: dict[str, Any], pct: float) -> None:
    k = _factor("lower", pct)
    for name in _SCALED_STATS:
        if isinstance(stats.get(name), (int, float)):
            stats[name] *= k
    if stats.get("ops"):
        stats["ops"] /= k
    if isinstance(stats.get("data"), list):
        stats["data"] = [v * k for v in stats["data"]]


def inject(run: Run, pct: float, only: MetricKey | None = None) -> Run:
    """A copy of ``run`` with its FOMs and round times (or only the metric ``only``) ``pct`` % worse."""
    data = copy.deepcopy(run.data)
    for bench in data["benchmarks"]:
        name = bench.get("name") or bench.get("fullname")
        foms = (bench.get("extra_info") or {}).get("fom") or {}
        for metric, fom in foms.items():
            if only is None or only == (name, metric):
                _scale_fom(fom, pct)
        if only is None or (only[0] == name and only[1].startswith("time.")):
            _scale_stats(bench["stats"], pct)
    return parse_run(data, label=f"{run.label}{pct:+g}%", path=run.path)


@dataclass
class MetricCount:
    """How often one metric was flagged: as measured (false alarms) and with the change injected alone."""

    false_alarms: int = 0
    detected: int = 0
    pairs: int = 0
    below_margin: int = 0  # pairs where the injected change is within the metric's own margin
    largest_change: float = 0.0  # the largest |change| between runs as measured: % (or the unit, with a floor)
    absolute: bool = False  # largest_change is in the metric's unit, not in %
    allowed: float = 0.0  # what the gate allowed: its threshold in % (or its floor in the unit)


@dataclass
class GateReport:
    """Counts over all pairs of runs."""

    change_pct: float
    pairs: list[tuple[str, str]] = field(default_factory=list)
    false_alarm_pairs: int = 0
    false_improvement_pairs: int = 0
    detected_pairs: int = 0
    metrics: dict[MetricKey, MetricCount] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def metric_detections(self) -> tuple[int, int]:
        """(detected, eligible) over every metric and pair, eligible = the change exceeds the metric's margin."""
        eligible = sum(m.pairs - m.below_margin for m in self.metrics.values())
        return sum(m.detected for m in self.metrics.values()), eligible

    @property
    def target_met(self) -> bool:
        """No false alarm, and at least 90 % of the pairs detected."""
        return self.false_alarm_pairs == 0 and self.detected_pairs >= 0.9 * len(self.pairs)

    def suggestions(self, factor: float = 1.5) -> list[str]:
        """``--fail-on``/``--floor`` options that would have let every measured change through, with room.

        Per FOM name (over benchmarks): ``factor`` times the largest change between the runs as
        measured, where that exceeds what the gate allowed. Five runs see little of the tails, hence the room.
        """
        largest: dict[str, MetricCount] = {}
        for (_, metric), c in self.metrics.items():
            if c.largest_change > c.allowed and c.largest_change >= largest.get(metric, MetricCount()).largest_change:
                largest[metric] = c
        out = []
        for metric, c in sorted(largest.items()):
            if c.absolute:
                out.append(f"--floor '{metric}:{factor * c.largest_change:.2g}'")
            else:
                out.append(f"--fail-on '{metric}:{math.ceil(factor * c.largest_change)}%'")
        return out

    def as_dict(self) -> dict[str, Any]:
        """The counts as plain JSON."""
        detected, eligible = self.metric_detections
        return {"change_pct": self.change_pct, "pairs": len(self.pairs), "false_alarm_pairs": self.false_alarm_pairs,
                "false_improvement_pairs": self.false_improvement_pairs, "detected_pairs": self.detected_pairs,
                "metric_detections": detected, "metric_detections_eligible": eligible,
                "suggestions": self.suggestions(),
                "metrics": {f"{b} {m}": vars(c) for (b, m), c in self.metrics.items()}}

    def render(self, console: Console, all_metrics: bool = False) -> None:
        """The per-metric table (metrics with a false alarm or a miss, or all) and the totals."""
        table = Table(title=Text(f"gate check: {len(self.pairs)} pairs, change {self.change_pct:g} %"),
                      title_justify="left")
        for header in ("benchmark", "metric", "false alarms", "detected alone", "within margin", "largest change"):
            table.add_column(Text(header), justify="left" if header in ("benchmark", "metric") else "right")
        for (bench, metric), c in self.metrics.items():
            if all_metrics or c.false_alarms or c.detected < c.pairs - c.below_margin:
                change = f"{sig(c.largest_change)}" if c.absolute else f"{c.largest_change:.1f} %"
                table.add_row(Text(bench), Text(metric), str(c.false_alarms),
                              f"{c.detected}/{c.pairs - c.below_margin}", str(c.below_margin), change)
        if table.row_count:
            console.print(table)
        for note in self.notes:
            console.print(Text(note, style="yellow"), soft_wrap=True)
        detected, eligible = self.metric_detections
        n = len(self.pairs)
        console.print(Text(
            f"false alarms: {self.false_alarm_pairs} of {n} pairs (false improvements: {self.false_improvement_pairs}); "
            f"detections, every figure {self.change_pct:g} % worse: {self.detected_pairs} of {n} pairs; "
            f"one metric at a time: {detected} of {eligible} (metric, pair) cases",
            style="bold green" if self.target_met else "bold red"), soft_wrap=True)


def _rows_by_key(comp: Comparison) -> dict[MetricKey, Any]:
    return {(r.benchmark, r.metric): r for r in comp.rows}


def inject_bench(bench: Bench, pct: float, metric: str) -> Bench:
    """A copy of one benchmark with only ``metric`` (a FOM, or ``time.*``: the round times) ``pct`` % worse."""
    raw = copy.deepcopy(bench.raw)
    fom = ((raw.get("extra_info") or {}).get("fom") or {}).get(metric)
    if fom is not None:
        _scale_fom(fom, pct)
    elif metric.startswith("time."):
        _scale_stats(raw["stats"], pct)
    return parse_run({"benchmarks": [raw]}).benches[0]


def _check_pair(report: GateReport, base: Run, new: Run, options: dict[str, Any]) -> None:
    measured = compare_runs(base, new, **options)
    if measured.not_comparable:
        why = "; ".join(f"{name}: {reason}" for name, reason in measured.not_comparable[:3])
        report.notes.append(f"{new.label} vs {base.label}: {len(measured.not_comparable)} benchmark(s) not "
                            f"comparable ({why}): not counted")
    report.false_alarm_pairs += bool(measured.regressions)
    report.false_improvement_pairs += bool(measured.improvements)
    report.detected_pairs += bool(compare_runs(base, inject(new, report.change_pct), **options).regressions)
    cfg = make_settings(**options)
    base_benches, new_benches = {b.name: b for b in base.benches}, {b.name: b for b in new.benches}
    for index, row in enumerate(measured.rows):
        if row.status == "n/a" or not row.gating:
            continue
        count = report.metrics.setdefault((row.benchmark, row.metric), MetricCount())
        count.pairs += 1
        count.false_alarms += row.status == "worse"
        count.absolute = row.absolute
        count.allowed = row.floor if row.floor is not None else row.threshold_pct
        change = abs(row.new - row.base) if row.absolute else abs(row.change_pct or 0.0)
        count.largest_change = max(count.largest_change, change)
        if abs(row.new) * report.change_pct / 100 <= row.margin:
            count.below_margin += 1
            continue
        # The metric alone moved: its row is tested anew, Holm's level from the other rows as measured.
        base_name, _, new_name = row.benchmark.partition(" -> ")
        worse = inject_bench(new_benches[new_name or base_name], report.change_pct, row.metric)
        [pending] = [r for r in bench_rows(row.benchmark, base_benches[base_name], worse, cfg) if r.metric == row.metric]
        count.detected += decide_one(measured.rows, index, pending, cfg).status == "worse"


def between_run_noise(runs: Sequence[Run], floors: dict[str, float] | None = None) -> Noise:
    """Per (benchmark, metric) in every run: (sd, degrees of freedom) of a run's estimate between runs.

    The variance of the runs' estimates less the mean of their own (block) variances, never below
    zero; ``len(runs) - 1`` degrees of freedom. Needs two runs or more.
    """
    per_run = [{(b.name, m): e for b in with_event_foms(run).benches
                for m, e in bench_estimates(b, ABS_FLOORS if floors is None else floors).items()} for run in runs]
    noise = {}
    for key in set.intersection(*(set(r) for r in per_run)) if len(per_run) > 1 else set():
        values = [r[key].value for r in per_run]
        between = statistics.variance(values) - statistics.fmean(r[key].own_var for r in per_run)
        noise[key] = (max(0.0, between) ** 0.5, float(len(runs) - 1))
    return noise


def gate_check(runs: Sequence[Run], change_pct: float = 25.0, calibrate: int = 0, **options: Any) -> GateReport:
    """Count false alarms and detections over every pair of ``runs`` (options go to :func:`compare_runs`).

    With ``calibrate=k``, the first ``k`` runs measure the between-run noise (:func:`between_run_noise`)
    that the comparisons then use, and only the pairs of the other runs are counted.
    """
    report = GateReport(change_pct)
    if options.get("test", "run") == "run":
        runs = [with_event_foms(run) for run in runs]
    if calibrate:
        if calibrate < 2 or len(runs) - calibrate < 2:
            raise ValueError(f"calibrating on {calibrate} of {len(runs)} runs leaves too few on one side (2 each)")
        options = {**options, "noise": between_run_noise(runs[:calibrate], options.get("floors"))}
        report.notes.append(f"between-run noise measured on runs 1-{calibrate}; pairs of runs {calibrate + 1}-{len(runs)}")
        runs = runs[calibrate:]
    for i, j in combinations(range(len(runs)), 2):
        report.pairs.append((runs[i].label, runs[j].label))
        _check_pair(report, runs[i], runs[j], options)
    if not report.pairs:
        report.notes.append("fewer than two runs: nothing to pair")
    return report


def write_noise(path: Path, noise: Noise) -> None:
    """Write measured between-run noise as JSON (a list of benchmark, metric, sd, df), for ``compare --noise``."""
    rows = [{"benchmark": b, "metric": m, "sd": sd, "df": df} for (b, m), (sd, df) in sorted(noise.items())]
    path.write_text(json.dumps(rows, indent=1))


def read_noise(path: Path) -> Noise:
    """Read what :func:`write_noise` wrote; a bad file raises :class:`ReportInputError`."""
    data = read_json(path)
    try:
        return {(str(r["benchmark"]), str(r["metric"])): (float(r["sd"]), float(r["df"])) for r in data}
    except (TypeError, KeyError, ValueError):
        raise ReportInputError(f"{path}: not a noise file (a list of benchmark, metric, sd, df)") from None
