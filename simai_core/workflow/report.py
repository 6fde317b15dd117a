"""What each component rank reports at the end, and the motif-6 FOMs derived from it."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from simai_core.fom import FomSpec
from simai_core.workflow.timers import COUPLING_COMPUTE, TRAFFIC, Accounting


class Outcome(BaseModel):
    """How the workflow ended (the ``simai.outcome`` block)."""

    model_config = ConfigDict(extra="forbid")
    converged: bool = Field(description="The surrogate met the criterion for the required consecutive checks")
    reason: str = Field(description="skill | tolerance (criterion met) | max_steps | error")
    criterion: str = Field("skill", description="skill: skill >= min_skill per check; mse: MSE <= tolerance (reference)")
    final_mse: float | None = Field(description="Last inference MSE over all simulation points (None: no model yet)")
    tolerance: float = Field(description="The MSE threshold of a successful check (criterion mse)")
    min_skill: float | None = Field(None, description="The skill threshold of a successful check (criterion skill)")
    persistence_mse: float | None = Field(
        None, description="MSE of predicting no change (fields at t+1 = fields at t) on the same points: the bar a "
                          "surrogate must clear to have learnt anything")
    skill: float | None = Field(None, description="1 - final_mse / persistence_mse: > 0 when the surrogate beats persistence")
    steps: int = Field(0, description="Time steps the simulation ran")
    checks_passed: int = Field(0, description="Consecutive successful checks at the end")


class ComponentReport(BaseModel):
    """One component rank's accounting, counters and events."""

    model_config = ConfigDict(extra="forbid")
    component: str = Field(description="sim or train")
    rank: int = Field(description="Rank in the component communicator")
    world_rank: int = Field(0, description="Rank in the job")
    scope: int = Field(0, description="Staging scope (node if colocated)")
    wall_s: float = Field(0.0, description="Component wall time")
    seconds: dict[str, float] = Field(default_factory=dict, description="Seconds per category")
    unaccounted_s: float = Field(0.0, description="Wall time outside every category")
    transfer_bytes: dict[str, int] = Field(default_factory=dict, description="Bytes moved per category")
    transfer_seconds: dict[str, float] = Field(default_factory=dict, description="Seconds of those transfers")
    counts: dict[str, int] = Field(default_factory=dict, description="Sections per category")
    steps: int = Field(0, description="Simulation steps run (sim)")
    epochs: int = Field(0, description="Epochs trained (train)")
    outcome: Outcome | None = Field(None, description="Set by the simulation")
    error: str | None = Field(None, description="Failure message, when the component failed")
    detail: dict[str, Any] = Field(default_factory=dict, description="Facts for the JSON (builder, device, ...)")
    events: list[dict[str, Any]] = Field(default_factory=list, description="Per-event samples")

    @classmethod
    def from_accounting(cls, acc: Accounting, **fields: Any) -> ComponentReport:
        """A report holding ``acc``'s totals and events."""
        s = acc.summary()
        return cls(component=acc.component, rank=acc.rank, wall_s=s["wall_s"], seconds=s["seconds"],
                   unaccounted_s=s["unaccounted_s"], transfer_bytes=s["transfer_bytes"],
                   transfer_seconds=s["transfer_seconds"], counts=s["counts"], events=acc.events, **fields)

    def pct(self, category: str) -> float:
        """Share of the wall time in ``category`` (percent)."""
        return 100.0 * self.seconds.get(category, 0.0) / self.wall_s if self.wall_s > 0 else 0.0

    def GBps(self, category: str) -> float | None:
        """Throughput of the category's transfers (GB = 1e9 B), None without transfers."""
        seconds = self.transfer_seconds.get(category, 0.0)
        return self.transfer_bytes.get(category, 0) / seconds / 1e9 if seconds > 0 else None


_PCT = FomSpec(unit="%", better="lower", combine="mean")
_WORST_PCT = FomSpec(unit="%", better="lower", combine="max")
_GBPS_PER_RANK = FomSpec(unit="GB/s", better="higher", combine="mean")

#: Coupling-compute categories each component can spend time in.
COMPUTE_PARTS = {"sim": ("graph_build", "checkpoint_load", "inference"),
                 "train": ("process_group", "checkpoint_serialize")}


def _component_foms(p: str) -> dict[str, FomSpec]:
    parts = ("overhead", *TRAFFIC, "coupling_compute", *COMPUTE_PARTS[p], "compute", "wait")
    return {**{f"{p}_{part}_pct": _PCT for part in parts}, f"{p}_unaccounted_pct": _WORST_PCT}


#: The motif-6 FOMs: how each is reported and combined over the ranks that report it.
#: ``*_overhead_pct`` is staging traffic only (meta + data + checkpoint transfer);
#: ``*_coupling_compute_pct`` the coupling's own compute (graph build, process group,
#: checkpoint serialise/load, inference). Throughputs are per rank (bytes over seconds of
#: that rank's transfers), averaged over the ranks that made transfers: not an aggregate.
MOTIF6_FOMS: dict[str, FomSpec] = {
    "time_to_solution_s": FomSpec(unit="s", better="lower", combine="max"),
    "trainer_time_s": FomSpec(unit="s", better="lower", combine="max"),
    **_component_foms("sim"), **_component_foms("train"),
    "sim_data_GBps_per_rank": _GBPS_PER_RANK, "train_data_GBps_per_rank": _GBPS_PER_RANK,
    "sim_checkpoint_GBps_per_rank": _GBPS_PER_RANK, "train_checkpoint_GBps_per_rank": _GBPS_PER_RANK,
    "epochs": FomSpec(unit="count", better="higher", combine="max"),
    "steps": FomSpec(unit="count", better="lower", combine="max"),
    "final_mse": FomSpec(unit="mse", better="lower", combine="mean"),
    "final_skill": FomSpec(unit="ratio", better="higher", combine="mean"),
    "final_loss": FomSpec(unit="mse", better="lower", combine="mean"),
    "discarded_steps": FomSpec(unit="count", better="lower", combine="sum"),  # streamed data path only
}


def local_foms(report: ComponentReport) -> dict[str, float]:
    """This component rank's values of the motif-6 FOMs (names are unique per component).

    A figure this rank never measured (no loss yet, no model to check, no transfer) is left
    out, so it is null in the JSON rather than 0.
    """
    p = "sim" if report.component == "sim" else "train"
    compute_parts = COMPUTE_PARTS[p]
    out: dict[str, float] = {
        f"{p}_overhead_pct": sum(report.pct(c) for c in TRAFFIC),
        f"{p}_coupling_compute_pct": sum(report.pct(c) for c in COUPLING_COMPUTE),
        **{f"{p}_{c}_pct": report.pct(c) for c in (*TRAFFIC, *compute_parts, "compute", "wait")},
        f"{p}_unaccounted_pct": 100.0 * report.unaccounted_s / report.wall_s if report.wall_s > 0 else 0.0,
    }
    _put(out, f"{p}_data_GBps_per_rank", report.GBps("data"))
    _put(out, f"{p}_checkpoint_GBps_per_rank", report.GBps("checkpoint"))
    if p == "sim":
        out |= {"time_to_solution_s": report.wall_s, "steps": float(report.steps)}
        for name, value in report.detail.get("producer_foms", {}).items():  # a solver's compile time, throughput
            _put(out, name, value)
        if report.outcome is not None:
            _put(out, "final_mse", report.outcome.final_mse)
            _put(out, "final_skill", report.outcome.skill)
    else:
        out |= {"trainer_time_s": report.wall_s, "epochs": float(report.epochs)}
        _put(out, "final_loss", report.detail.get("final_loss"))
        _put(out, "discarded_steps", report.detail.get("stream_discarded_steps"))
        _put(out, "train_samples_per_s", report.detail.get("train_samples_per_s"))
    return out


def _put(out: dict[str, float], name: str, value: float | None) -> None:
    if value is not None and math.isfinite(value):
        out[name] = float(value)


#: The full level's FOMs: the motif-6 ones plus the solver's and the trainer's own rates and the
#: nekRS-ML style combined figure (see :func:`combined_rate`).
FULL_FOMS: dict[str, FomSpec] = {
    **MOTIF6_FOMS,
    "compile_time_s": FomSpec(unit="s", better="lower", combine="max"),
    "solver_GPtsps": FomSpec(unit="GPts/s", better="higher", combine="sum"),
    "train_samples_per_s": FomSpec(unit="samples/s", better="higher", combine="sum"),
}

#: The terms of the combined figure, each in the unit it enters the harmonic mean with.
COMBINED_TERMS = {"solver": "GPts/s (grid-point updates, all simulation ranks)",
                  "training": "Msamples/s (grid points through forward and backward, all trainer ranks)",
                  "transfer": "GB/s (the simulation's sample puts, per rank)"}
COMBINED_SPEC = FomSpec(unit="harmonic mean of GPts/s, Msamples/s, GB/s", better="higher", combine="mean")


def combined_rate(reports: list[ComponentReport]) -> dict[str, float] | None:
    """The solver, training and transfer rates (units of :data:`COMBINED_TERMS`) and their harmonic mean.

    None when a term was never measured (no solver throughput, no training, no transfer).
    """
    sims = [r for r in reports if r.component == "sim"]
    trainers = [r for r in reports if r.component == "train"]
    solver = sum(r.detail.get("producer_foms", {}).get("solver_GPtsps", 0.0) for r in sims)
    training = sum(r.detail.get("train_samples_per_s") or 0.0 for r in trainers) / 1e6
    rates = [g for g in (r.GBps("data") for r in sims) if g is not None]
    transfer = sum(rates) / len(rates) if rates else 0.0
    terms = {"solver": solver, "training": training, "transfer": transfer}
    if min(terms.values()) <= 0:
        return None
    return {**terms, "combined": len(terms) / sum(1.0 / v for v in terms.values())}
