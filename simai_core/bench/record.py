"""Recording FOMs into a pytest-benchmark result: reduce over ranks, measure aggregates, write ``extra_info``."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from simai_core import mpi
from simai_core.bench.measure import PairedRounds, Window
from simai_core.fom import Fom, FomSpec, RankSpread, RunInfo, extra_info, ratio_fom, reduce_foms

# The put/get sweep's FOMs; ``*_vs_raw`` are derived from the reduced values.
LATENCY = FomSpec(unit="s", better="lower", combine="mean")
PER_RANK_GBPS = FomSpec(unit="GB/s", better="higher", combine="mean")
# Measured over the ranks' common window of each round: all bytes / (last end - first start).
AGGREGATE_GBPS = FomSpec(unit="GB/s", better="higher", combine="window")
AGGREGATE_OPS = FomSpec(unit="ops/s", better="higher", combine="window")
COUNT = FomSpec(unit="count", better="higher", combine="sum")

Local = float | Sequence[float]


def record(
    benchmark: Any,
    run: RunInfo,
    local: Mapping[str, Local],
    specs: Mapping[str, FomSpec],
    ratios: Mapping[str, tuple[str, str]] | None = None,
    aggregates: Mapping[str, tuple[Sequence[Window], float]] | None = None,
    measured: Mapping[str, Fom] | None = None,
    ranks: Sequence[Mapping[str, Local]] | None = None,
) -> dict[str, Fom]:
    """Gather this rank's FOM values from every rank, reduce them, and store them in ``benchmark.extra_info``.

    Collective: every rank calls it once per benchmark, with the same names.

    * ``local``: a value, or this rank's per-round samples (its value is their median).
    * ``aggregates``: name -> (this rank's round windows, amount moved per round, in the FOM's unit
      times seconds, e.g. GB); the FOM is the median over rounds of all ranks' amount over the
      round's common window (:func:`window_fom`), never a sum of per-rank figures.
    * ``measured``: FOMs already reduced (e.g. :func:`aggregate_fom` over non-MPI workers), the same on every rank.
    * ``ratios``: derived FOM -> (numerator, denominator), e.g. ``{"put_vs_raw": ("put_GBps", "raw_put_GBps")}``.
    * ``ranks``: every rank's ``local``, when they were gathered elsewhere (ranks that are not this
      pytest's world, e.g. an ``mpiexec`` a Dragon runtime started); then ``local`` is ignored.
    """

    def as_samples(values: Mapping[str, Local]) -> dict[str, list[float]]:
        return {name: [float(v)] if isinstance(v, int | float) else [float(x) for x in v] for name, v in values.items()}

    per_rank_samples = [as_samples(r) for r in ranks] if ranks is not None else mpi.gather_to_all(as_samples(local))
    per_rank = [{name: statistics.median(vals) for name, vals in rank.items() if vals} for rank in per_rank_samples]
    foms = reduce_foms(per_rank, {n: s for n, s in specs.items() if s.combine != "window"})
    for name, fom in foms.items():  # rounds x ranks, for a statistical comparison
        fom.samples = [x for rank in per_rank_samples for x in rank.get(name, [])]
        if len(fom.samples) > len(per_rank_samples):
            fom.samples_layout = "ranks_x_rounds"
    for name, (windows, amount) in (aggregates or {}).items():
        foms[name] = window_fom(windows, amount, specs[name])
    foms.update(measured or {})
    for name, (num, den) in (ratios or {}).items():
        if num in foms and den in foms:
            rank_ratios = [r[num] / r[den] for r in per_rank if r.get(num) and r.get(den)]
            foms[name] = ratio_fom(foms[num], foms[den], rank_ratios)
    benchmark.extra_info.update(extra_info(run, foms))
    return foms


def round_rates(windows: Sequence[Sequence[Window]], amounts: Sequence[float]) -> list[float]:
    """Per round: all clients' amounts over (last end - first start) of that round.

    ``windows[c]`` are client ``c``'s rounds on one shared clock, ``amounts[c]`` what it moves per round.
    """
    total = sum(amounts)
    rates = []
    for i in range(min((len(w) for w in windows), default=0)):
        span = max(w[i][1] for w in windows) - min(w[i][0] for w in windows)
        rates.append(total / span if span > 0 else float("inf"))
    return rates


def aggregate_fom(windows: Sequence[Sequence[Window]], amounts: Sequence[float], spec: FomSpec) -> Fom:
    """A measured aggregate: the median of :func:`round_rates`; ``ranks`` spreads each moving client's own median rate."""
    rounds = round_rates(windows, amounts)
    own = [statistics.median([a / (e - s) for s, e in w if e > s]) for w, a in zip(windows, amounts, strict=True) if a and w]
    own = own or [float("nan")]
    return Fom(value=statistics.median(rounds) if rounds else float("nan"), unit=spec.unit, better=spec.better,
               ranks=RankSpread(min=min(own), mean=sum(own) / len(own), max=max(own)), samples=rounds,
               samples_layout="rounds")


def window_fom(windows: Sequence[Window], amount: float, spec: FomSpec) -> Fom:
    """:func:`aggregate_fom` over the MPI ranks (collective): ``windows`` on the shared clock, ``amount`` per round."""
    everyone = mpi.gather_to_all((list(windows), float(amount)))
    return aggregate_fom([w for w, _ in everyone], [a for _, a in everyone], spec)


def paired_throughput(op: str, timing: PairedRounds, gb: float, moves: bool = True) -> dict[str, Any]:
    """:func:`record` arguments for ``op`` timed against its references in :class:`PairedRounds`.

    ``<op>_latency_s`` and ``<op>_GBps_per_rank`` per rank; ``<op>_GBps`` and ``<ref>_<op>_GBps``
    measured aggregates; ``<op>_vs_<ref>`` their ratios. ``gb``: GB one rank moves per round; a
    rank with ``moves=False`` only keeps in step (its windows count, its bytes do not).
    """
    amount = gb if moves else 0.0
    seconds = timing.seconds()
    local: dict[str, Local] = {f"{op}_latency_s": seconds, f"{op}_GBps_per_rank": [gb / s for s in seconds]} if moves else {}
    specs = {f"{op}_latency_s": LATENCY, f"{op}_GBps_per_rank": PER_RANK_GBPS, f"{op}_GBps": AGGREGATE_GBPS}
    aggregates = {f"{op}_GBps": (timing.windows(), amount)}
    ratios = {}
    for name in timing.references:
        specs[f"{name}_{op}_GBps"] = AGGREGATE_GBPS
        aggregates[f"{name}_{op}_GBps"] = (timing.windows(name), amount)
        ratios[f"{op}_vs_{name}"] = (f"{op}_GBps", f"{name}_{op}_GBps")
    return {"local": local, "specs": specs, "aggregates": aggregates, "ratios": ratios}
