"""Comparing two runs FOM by FOM: the regression gate.

A benchmark of the new run is matched to the base run's by fullname, backend and
simai params. Every FOM both have is compared in its ``better`` direction, and so are
pytest-benchmark's median and mean round times (seconds, lower is better).

A change beyond the threshold is a regression (or an improvement) unless it is within
noise: the two runs' per-rank spreads of the FOM overlap, or the difference is no larger
than the rounds' own scatter (IQR for the median and for FOMs, stddev for the mean).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import partial
from typing import Any, Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text

from simai_core.fom import Fom
from simai_core.report.loading import Bench, ReportInputError, Run, as_run
from simai_core.report.units import format_change, format_value

Status = Literal["worse", "better", "noise", "same", "n/a"]
# Mark per status, in the manner of asv compare: + worse, - better, ~ within noise.
MARKS: dict[str, tuple[str, str]] = {
    "worse": ("+", "bold red"),
    "better": ("-", "bold green"),
    "noise": ("~", "yellow"),
    "same": (" ", ""),
    "n/a": ("?", "dim"),
}
STAT_METRICS = ("median", "mean")


@dataclass(frozen=True)
class Row:
    """One compared metric of one benchmark."""

    benchmark: str
    metric: str
    kind: Literal["fom", "stat"]
    unit: str
    better: str
    base: float
    new: float
    change_pct: float | None  # signed (new - base) / |base|
    worse_pct: float | None  # the change in the bad direction: > 0 is worse
    threshold_pct: float
    status: Status
    note: str = ""
    gating: bool = True  # counts towards the exit status when worse


@dataclass
class Comparison:
    """The result of :func:`compare_runs`: rows, warnings and the verdict."""

    base_label: str
    new_label: str
    threshold_pct: float
    rows: list[Row] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    only_base: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Row]:
        """Rows worse than their threshold and not within noise."""
        return [r for r in self.rows if r.status == "worse" and r.gating]

    @property
    def improvements(self) -> list[Row]:
        """Rows better than their threshold and not within noise."""
        return [r for r in self.rows if r.status == "better"]

    @property
    def noise(self) -> list[Row]:
        """Rows past the threshold but within noise."""
        return [r for r in self.rows if r.status == "noise"]

    @property
    def ok(self) -> bool:
        """True when nothing regressed."""
        return not self.regressions

    def summary(self) -> str:
        """One line: counts per status and the verdict."""
        counts = {s: sum(r.status == s for r in self.rows) for s in MARKS}
        verdict = "OK" if self.ok else f"FAIL: {len(self.regressions)} regression(s)"
        return (
            f"{self.new_label} vs {self.base_label}: {counts['worse']} worse, {counts['better']} better, "
            f"{counts['noise']} within noise, {counts['same']} unchanged (threshold {self.threshold_pct:g} %) — {verdict}"
        )

    def render(self, console: Console, only_changed: bool = False) -> None:
        """Print warnings, the asv-style table (grouped by benchmark) and the summary."""
        for warning in self.warnings:
            console.print(Text(f"warning: {warning}", style="yellow"), soft_wrap=True)
        rows = [r for r in self.rows if r.status != "same"] if only_changed else self.rows
        if rows:
            console.print(_table(self, rows))
        for label, names in ((self.base_label, self.only_base), (self.new_label, self.only_new)):
            if names:
                console.print(Text(f"only in {label} ({len(names)}): " + ", ".join(names[:8]), style="dim"), soft_wrap=True)
        for r in self.regressions:
            console.print(Text(f"REGRESSION {r.benchmark} {r.metric}: {_values(r)} ({r.note})", style="bold red"),
                          soft_wrap=True)
        console.print(Text(self.summary(), style="bold green" if self.ok else "bold red"), soft_wrap=True)


def _values(row: Row) -> str:
    return f"{format_value(row.base, row.unit)} -> {format_value(row.new, row.unit)}, {format_change(row.change_pct)}"


def _table(comp: Comparison, rows: list[Row]) -> Table:
    table = Table(title=Text(f"{comp.new_label} vs {comp.base_label}"), show_lines=False, title_justify="left")
    for header in ("", "benchmark", "metric", comp.base_label, comp.new_label, "change", ""):
        table.add_column(Text(header), justify="right" if header in (comp.base_label, comp.new_label, "change") else "left",
                         overflow="fold")
    for i, row in enumerate(rows):
        first = i == 0 or rows[i - 1].benchmark != row.benchmark
        last = i == len(rows) - 1 or rows[i + 1].benchmark != row.benchmark
        mark, style = MARKS[row.status]
        table.add_row(
            Text(mark, style=style), Text(row.benchmark if first else ""), Text(row.metric),
            Text(format_value(row.base, row.unit)), Text(format_value(row.new, row.unit)),
            Text(format_change(row.change_pct), style=style), Text(row.note, style=style or "dim"),
            end_section=last,
        )
    return table


def threshold_for(metric: str, default_pct: float, fail_on: Mapping[str, float] | None) -> float:
    """The threshold of a metric: its exact ``fail_on`` entry, else the strictest matching glob, else the default."""
    if not fail_on:
        return default_pct
    if metric in fail_on:
        return fail_on[metric]
    matches = [pct for pattern, pct in fail_on.items() if fnmatchcase(metric, pattern)]
    return min(matches) if matches else default_pct


def relative_change(base: float, new: float) -> float:
    """(new - base) / |base| in percent; ±inf when only the base is zero."""
    if base == 0:
        return 0.0 if new == 0 else math.copysign(math.inf, new)
    return (new - base) / abs(base) * 100.0


def _round_noise_pct(bench: Bench) -> float:
    """The rounds' relative scatter (IQR / median) in percent; 0 for a single round."""
    s = bench.stats
    if s.get("rounds", 0) < 2 or not s.get("median"):
        return 0.0
    return 100.0 * s.get("iqr", 0.0) / s["median"]


def _fom_noise(base: Fom, new: Fom, worse: float, b: Bench, n: Bench) -> str:
    """Why a FOM change counts as noise ('' when it does not)."""
    if max(base.ranks.min, new.ranks.min) <= min(base.ranks.max, new.ranks.max):
        return "within noise: rank spreads overlap"
    scatter = max(_round_noise_pct(b), _round_noise_pct(n))
    if abs(worse) <= scatter:
        return f"within noise: rounds scatter ±{scatter:.1f} %"
    return ""


def _stat_noise(metric: str, b: Bench, n: Bench, worse: float = 0.0) -> str:
    """Why a timing change counts as noise: the difference is within the rounds' IQR (median) or stddev (mean)."""
    spread_key = "iqr" if metric == "median" else "stddev"
    spread = max(b.stats.get(spread_key, 0.0), n.stats.get(spread_key, 0.0))
    if abs(n.stats[metric] - b.stats[metric]) <= spread:
        return f"within noise: |Δ| <= {spread_key}"
    return ""


def _status(worse: float | None, threshold: float, noise: str) -> tuple[Status, str]:
    if worse is None or math.isnan(worse):
        return "n/a", "not comparable"
    if abs(worse) <= threshold:
        return "same", ""
    if noise:
        return "noise", noise
    if worse > 0:
        return "worse", f"worse by more than {threshold:g} %"
    return "better", f"better by more than {threshold:g} %"


def _row(label: str, metric: str, kind: Literal["fom", "stat"], unit: str, better: str, base: float, new: float,
         threshold: float, noise_of: Callable[[float], str], gating: bool) -> Row:
    if math.isnan(base) or math.isnan(new):
        change = worse = None
    else:
        change = relative_change(base, new)
        worse = -change if better == "higher" else change
    noise = noise_of(worse) if worse is not None and abs(worse) > threshold else ""
    status, note = _status(worse, threshold, noise)
    return Row(label, metric, kind, unit, better, base, new, change, worse, threshold, status, note, gating)


def _no_noise(worse: float) -> str:
    return ""


def compare_benches(label: str, b: Bench, n: Bench, threshold_pct: float, fail_on: Mapping[str, float] | None,
                    gate_stats: bool = True, noise_aware: bool = True) -> list[Row]:
    """Rows for one matched pair: every shared FOM, then the median and mean round times."""
    rows = []
    for name in (k for k in b.foms if k in n.foms):
        fb, fn = b.foms[name], n.foms[name]
        thr = threshold_for(name, threshold_pct, fail_on)
        noise = partial(_fom_noise, fb, fn, b=b, n=n) if noise_aware else _no_noise
        rows.append(_row(label, name, "fom", fb.unit, fb.better, fb.value, fn.value, thr, noise, True))
    for name in (k for k in {**b.foms, **n.foms} if (k in b.foms) != (k in n.foms)):
        fom = b.foms.get(name) or n.foms[name]
        base, new = (b.foms[name].value, math.nan) if name in b.foms else (math.nan, n.foms[name].value)
        note = "only in the base run" if name in b.foms else "only in the new run"
        rows.append(Row(label, name, "fom", fom.unit, fom.better, base, new, None, None, threshold_pct, "n/a", note))
    for stat in STAT_METRICS:
        if stat in b.stats and stat in n.stats:
            metric = f"time.{stat}"
            thr = threshold_for(metric, threshold_pct, fail_on)
            noise = partial(_stat_noise, stat, b, n) if noise_aware else _no_noise
            rows.append(_row(label, metric, "stat", "s", "lower", b.stats[stat], n.stats[stat], thr, noise, gate_stats))
    return rows


def _index(run: Run, ignore_backend: bool) -> dict[tuple[str, ...], Bench]:
    index: dict[tuple[str, ...], Bench] = {}
    for bench in run.benches:
        key = bench.key(ignore_backend)
        if key in index:
            hint = " (runs with several backends cannot be compared ignoring the backend)" if ignore_backend else ""
            raise ReportInputError(f"{run.label}: two benchmarks match as {bench.name!r}{hint}")
        index[key] = bench
    return index


def _label(b: Bench, n: Bench) -> str:
    return b.name if b.name == n.name else f"{b.name} -> {n.name}"


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def machine_warnings(base: Run, new: Run) -> list[str]:
    """Warnings when the two runs come from different machines (node, simai profile, CPU)."""
    mb, mn = base.machine_info, new.machine_info
    sb, sn = mb.get("simai") or {}, mn.get("simai") or {}
    diffs = []
    if mb.get("node") != mn.get("node"):
        diffs.append(f"node {mb.get('node')!r} vs {mn.get('node')!r}")
    for key in sorted(set(sb) | set(sn)):
        vb, vn = sb.get(key), sn.get(key)
        # Measured numbers (memcpy_GBps...) vary run to run; identity fields (profile...) should not.
        if vb != vn and not isinstance(vb, float) and not isinstance(vn, float):
            diffs.append(f"{key} {_short(vb)} vs {_short(vn)}")
    cb, cn = (mb.get("cpu") or {}).get("brand_raw"), (mn.get("cpu") or {}).get("brand_raw")
    if cb and cn and cb != cn:
        diffs.append(f"cpu {cb!r} vs {cn!r}")
    if not diffs:
        return []
    return [f"the runs come from different machines ({'; '.join(diffs)}): differences may be the machine's, not the code's"]


def compare_runs(
    base: dict[str, Any] | Run,
    new: dict[str, Any] | Run,
    threshold_pct: float = 10.0,
    fail_on: dict[str, float] | None = None,
    *,
    gate_stats: bool = True,
    ignore_backend: bool = False,
    noise_aware: bool = True,
) -> Comparison:
    """Compare ``new`` against ``base`` (JSON dicts or loaded runs).

    ``fail_on`` maps FOM names (or globs such as ``*_GBps``, or ``time.median``) to their own
    threshold in percent. ``gate_stats=False`` shows round times without failing on them;
    ``noise_aware=False`` fails on any change past the threshold, noise or not.
    Raises :class:`ReportInputError` when no benchmark matches.
    """
    base_run, new_run = as_run(base, "base"), as_run(new, "new")
    bi, ni = _index(base_run, ignore_backend), _index(new_run, ignore_backend)
    matched = [k for k in bi if k in ni]
    if not matched:
        raise ReportInputError(
            f"no benchmark of {new_run.label} matches one of {base_run.label} by name, backend and params "
            f"({len(bi)} vs {len(ni)} benchmarks)"
        )
    comp = Comparison(base_run.label, new_run.label, threshold_pct, warnings=machine_warnings(base_run, new_run))
    for key in matched:
        b, n = bi[key], ni[key]
        comp.rows.extend(compare_benches(_label(b, n), b, n, threshold_pct, fail_on, gate_stats, noise_aware))
    comp.only_base = [bi[k].name for k in bi if k not in ni]
    comp.only_new = [ni[k].name for k in ni if k not in bi]
    return comp
