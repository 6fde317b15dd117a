"""Recording FOMs into a pytest-benchmark result: reduce over ranks, write ``extra_info``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from simai_core import mpi
from simai_core.fom import Fom, FomSpec, RunInfo, extra_info, ratio_fom, reduce_foms

# The put/get sweep's FOMs; ``*_vs_raw`` are derived from the reduced values.
LATENCY = FomSpec(unit="s", better="lower", combine="mean")
AGGREGATE_GBPS = FomSpec(unit="GB/s", better="higher", combine="sum")
COUNT = FomSpec(unit="count", better="higher", combine="sum")


def record(
    benchmark: Any,
    run: RunInfo,
    local: Mapping[str, float],
    specs: Mapping[str, FomSpec],
    ratios: Mapping[str, tuple[str, str]] | None = None,
) -> dict[str, Fom]:
    """Gather this rank's FOM values from every rank, reduce them, and store them in ``benchmark.extra_info``.

    Collective: every rank calls it once per benchmark. ``ratios`` maps a derived FOM name
    to ``(numerator, denominator)`` names, e.g. ``{"put_vs_raw": ("put_GBps", "raw_put_GBps")}``.
    """
    per_rank = mpi.gather_to_all(dict(local))
    foms = reduce_foms(per_rank, specs)
    for name, (num, den) in (ratios or {}).items():
        if num in foms and den in foms:
            rank_ratios = [r[num] / r[den] for r in per_rank if r.get(den)]
            foms[name] = ratio_fom(foms[num], foms[den], rank_ratios)
    benchmark.extra_info.update(extra_info(run, foms))
    return foms
