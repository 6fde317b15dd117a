"""The few lines a person reads first after ``make bench``: what ran, and how close to the raw limit."""

from __future__ import annotations

from dataclasses import dataclass

from simai_core.report.loading import Bench, Run
from simai_core.report.units import format_value
from simai_core.sizes import format_size


@dataclass(frozen=True)
class RatioSeen:
    """One ``*_vs_raw`` figure and where it was measured."""

    ratio: float
    bench: Bench
    fom: str

    def describe(self) -> str:
        """``redis get 64MiB: 0.97x of raw (1.21 GB/s)``."""
        p = self.bench.params
        where = " ".join(str(x) for x in (self.bench.backend, p.get("op"),
                                          format_size(p["nbytes"]) if "nbytes" in p else None) if x)
        rate = self.bench.foms.get(self.fom.replace("_vs_raw", "_GBps"))
        return f"{where}: {self.ratio:.2f}x of raw" + (f" ({format_value(rate.value, rate.unit)})" if rate else "")


def raw_ratios(run: Run) -> list[RatioSeen]:
    """Every ``*_vs_raw`` FOM of the run, lowest first."""
    seen = [RatioSeen(f.value, b, name) for b in run.benches for name, f in b.foms.items()
            if name.endswith("_vs_raw") and f.value == f.value]
    return sorted(seen, key=lambda r: r.ratio)


def summary_lines(run: Run, report_dir: str | None = None) -> list[str]:
    """What ran, the best and worst ratio to the raw limit, and where the results are."""
    backends = sorted({b.backend for b in run.benches if b.backend})
    world = sorted({b.world_size for b in run.benches if b.world_size})
    lines = [f"{len(run.benches)} benchmarks on {', '.join(backends) or 'no backend'}"
             f" ({'/'.join(map(str, world)) or '?'} rank(s))"]
    ratios = raw_ratios(run)
    if ratios:
        lines += [f"closest to the raw limit: {ratios[-1].describe()}", f"furthest from it:        {ratios[0].describe()}"]
    lines.append(f"JSON:   {run.path}" if run.path else f"run:    {run.label}")
    if report_dir:
        lines.append(f"report: {report_dir}/report.html (plots beside it)")
    return lines
