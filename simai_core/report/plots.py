"""PNG plots of runs: micro throughput/latency sweeps, mini overhead breakdown, workflow timeline.

Each function returns the :class:`Plot` it wrote, or None when its input has nothing to plot;
the report says so instead of failing.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display
import matplotlib.pyplot as plt
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter, FixedLocator, FuncFormatter, NullFormatter

from simai_core.report.loading import Bench, Run
from simai_core.report.units import human_size, sig

# One colour per event kind / overhead component, shared by the breakdown and the timeline.
KIND_COLORS = {
    "step": "#9ecae1", "compute": "#6baed6", "epoch": "#c7e9c0", "meta": "#756bb1", "data": "#fd8d3c", "checkpoint": "#d62728",
    "inference": "#2ca02c", "wait": "#bdbdbd", "unaccounted": "#636363", "graph_build": "#8c564b",
    "process_group": "#e377c2", "checkpoint_serialize": "#ff9896", "checkpoint_load": "#f7b6d2", "stream_late": "#17becf",
}
# Staging traffic first, then coupling compute, then waiting and what no timer saw.
OVERHEAD_ORDER = ("meta", "data", "checkpoint", "graph_build", "process_group", "checkpoint_serialize",
                  "checkpoint_load", "inference", "wait", "unaccounted")
_TOTALS = ("overhead", "coupling_compute")  # sums of other parts: stacking them too would count those twice
# Timeline bar heights of the kinds that span others (an epoch holds compute and data sections).
LANE_HEIGHTS = {"epoch": 0.9, "step": 0.7, "compute": 0.7}
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D")
SWEEP_OPS = ("put", "get")
_PCT = re.compile(r"^(sim|train)_(\w+)_pct$")


@dataclass
class Plot:
    """A written figure: its file and a caption for the report."""

    path: Path
    title: str
    caption: str


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _op(bench: Bench) -> str | None:
    op = bench.params.get("op")
    if isinstance(op, str):
        return op
    return next((n.split("_", 1)[0] for n in bench.foms if n.endswith("_GBps")), None)


Series = dict[tuple[str, str, str], list[tuple[int, Any]]]  # (run label, backend, test) -> [(nbytes, Fom)]


def micro_series(runs: list[Run], suffix: str) -> dict[str, Series]:
    """``{op: {(run label, backend, test): [(nbytes, Fom), ...]}}`` for the FOM ``<op><suffix>``, sizes ascending.

    Only the put/get sweeps: other ops with a size (checkpoint push/pull of a few models) are not a sweep.
    """
    series: dict[str, Series] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for b in run.benches:
            op, nbytes = _op(b), b.params.get("nbytes")
            if b.level == "micro" and op in SWEEP_OPS and isinstance(nbytes, int) and f"{op}{suffix}" in b.foms:
                series[op][(run.label, b.backend or "-", b.base_name)].append((nbytes, b.foms[f"{op}{suffix}"]))
    ops = sorted(series, key=lambda op: (op != "put", op))  # put before get, as data flows
    return {op: {k: sorted(v, key=lambda p: p[0]) for k, v in series[op].items()} for op in ops}


def _size_axis(ax: Any, sizes: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(set(sizes))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_size(int(v))))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("message size (bytes, binary units)")
    ax.tick_params(axis="x", labelrotation=30)


def _draw_series(ax: Any, series: Series, multi_run: bool) -> None:
    labels = sorted({k[0] for k in series})
    backends = sorted({(k[1], k[2]) for k in series})
    multi_test = len({k[2] for k in series}) > 1
    for (label, backend, test), points in sorted(series.items()):
        x = [n for n, _ in points]
        y = [f.value for _, f in points]
        color = f"C{backends.index((backend, test)) % 10}"
        name = backend + (f" {test}" if multi_test else "") + (f" ({label})" if multi_run else "")
        run_index = labels.index(label) % len(LINESTYLES)  # style and marker tell runs apart, colour the backend
        ax.plot(x, y, marker=MARKERS[run_index], color=color, linestyle=LINESTYLES[run_index], label=name)
        # Rank spread as a band, only where the value is a per-rank quantity (not a sum over ranks).
        lo, hi = [f.ranks.min for _, f in points], [f.ranks.max for _, f in points]
        if any(a != b for a, b in zip(lo, hi, strict=True)) and all(a <= v <= b for a, v, b in zip(lo, y, hi, strict=True)):
            ax.fill_between(x, lo, hi, color=color, alpha=0.15, linewidth=0)


def plot_micro(runs: list[Run], outdir: Path, kind: str) -> Plot | None:
    """Throughput (``kind='throughput'``) or latency (``'latency'``) vs message size, a panel per op."""
    suffix, title = ("_GBps", "Throughput") if kind == "throughput" else ("_latency_s", "Latency")
    data = micro_series(runs, suffix)
    if not data:
        return None
    labels = {key[0] for series in data.values() for key in series}
    runs = [r for r in runs if r.label in labels]  # only the runs that have a sweep get a legend entry
    multi = len(runs) > 1
    fig, axes = plt.subplots(1, len(data), figsize=(5.5 * len(data), 4.2), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, (op, series) in zip(axes[0], data.items(), strict=True):
        _draw_series(ax, series, multi)
        _size_axis(ax, [n for pts in series.values() for n, _ in pts])
        ax.set_yscale("log")
        ax.set_title(f"{op}")
        ax.grid(True, which="major", alpha=0.3)
        if kind == "throughput":
            _memcpy_lines(ax, runs)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        else:
            ax.yaxis.set_major_formatter(EngFormatter(unit="s"))
        ax.legend(fontsize="small", loc="best")
    ylabel = "throughput (GB/s, 1 GB = 10⁹ bytes)" if kind == "throughput" else "latency per operation (s)"
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(f"Micro put/get: {title.lower()} vs message size")
    path = _save(fig, outdir / f"micro_{kind}.png")
    caption = ("Aggregate throughput over all ranks; dashed grey: memcpy bandwidth of one rank on the machine."
               if kind == "throughput" else "Latency per operation (mean over ranks; band: slowest to fastest rank).")
    return Plot(path, f"{title} vs message size", caption)


def _memcpy_lines(ax: Any, runs: list[Run]) -> None:
    seen = set()
    for run in runs:
        gbps = (run.machine_info.get("simai") or {}).get("memcpy_GBps")
        if isinstance(gbps, (int, float)) and gbps > 0 and gbps not in seen:
            seen.add(gbps)
            ax.axhline(gbps, color="grey", linestyle="--", linewidth=1,
                       label=f"memcpy, one rank: {sig(gbps)} GB/s" + (f" ({run.label})" if len(runs) > 1 else ""))


def _mini_label(run: Run, b: Bench, multi_run: bool) -> str:
    p = b.params
    deployment = (b.simai.deployment if b.simai else None) or p.get("deployment")
    parts = [b.backend or "-", deployment, p.get("model"), p.get("problem")]
    label = " / ".join(str(x) for x in parts if x)
    return f"{label} ({run.label})" if multi_run else label


def overhead_data(runs: list[Run]) -> list[tuple[str, dict[str, dict[str, float]]]]:
    """``[(label, {component: {overhead: pct}})]`` for every mini benchmark with ``*_pct`` FOMs."""
    rows = []
    for run in runs:
        for b in run.benches:
            parts: dict[str, dict[str, float]] = defaultdict(dict)
            for name, f in b.foms.items():
                m = _PCT.match(name)
                if m and b.level == "mini" and m.group(2) not in _TOTALS:
                    parts[m.group(1)][m.group(2)] = f.value
            if parts:
                rows.append((run, b, dict(parts)))
    multi = len({id(run) for run, _, _ in rows}) > 1
    return [(_mini_label(run, b, multi), parts) for run, b, parts in rows]


def plot_overhead(runs: list[Run], outdir: Path) -> Plot | None:
    """Stacked horizontal bars of the overheads (% of wall time) per mini benchmark, sim and train side by side."""
    data = overhead_data(runs)
    if not data:
        return None
    names = {k for _, parts in data for comp in parts.values() for k in comp} - {"compute"}
    order = [k for k in OVERHEAD_ORDER if k in names] + sorted(names - set(OVERHEAD_ORDER))
    comps = [c for c in ("sim", "train") if any(c in parts for _, parts in data)]
    fig, axes = plt.subplots(1, len(comps), figsize=(6 * len(comps), 2.2 + 0.5 * len(data)), squeeze=False,
                             sharey=True, layout="constrained")
    y = list(range(len(data)))
    for ax, comp in zip(axes[0], comps, strict=True):
        left = [0.0] * len(data)
        for i, kind in enumerate(order):
            widths = [parts.get(comp, {}).get(kind, 0.0) for _, parts in data]
            color = KIND_COLORS.get(kind, f"C{i % 10}")
            ax.barh(y, widths, left=left, color=color, label=kind, edgecolor="white", linewidth=0.5)
            left = [a + w for a, w in zip(left, widths, strict=True)]
        for yi, total, (_, parts) in zip(y, left, data, strict=True):
            compute = parts.get(comp, {}).get("compute")
            rest = f" (compute {sig(compute)} %)" if compute is not None else ""
            ax.text(total, yi, f" {sig(total)} %{rest}", va="center", fontsize="small")
        ax.set_xlim(0, max([*left, 1.0]) * 1.6)  # room for the totals
        ax.set_title({"sim": "simulation", "train": "training"}[comp])
        ax.set_xlabel("overhead (% of the component's wall time)")
        ax.grid(True, axis="x", alpha=0.3)
    axes[0][0].set_yticks(y, [label for label, _ in data])
    axes[0][0].invert_yaxis()
    handles = [Patch(color=KIND_COLORS.get(k, f"C{i % 10}"), label=k) for i, k in enumerate(order)]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(order))
    fig.suptitle("Mini workflow: where the time goes besides computation")
    path = _save(fig, outdir / "mini_overhead.png")
    return Plot(path, "Overhead breakdown", "Each bar stacks the overheads of one benchmark "
                "(backend / deployment / model / problem); the rest of the wall time is computation.")


def _lanes(events: list[dict[str, Any]], max_ranks: int) -> tuple[list[tuple[str, int]], str]:
    lanes = sorted({(str(e.get("component")), int(e.get("rank", 0))) for e in events},
                   key=lambda lane: (lane[0] != "sim", lane[0], lane[1]))
    shown = [lane for lane in lanes if lane[1] < max_ranks]
    note = f"; ranks 0-{max_ranks - 1} of each component shown" if len(shown) < len(lanes) else ""
    return shown, note


def plot_timeline(events: list[dict[str, Any]], path: Path, title: str, max_ranks: int = 8) -> Plot | None:
    """A Gantt chart of the workflow: one lane per component and rank, a colour per event kind."""
    events = [e for e in events if isinstance(e.get("t0_s"), (int, float)) and isinstance(e.get("dt_s"), (int, float))]
    if not events:
        return None
    lanes, note = _lanes(events, max_ranks)
    span = max(e["t0_s"] + e["dt_s"] for e in events) - min(e["t0_s"] for e in events)
    min_width = span / 1500  # keep sub-pixel events (metadata ops) visible
    fig, ax = plt.subplots(figsize=(11, 1.8 + 0.5 * len(lanes)), layout="constrained")
    kinds_seen: list[str] = []
    for lane_index, lane in enumerate(lanes):
        mine = [e for e in events if (str(e.get("component")), int(e.get("rank", 0))) == lane]
        by_kind: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for e in mine:
            by_kind[str(e.get("kind"))].append((e["t0_s"], max(e["dt_s"], min_width)))
        for kind, spans in sorted(by_kind.items(), key=lambda kv: -LANE_HEIGHTS.get(kv[0], 0.4)):
            # Epochs fill the lane, compute steps a little less, transfers etc. sit on top, narrower: nesting shows.
            height = LANE_HEIGHTS.get(kind, 0.4)
            ax.broken_barh(spans, (lane_index - height / 2, height), color=KIND_COLORS.get(kind, "black"),
                           alpha=0.7 if kind in LANE_HEIGHTS else 1.0)
            if kind not in kinds_seen:
                kinds_seen.append(kind)
    ax.set_yticks(range(len(lanes)), [f"{c} rank {r}" for c, r in lanes])
    ax.invert_yaxis()
    ax.set_xlabel("time since workflow start (s)")
    ax.grid(True, axis="x", alpha=0.3)
    order = [k for k in (*LANE_HEIGHTS, *OVERHEAD_ORDER) if k in kinds_seen] + [k for k in kinds_seen
                                                                                 if k not in KIND_COLORS]
    fig.legend(handles=[Patch(color=KIND_COLORS.get(k, "black"), label=k) for k in order],
               loc="outside lower center", ncol=len(order))
    ax.set_title(title)
    _save(fig, path)
    return Plot(path, title, f"Workflow timeline: {len(events)} events{note}; very short events are drawn 1 px wide.")
