"""Comparing two runs FOM by FOM: the regression gate.

Matching: a benchmark of the new run pairs with the base run's of the same fullname and
backend. A pair whose world size, machine profile or params (other than ``rounds`` and the
reference paths' descriptions) differ is *not comparable*: it is listed as such and never compared.

Every FOM both have is compared in its ``better`` direction, and so are pytest-benchmark's
median and mean round times (seconds, lower is better). For each such metric:

* **The smallest change that matters** is the threshold (``--threshold``, ``--fail-on``) as
  a share of the base value; for shares and skills that sit near zero (``*_pct`` FOMs,
  ``final_skill``) never less than an absolute floor in their own unit (:data:`ABS_FLOORS`:
  1 percentage point, 0.1 of skill), where a relative change means nothing. A smaller
  change is ``same``.
* **Significance** (``test="run"``, the default): the unit of the test is the *run*, because
  rounds of two runs are not exchangeable on a shared machine (the machine's state moves
  every figure of a run together). Each run's observations in time order (a FOM's per-round
  ``samples``; per-round means over ranks where the layout is ``ranks_x_rounds``; round times
  ``stats.data``; a mini run's per-event durations from its sidecar, see :func:`with_event_foms`)
  are cut into contiguous blocks; the run's estimate is the mean of the block medians (on a log
  scale for relative margins). The difference of the two estimates is tested against the
  margin with a t statistic whose variance adds the estimates' own (block variance / blocks)
  and the *between-run* noise: from ``noise`` (measured by ``gate-check`` on replicate runs,
  :func:`simai_core.report.gate_check.between_run_noise`) when given, else estimated from the
  runs themselves as the variance of one block (a rerun is assumed to move a figure no more
  than one block of a run moves from the next). Holm's correction runs over every tested
  metric of the comparison at family-wise ``alpha`` (default 1 %). ``test="rounds"`` is the
  earlier rule (a Mann-Whitney U test of the pooled samples), kept for comparison.
* A change that matters is ``worse`` or ``better`` when it is significant and ``noise``
  when not. Where a side has too few observations (fewer than 4 rounds, or one value per
  rank, as a mini run's workflow figures), the row is *untested*: shown with the threshold's
  verdict but not gated (``gate_untested=True`` gates it on the threshold alone).
"""
from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from functools import lru_cache
from itertools import pairwise
from typing import Any, Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text
from scipy.stats import mannwhitneyu
from scipy.stats import t as student_t

from simai_core.events import read_events
from simai_core.fom import Fom
from simai_core.report.loading import Bench, ReportInputError, Run, as_run, parse_run
from simai_core.report.units import format_change, format_value, sig

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
#: Family-wise false-alarm rate of one comparison's significance tests.
DEFAULT_ALPHA = 0.01
#: FOMs (name globs) judged by their absolute difference near zero: the smallest change that matters, in the unit.
# Skill: identical mini runs here differ by up to 0.08 (gate-check over 45 pairs); a drop of 0.1 is a real one.
ABS_FLOORS: dict[str, float] = {"*_pct": 1.0, "*skill*": 0.1}
#: A run's observations are cut into at most this many contiguous blocks, of at least 2 observations each.
MAX_BLOCKS = 8
#: Fewer observations than this per run leave a metric untested.
MIN_OBSERVATIONS = 4
#: Event kinds of a mini run's sidecar with at least this many events per component become ``events.*`` FOMs.
MIN_EVENTS = 8
MetricKey = tuple[str, str]  # (benchmark label, metric)
#: Between-run noise of a metric: (standard deviation of a run's estimate, degrees of freedom).
Noise = Mapping[MetricKey, tuple[float, float]]


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
    margin: float = 0.0  # the smallest change that matters, in the unit
    p_value: float | None = None  # two-sided Mann-Whitney U; None when untested
    n_samples: tuple[int, int] = (0, 0)  # sample counts, base and new
    floor: float | None = None  # absolute floor of the change, for FOMs judged in their unit
    untested_why: str = ""  # why no test applies, when untested

    @property
    def absolute(self) -> bool:
        """True when the change is judged (and shown) as a difference in the unit."""
        return self.floor is not None

    @property
    def tested(self) -> bool:
        """True when the samples were tested, False when the verdict rests on the threshold alone."""
        return self.p_value is not None


@dataclass
class Comparison:
    """The result of :func:`compare_runs`: rows, warnings and the verdict."""

    base_label: str
    new_label: str
    threshold_pct: float
    alpha: float = DEFAULT_ALPHA
    rows: list[Row] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    only_base: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)
    not_comparable: list[tuple[str, str]] = field(default_factory=list)  # (benchmark, why)

    @property
    def regressions(self) -> list[Row]:
        """Gating rows judged worse."""
        return [r for r in self.rows if r.status == "worse" and r.gating]

    @property
    def improvements(self) -> list[Row]:
        """Rows judged better."""
        return [r for r in self.rows if r.status == "better"]

    @property
    def noise(self) -> list[Row]:
        """Rows past the threshold but not significant."""
        return [r for r in self.rows if r.status == "noise"]

    @property
    def comparable(self) -> bool:
        """False when every paired benchmark differs in world size, machine or params."""
        return bool(self.rows) or not self.not_comparable

    @property
    def ok(self) -> bool:
        """True when something was compared and nothing regressed."""
        return self.comparable and not self.regressions

    def summary(self) -> str:
        """One line: counts per status and the verdict."""
        counts = {s: sum(r.status == s for r in self.rows) for s in MARKS}
        untested = sum(r.status in ("worse", "better") and not r.tested for r in self.rows)
        if not self.comparable:
            verdict = "NOT COMPARABLE"
        else:
            verdict = "OK" if self.ok else f"FAIL: {len(self.regressions)} regression(s)"
        extra = f", {len(self.not_comparable)} benchmark(s) not comparable" if self.not_comparable else ""
        return (
            f"{self.new_label} vs {self.base_label}: {counts['worse']} worse, {counts['better']} better, "
            f"{counts['noise']} within noise, {counts['same']} unchanged{extra} "
            f"(threshold {self.threshold_pct:g} %, alpha {self.alpha:g}; {untested} verdict(s) untested) — {verdict}"
        )

    def render(self, console: Console, only_changed: bool = False) -> None:
        """Print warnings, the asv-style table (grouped by benchmark) and the summary."""
        for warning in self.warnings:
            console.print(Text(f"warning: {warning}", style="yellow"), soft_wrap=True)
        rows = [r for r in self.rows if r.status != "same"] if only_changed else self.rows
        if rows:
            console.print(_table(self, rows))
        for name, why in self.not_comparable:
            console.print(Text(f"not comparable: {name} ({why})", style="bold yellow"), soft_wrap=True)
        for label, names in ((self.base_label, self.only_base), (self.new_label, self.only_new)):
            if names:
                console.print(Text(f"only in {label} ({len(names)}): " + ", ".join(names[:8]), style="dim"), soft_wrap=True)
        for r in self.regressions:
            console.print(Text(f"REGRESSION {r.benchmark} {r.metric}: {_values(r)} ({r.note})", style="bold red"),
                          soft_wrap=True)
        console.print(Text(self.summary(), style="bold green" if self.ok else "bold red"), soft_wrap=True)


def format_row_change(row: Row) -> str:
    """The change as judged: a difference in the unit for FOMs with an absolute floor, else relative."""
    if row.absolute and row.change_pct is not None and math.isfinite(row.new - row.base):
        diff = row.new - row.base
        return f"{'+' if diff >= 0 else ''}{sig(diff)}{' pt' if row.unit == '%' else ''}"
    return format_change(row.change_pct)


def _values(row: Row) -> str:
    return f"{format_value(row.base, row.unit)} -> {format_value(row.new, row.unit)}, {format_row_change(row)}"


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
            Text(format_row_change(row), style=style), Text(row.note, style=style or "dim"),
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


def floor_for(metric: str, floors: Mapping[str, float]) -> float | None:
    """The absolute floor of a metric: its exact entry, else the strictest (smallest) matching glob, else None."""
    if metric in floors:
        return floors[metric]
    matches = [v for pattern, v in floors.items() if fnmatchcase(metric, pattern)]
    return min(matches) if matches else None


def relative_change(base: float, new: float) -> float:
    """(new - base) / |base| in percent; ±inf when only the base is zero."""
    if base == 0:
        return 0.0 if new == 0 else math.copysign(math.inf, new)
    return (new - base) / abs(base) * 100.0


def min_p_value(n1: int, n2: int) -> float:
    """The smallest two-sided p-value an exact Mann-Whitney U test can reach with these sample sizes."""
    if not (n1 and n2):
        return 1.0
    return min(1.0, math.exp(math.log(2.0) - (math.lgamma(n1 + n2 + 1) - math.lgamma(n1 + 1) - math.lgamma(n2 + 1))))


def mann_whitney_p(base: Sequence[float], new: Sequence[float], shift: float = 0.0) -> float:
    """Mann-Whitney U p-value (exact for small samples without ties, else normal with tie correction).

    With ``shift == 0`` two-sided, of "no change". Otherwise of "the new samples are moved by at most
    ``shift`` (signed, in their unit) from the base": one-sided on ``new - shift`` against ``base``,
    doubled (the side is the one the values moved to), so that it reads as a two-sided p-value.
    """
    return _mann_whitney_p(tuple(base), tuple(new), shift)


@lru_cache(maxsize=4096)  # gate-check compares the same samples many times over
def _mann_whitney_p(base: tuple[float, ...], new: tuple[float, ...], shift: float) -> float:
    if shift == 0:
        p = float(mannwhitneyu(base, new, alternative="two-sided").pvalue)
    else:
        moved = [x - shift for x in new]
        p = min(1.0, 2 * float(mannwhitneyu(moved, base, alternative="greater" if shift > 0 else "less").pvalue))
    return 1.0 if math.isnan(p) else p  # all values tied: nothing tells the runs apart


def holm(p_values: Sequence[float], alpha: float) -> list[bool]:
    """Holm's step-down procedure: which hypotheses to reject at family-wise level ``alpha``."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    for step, i in enumerate(order):
        if p_values[i] > alpha / (len(p_values) - step):
            break
        rejected[i] = True
    return rejected


@dataclass(frozen=True)
class Settings:
    """How one comparison decides: thresholds, floors, the test's level and what gates."""

    threshold_pct: float = 10.0
    fail_on: Mapping[str, float] | None = None
    alpha: float = DEFAULT_ALPHA
    floors: Mapping[str, float] = field(default_factory=lambda: dict(ABS_FLOORS))
    gate_stats: bool = True
    noise_aware: bool = True
    null: Literal["margin", "zero"] = "margin"  # the test's null hypothesis: change within the margin, or none
    test: Literal["run", "rounds"] = "run"  # run-level t test (default), or Mann-Whitney on pooled rounds (earlier)
    noise: Noise | None = None  # measured between-run noise per metric; None: estimated from each pair
    gate_untested: bool = False  # untested rows gate on the threshold alone (the earlier rule)


def _sample_scale(value: float, samples: Sequence[float]) -> float:
    """How the samples' scale relates to the value's: 1 for a mean or median, 1/N for a sum over N ranks."""
    mid = statistics.median(samples)
    return mid / value if value and mid and (mid > 0) == (value > 0) else 1.0


def observations(fom: Fom, ranks: int | None) -> list[float] | None:
    """A FOM's observations in time order, one per round; None for one value per rank.

    Samples laid out ``ranks_x_rounds`` are folded: the mean of the ranks' values of each round.
    """
    samples = fom.samples
    if not samples or fom.samples_layout == "ranks":
        return None
    if fom.samples_layout == "ranks_x_rounds" and ranks and len(samples) % ranks == 0:
        rounds = len(samples) // ranks
        return [statistics.fmean(samples[r * rounds + i] for r in range(ranks)) for i in range(rounds)]
    return list(samples)


@dataclass(frozen=True)
class RunEstimate:
    """A run's estimate of a metric: the mean of its observations' block medians, on the test's scale."""

    value: float
    block_var: float  # variance of the block medians
    blocks: int

    @property
    def own_var(self) -> float:
        """The variance of :attr:`value` from the run's own blocks."""
        return self.block_var / self.blocks


def run_estimate(obs: Sequence[float], log: bool) -> RunEstimate | None:
    """Cut ``obs`` (time order) into contiguous blocks of at least 2 (at most :data:`MAX_BLOCKS`); None if too few."""
    xs = [math.log(x) for x in obs] if log else [float(x) for x in obs]
    if len(xs) < MIN_OBSERVATIONS or not all(math.isfinite(x) for x in xs):
        return None
    blocks = max(2, min(MAX_BLOCKS, len(xs) // 2))
    edges = [round(i * len(xs) / blocks) for i in range(blocks + 1)]
    medians = [statistics.median(xs[a:b]) for a, b in pairwise(edges)]
    return RunEstimate(statistics.fmean(medians), statistics.variance(medians), blocks)


def log_scale(obs: Sequence[float], floor: float | None) -> bool:
    """Relative margins are tested on a log scale (positive observations); absolute floors in the unit."""
    return floor is None and all(x > 0 for x in obs)


def run_level_p(base: RunEstimate, new: RunEstimate, margin: float, noise: tuple[float, float] | None) -> float:
    """p-value of "the two runs' figures differ by no more than ``margin``" (their scale), read as two-sided.

    t = (|new - base| - margin) / sd, where sd^2 adds both estimates' own variance and twice the
    between-run variance: ``noise`` (sd, degrees of freedom) when measured, else one block's variance
    of each run. Degrees of freedom by Welch-Satterthwaite.
    """
    parts: list[tuple[float, float]]
    if noise is None:
        parts = [(base.block_var + base.own_var, base.blocks - 1), (new.block_var + new.own_var, new.blocks - 1)]
    else:
        parts = [(base.own_var, base.blocks - 1), (new.own_var, new.blocks - 1), (2 * noise[0] ** 2, noise[1])]
    excess = abs(new.value - base.value) - margin
    var = sum(v for v, _ in parts)
    if var <= 0:
        return 0.0 if excess > 0 else 1.0
    df = var**2 / sum(v**2 / d for v, d in parts if v > 0 and d > 0)
    return min(1.0, 2 * float(student_t.sf(excess / math.sqrt(var), df)))


def _test_margin(bv: float, nv: float, margin: float, log: bool, samples: Sequence[float]) -> float:
    """The margin on the test's scale: log of the relative margin in the change's direction, else in the samples' unit."""
    if not log:
        return margin * _sample_scale(bv, samples)
    rel = margin / abs(bv) if bv else math.inf
    return math.log1p(rel) if nv >= bv else (-math.log1p(-rel) if rel < 1 else math.inf)


def _p_value(key: MetricKey, values: tuple[float, float], obs: tuple[Sequence[float] | None, Sequence[float] | None],
             margin: float, floor: float | None, cfg: Settings) -> tuple[float | None, str]:
    """The p-value of the row's test, or None and why none applies."""
    (bv, nv), (bs, ns) = values, obs
    if not bs or not ns:
        return None, "no samples" if bs is None and ns is None else "one value per rank"
    if cfg.test == "rounds":
        if min_p_value(len(bs), len(ns)) > cfg.alpha:
            return None, f"{len(bs)} vs {len(ns)} samples cannot reach alpha"
        shift = math.copysign(margin * _sample_scale(bv, bs), nv - bv) if cfg.null == "margin" else 0.0
        return mann_whitney_p(bs, ns, shift), ""
    log = log_scale(bs, floor) and log_scale(ns, floor)
    eb, en = run_estimate(bs, log), run_estimate(ns, log)
    if eb is None or en is None:
        return None, f"{len(bs)} vs {len(ns)} observations, fewer than {MIN_OBSERVATIONS}"
    m = _test_margin(bv, nv, margin, log, bs) if cfg.null == "margin" else 0.0
    return run_level_p(eb, en, m, cfg.noise.get(key) if cfg.noise else None), ""


def _pending(label: str, metric: str, kind: Literal["fom", "stat"], unit: str, better: str,
             base: tuple[float, Sequence[float] | None], new: tuple[float, Sequence[float] | None],
             cfg: Settings, gating: bool) -> Row:
    """A row with its change, margin and p-value; the status is decided once all p-values are known."""
    (bv, bs), (nv, ns) = base, new
    thr = threshold_for(metric, cfg.threshold_pct, cfg.fail_on)
    sizes = (len(bs or ()), len(ns or ()))
    if math.isnan(bv) or math.isnan(nv):
        return Row(label, metric, kind, unit, better, bv, nv, None, None, thr, "n/a", "no value (NaN)",
                   gating, n_samples=sizes)
    change = relative_change(bv, nv)
    floor = floor_for(metric, cfg.floors) if kind == "fom" else None
    margin = max(floor or 0.0, thr / 100.0 * abs(bv))
    p, why = _p_value((label, metric), (bv, nv), (bs, ns), margin, floor, cfg)
    return Row(label, metric, kind, unit, better, bv, nv, change, -change if better == "higher" else change, thr,
               "same", "", gating, margin, p, sizes, floor, why)


def _decide(row: Row, significant: bool, cfg: Settings) -> Row:
    """The row's status: same within the margin, else worse/better when significant (or untested), else noise."""
    if row.status == "n/a" or row.worse_pct is None:
        return row
    if abs(row.new - row.base) <= row.margin:
        return replace(row, status="same")
    direction: Status = "worse" if row.worse_pct > 0 else "better"
    size = f"by more than {sig(row.margin)}{' pt' if row.unit == '%' else ''}" if row.absolute \
        else f"by more than {row.threshold_pct:g} %"
    if not row.tested:
        if cfg.gate_untested or cfg.test == "rounds":
            return replace(row, status=direction, note=f"{direction} {size}, untested: {row.untested_why}")
        return replace(row, status=direction, gating=False,
                       note=f"{direction} {size}, untested: {row.untested_why} (not gated)")
    p = f"p={row.p_value:.2g}"
    if significant or not cfg.noise_aware:
        return replace(row, status=direction, note=f"{direction} {size} ({p})")
    return replace(row, status="noise", note=f"within noise ({p}, not significant at Holm's level)")


def bench_rows(label: str, b: Bench, n: Bench, cfg: Settings) -> list[Row]:
    """Pending rows for one matched pair: every shared FOM, one-sided FOMs, then the round times."""
    rows = []
    for name in (k for k in b.foms if k in n.foms):
        fb, fn = b.foms[name], n.foms[name]
        if cfg.test == "run":
            obs = observations(fb, b.world_size), observations(fn, n.world_size)
        else:
            obs = fb.samples, fn.samples
        rows.append(_pending(label, name, "fom", fb.unit, fb.better, (fb.value, obs[0]), (fn.value, obs[1]), cfg, True))
    for name in (k for k in {**b.foms, **n.foms} if (k in b.foms) != (k in n.foms)):
        fom = b.foms.get(name) or n.foms[name]
        base, new = (b.foms[name].value, math.nan) if name in b.foms else (math.nan, n.foms[name].value)
        note = "only in the base run" if name in b.foms else "only in the new run"
        rows.append(Row(label, name, "fom", fom.unit, fom.better, base, new, None, None, cfg.threshold_pct, "n/a",
                        note))
    for stat in STAT_METRICS:
        if stat in b.stats and stat in n.stats:
            rows.append(_pending(label, f"time.{stat}", "stat", "s", "lower", (b.stats[stat], b.round_times),
                                 (n.stats[stat], n.round_times), cfg, cfg.gate_stats))
    return rows


def bench_estimates(bench: Bench, floors: Mapping[str, float]) -> dict[str, RunEstimate]:
    """Every testable metric's :class:`RunEstimate` in one run, on the scale a comparison tests it."""
    series: dict[str, tuple[list[float] | None, float | None]] = {
        name: (observations(fom, bench.world_size), floor_for(name, floors)) for name, fom in bench.foms.items()}
    for stat in STAT_METRICS:
        if stat in bench.stats:
            series[f"time.{stat}"] = (bench.round_times, None)
    out = {}
    for name, (obs, floor) in series.items():
        estimate = run_estimate(obs, log_scale(obs, floor)) if obs else None
        if estimate is not None:
            out[name] = estimate
    return out


def event_foms(events: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per (component, kind) with :data:`MIN_EVENTS` events or more: ``events.<component>.<kind>_s``.

    The value is the median duration of one event (s, lower is better); the samples are every
    event's duration in time order.
    """
    groups: dict[tuple[str, str], list[tuple[float, int, float]]] = {}
    for e in events:
        dt = e.get("dt_s")
        if isinstance(dt, int | float) and dt > 0:
            groups.setdefault((str(e.get("component")), str(e.get("kind"))), []).append(
                (float(e.get("t0_s") or 0.0), int(e.get("rank") or 0), float(dt)))
    foms = {}
    for (component, kind), items in sorted(groups.items()):
        if len(items) < MIN_EVENTS:
            continue
        items.sort()
        per_rank: dict[int, list[float]] = {}
        for _, rank, dt in items:
            per_rank.setdefault(rank, []).append(dt)
        medians = [statistics.median(v) for v in per_rank.values()]
        foms[f"events.{component}.{kind}_s"] = {
            "value": statistics.median(dt for _, _, dt in items), "unit": "s", "better": "lower",
            "ranks": {"min": min(medians), "mean": statistics.fmean(medians), "max": max(medians)},
            "samples": [dt for _, _, dt in items], "samples_layout": "rounds"}
    return foms


def with_event_foms(run: Run) -> Run:
    """``run`` with :func:`event_foms` of each benchmark's event sidecar added to its FOMs (once).

    A mini run measures its workflow figures once (one value per rank): these per-event figures
    are what a test can use. Runs without sidecars (or whose file is unknown) come back as they are.
    """
    data = None
    for i, bench in enumerate(run.benches):
        path = run.events_path(bench)
        if path is None or not path.is_file() or any(name.startswith("events.") for name in bench.foms):
            continue
        foms = event_foms(read_events(path))
        if foms:
            data = data or copy.deepcopy(run.data)
            data["benchmarks"][i].setdefault("extra_info", {}).setdefault("fom", {}).update(foms)
    return run if data is None else parse_run(data, label=run.label, path=run.path)


def decide_one(rows: Sequence[Row], index: int, row: Row, cfg: Settings) -> Row:
    """A pending ``row`` decided in the place of ``rows[index]``, Holm's correction over the others' p-values."""
    others = [r.p_value for i, r in enumerate(rows) if i != index and r.p_value is not None]
    if row.p_value is None:
        return _decide(row, False, cfg)
    return _decide(row, holm([*others, row.p_value], cfg.alpha)[-1], cfg)


def make_settings(threshold_pct: float = 10.0, fail_on: Mapping[str, float] | None = None, *, gate_stats: bool = True,
                  noise_aware: bool = True, alpha: float = DEFAULT_ALPHA, floors: Mapping[str, float] | None = None,
                  null: Literal["margin", "zero"] = "margin", test: Literal["run", "rounds"] = "run",
                  noise: Noise | None = None, gate_untested: bool = False, **_: Any) -> Settings:
    """The :class:`Settings` that :func:`compare_runs` makes of its options (other options are ignored)."""
    return Settings(threshold_pct, fail_on, alpha, dict(ABS_FLOORS if floors is None else floors), gate_stats,
                    noise_aware, null, test, noise, gate_untested)


def decide_rows(rows: list[Row], cfg: Settings) -> list[Row]:
    """Decide every row's status, with Holm's correction over the tested rows of one comparison."""
    tested = [i for i, r in enumerate(rows) if r.tested]
    p_values = [p if (p := rows[i].p_value) is not None else 1.0 for i in tested]  # p = 0 is a p-value too
    rejected = dict(zip(tested, holm(p_values, cfg.alpha), strict=True))
    return [_decide(r, rejected.get(i, False), cfg) for i, r in enumerate(rows)]


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
    alpha: float = DEFAULT_ALPHA,
    floors: Mapping[str, float] | None = None,
    null: Literal["margin", "zero"] = "margin",
    test: Literal["run", "rounds"] = "run",
    noise: Noise | None = None,
    gate_untested: bool = False,
) -> Comparison:
    """Compare ``new`` against ``base`` (JSON dicts or loaded runs).

    ``fail_on`` maps FOM names (or globs such as ``*_GBps``, or ``time.median``) to their own
    threshold in percent; ``floors`` maps FOM names or globs to their absolute floor in the FOM's unit
    (default :data:`ABS_FLOORS`).
    ``gate_stats=False`` shows round times without failing on them; ``noise_aware=False`` fails on
    any change past the threshold, significant or not; ``alpha`` is the family-wise false-alarm rate
    of the tests; ``null="zero"`` tests "no change at all" instead of "no change beyond the margin";
    ``test`` chooses the run-level test (default) or the earlier pooled-rounds one; ``noise`` is the
    between-run noise per (benchmark, metric) that ``gate-check`` measured (else estimated per pair);
    ``gate_untested`` fails untested rows on the threshold alone.
    Raises :class:`ReportInputError` when no benchmark pairs up by name and backend.
    """
    cfg = make_settings(threshold_pct, fail_on, gate_stats=gate_stats, noise_aware=noise_aware, alpha=alpha,
                        floors=floors, null=null, test=test, noise=noise, gate_untested=gate_untested)
    base_run, new_run = as_run(base, "base"), as_run(new, "new")
    if test == "run":  # the earlier rule predates the per-event figures
        base_run, new_run = with_event_foms(base_run), with_event_foms(new_run)
    bi, ni = _index(base_run, ignore_backend), _index(new_run, ignore_backend)
    matched = [k for k in bi if k in ni]
    if not matched:
        raise ReportInputError(
            f"no benchmark of {new_run.label} matches one of {base_run.label} by name and backend "
            f"({len(bi)} vs {len(ni)} benchmarks)"
        )
    comp = Comparison(base_run.label, new_run.label, threshold_pct, alpha,
                      warnings=machine_warnings(base_run, new_run))
    rows = []
    for key in matched:
        b, n = bi[key], ni[key]
        why = b.mismatch(n)
        if why:
            comp.not_comparable.append((_label(b, n), why))
        else:
            rows.extend(bench_rows(_label(b, n), b, n, cfg))
    comp.rows = decide_rows(rows, cfg)
    comp.only_base = [bi[k].name for k in bi if k not in ni]
    comp.only_new = [ni[k].name for k in ni if k not in bi]
    if comp.not_comparable and comp.rows:
        comp.warnings.append(f"{len(comp.not_comparable)} benchmark(s) not comparable (listed below), not compared")
    return comp
