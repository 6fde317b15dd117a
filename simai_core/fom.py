"""Figures of merit (FOMs) and the ``extra_info`` schema they are written in.

A benchmark's ``extra_info`` in the pytest-benchmark JSON holds two blocks:

* ``simai``: ``{schema, level, motif, backend, backend_detail, deployment,
  world_size, machine, params, nodes, virtual_nodes}`` (see :class:`RunInfo`);
* ``fom``: ``{name: {value, unit, better, ranks: {min, mean, max}, samples, samples_layout}}``
  (see :class:`Fom`). GB means 1e9 bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

Better = Literal["higher", "lower"]
# How ``Fom.samples`` is laid out: one per round; one per rank; or rank-major, each rank's rounds in order.
SamplesLayout = Literal["rounds", "ranks", "ranks_x_rounds"]
Combine = Literal["mean", "sum", "max", "min", "window"]  # window: measured over the ranks' common window

_COMBINERS: dict[str, Callable[[list[float]], float]] = {
    "mean": lambda v: sum(v) / len(v),
    "sum": sum,
    "max": max,
    "min": min,
}


class RankSpread(BaseModel):
    """A FOM's value on the slowest, average and fastest rank."""

    model_config = ConfigDict(extra="forbid")
    min: float
    mean: float
    max: float


class Fom(BaseModel):
    """One figure of merit, reduced over ranks."""

    model_config = ConfigDict(extra="forbid")
    value: float = Field(description="The reported value (the combination over ranks its name implies)")
    unit: str = Field(description="Unit, e.g. 's', 'GB/s', '%', 'ratio', 'count'")
    better: Better = Field(description="Which direction is an improvement")
    ranks: RankSpread = Field(description="Spread of the per-rank values")
    samples: list[float] | None = Field(
        None, description="The observations behind `value`, in its unit, for statistical comparison: one per round "
                          "(measured aggregates) or one per round and rank, or one per rank (workflow figures)")
    samples_layout: SamplesLayout | None = Field(
        None, description="rounds (measured aggregates, ratios of them), ranks (one value per rank) or ranks_x_rounds "
                          "(rank-major: rank 0's rounds, then rank 1's, ...)")


class RunInfo(BaseModel):
    """The ``simai`` block: what ran, where, on what."""

    model_config = ConfigDict(extra="allow")
    schema_: int = Field(SCHEMA_VERSION, alias="schema")
    level: Literal["micro", "mini", "full"]
    motif: str | None = None
    backend: str
    backend_detail: dict[str, Any] = {}
    deployment: str | None = None
    world_size: int
    machine: str
    params: dict[str, Any] = {}
    nodes: int | None = Field(None, description="Nodes of the job (virtual ones when virtual_nodes)")
    virtual_nodes: bool = Field(False, description="True when the nodes are virtual: one machine's ranks split "
                                                   "into blocks, not separate machines")


class FomSpec(BaseModel):
    """How to report a FOM: its unit, its direction and how ranks combine."""

    model_config = ConfigDict(frozen=True)
    unit: str
    better: Better
    combine: Combine = "mean"


def reduce_foms(
    per_rank: Iterable[Mapping[str, float]], specs: Mapping[str, FomSpec]
) -> dict[str, Fom]:
    """Combine each rank's local FOM values (one mapping per rank) into :class:`Fom` records."""
    ranks = list(per_rank)
    foms: dict[str, Fom] = {}
    for name, spec in specs.items():
        values = [float(r[name]) for r in ranks if name in r]
        if not values:
            continue
        foms[name] = Fom(
            value=_COMBINERS[spec.combine](values),
            unit=spec.unit,
            better=spec.better,
            ranks=RankSpread(min=min(values), mean=sum(values) / len(values), max=max(values)),
            samples=values,
            samples_layout="ranks",
        )
    return foms


def ratio_fom(numerator: Fom, denominator: Fom, per_rank: Iterable[float] = ()) -> Fom:
    """A dimensionless ratio of two reduced FOMs (e.g. backend GB/s over raw GB/s).

    ``per_rank`` holds each rank's own ratio, for the spread; without it the spread is the value.
    """
    value = numerator.value / denominator.value if denominator.value else float("nan")
    spread = list(per_rank) or [value]
    paired = None  # round by round, where both FOMs were sampled in the same rounds
    if numerator.samples and denominator.samples and len(numerator.samples) == len(denominator.samples):
        paired = [n / d for n, d in zip(numerator.samples, denominator.samples, strict=True) if d]
    return Fom(value=value, unit="ratio", better=numerator.better,
               ranks=RankSpread(min=min(spread), mean=sum(spread) / len(spread), max=max(spread)), samples=paired,
               samples_layout=numerator.samples_layout if paired else None)


def extra_info(run: RunInfo, foms: Mapping[str, Fom]) -> dict[str, Any]:
    """The ``extra_info`` dictionary for one benchmark."""
    return {
        "simai": run.model_dump(by_alias=True),
        "fom": {name: fom.model_dump() for name, fom in foms.items()},
    }
