"""A workflow's predicted staging traffic: its operations (:mod:`.workflow`) priced by the micro model (:mod:`.model`).

Per component rank and sync step: traffic seconds per category (``meta``, ``data``,
``checkpoint``: the mini benchmark's staging-traffic categories), the traffic share of
the component's wall time (``*_overhead_pct``), and the time to solution of ``N`` sync
steps. Only staging traffic and the emulated work are modelled: coupling compute
(inference, checkpoint load, graph build) and waits are not, so the predicted time to
solution is a lower bound and the predicted overhead share an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rich.console import Console
from rich.table import Table

from simai_core.predict.model import CostModel, OpCost
from simai_core.predict.workflow import Op, Shape, sim_ops, train_ops
from simai_core.workflow.timers import TRAFFIC

COMPONENTS = ("sim", "train")
Contention = Literal["node", "callers"]


@dataclass(frozen=True)
class Term:
    """One operation kind's share of a component rank's traffic."""

    op: Op
    cost: OpCost  # one call, with ``clients`` micro ranks
    sync_steps: int
    clients: int

    @property
    def calls_per_sync(self) -> float:
        """Calls per rank per sync step, the once-per-run calls spread over the run's sync steps."""
        return self.op.per_sync + self.op.once / self.sync_steps

    @property
    def seconds_per_sync(self) -> float:
        """Seconds per rank per sync step."""
        return self.calls_per_sync * self.cost.seconds


@dataclass
class Prediction:
    """Predicted traffic of one workflow on one backend."""

    backend: str
    shape: Shape
    sync_steps: int
    terms: list[Term]
    steps: int
    warnings: list[str] = field(default_factory=list)

    def traffic_s(self, component: str, category: str | None = None) -> float:
        """Traffic seconds per rank per sync step (one category, or all of them)."""
        return sum(t.seconds_per_sync for t in self.terms
                   if t.op.component == component and (category is None or t.op.category == category))

    @property
    def sync_wall_s(self) -> float:
        """Wall time per sync step of the run (the trainer runs as long as the simulation)."""
        return self.time_to_solution_s / self.sync_steps

    def overhead_pct(self, component: str) -> float:
        """Traffic share of the component's wall time (percent)."""
        wall = self.sync_wall_s
        return 100.0 * self.traffic_s(component) / wall if wall > 0 else 0.0

    @property
    def time_to_solution_s(self) -> float:
        """The simulation's wall time: emulated work of every step plus traffic of every sync step (nothing else)."""
        return self.steps * self.shape.step_time_s + self.sync_steps * self.traffic_s("sim")


def predict(model: CostModel, shape: Shape, sync_steps: int, steps: int | None = None,
            contention: Contention = "node") -> Prediction:
    """Price every operation of the workflow ``shape`` with ``model`` over ``sync_steps`` sync steps.

    ``steps``: time steps of the run (default: those ``sync_steps`` sync points span). ``contention``:
    ``node`` prices every call as measured with as many micro ranks as the workflow has (they share the
    node's cores and the staging server: on a node with fewer cores than ranks, a call waits for a CPU
    slice as often as it did in the micro run); ``callers`` as measured with as many ranks as make the
    same call at the same time (a server that is the only shared resource).
    """
    terms: list[Term] = []
    warnings: list[str] = []
    for op in (*sim_ops(shape), *train_ops(shape)):
        if op.per_sync == 0 and op.once == 0:
            continue
        clients = shape.ranks if contention == "node" else op.callers
        cost = model.cost(op.op, op.nbytes, clients)
        terms.append(Term(op, cost, sync_steps, clients))
        if cost.warning:
            warnings.extend(w for w in cost.warning.split("; ") if w not in warnings)
    if steps is None:  # the run ends at its last sync point
        steps = (sync_steps - 1) * shape.train_interval + 1
    return Prediction(model.backend, shape, sync_steps, terms, steps, warnings)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def terms_table(pred: Prediction) -> Table:
    """Where the time goes: one row per operation kind, per component rank and sync step."""
    table = Table(title=f"{pred.backend}: predicted staging traffic per rank and sync step ({pred.sync_steps} sync steps)")
    for name in ("component", "category", "operation", "bytes", "calls/sync", "clients", "latency ms",
                 "bytes/bw ms", "per call ms", "per sync ms"):
        table.add_column(name, justify="left" if name in ("component", "category", "operation") else "right")
    for t in sorted(pred.terms, key=lambda t: (COMPONENTS.index(t.op.component), TRAFFIC.index(t.op.category))):
        table.add_row(t.op.component, t.op.category, t.op.what + (" *" if t.cost.warning else ""), str(t.op.nbytes),
                      f"{t.calls_per_sync:.3g}", str(t.clients), _ms(t.cost.latency_s), _ms(t.cost.transfer_s),
                      _ms(t.cost.seconds), _ms(t.seconds_per_sync))
    return table


def summary_table(pred: Prediction) -> Table:
    """Per component: traffic per sync step by category, overhead share, and the time to solution."""
    table = Table(title=f"{pred.backend}: predicted per component rank")
    for name in ("component", "meta ms/sync", "data ms/sync", "checkpoint ms/sync", "traffic ms/sync",
                 "sync step s", "overhead %", "time to solution s"):
        table.add_column(name, justify="left" if name == "component" else "right")
    for comp in COMPONENTS:
        table.add_row(comp, *(_ms(pred.traffic_s(comp, c)) for c in TRAFFIC), _ms(pred.traffic_s(comp)),
                      f"{pred.sync_wall_s:.3f}", f"{pred.overhead_pct(comp):.3f}",
                      f"{pred.time_to_solution_s:.1f}" if comp == "sim" else "")
    return table


def render(pred: Prediction, console: Console) -> None:
    """Print the terms, the summary and every extrapolation warning."""
    console.print(terms_table(pred))
    console.print(summary_table(pred))
    for warning in pred.warnings:
        console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    if pred.warnings:
        console.print("(* marks an operation whose cost was extrapolated)", markup=False, highlight=False)
