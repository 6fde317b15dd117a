"""A workflow's predicted staging traffic: its operations (:mod:`.workflow`) priced by the micro model (:mod:`.model`).

Per component rank and sync step: traffic seconds per category (``meta``, ``data``,
``checkpoint``: the mini benchmark's staging-traffic categories), the traffic share of
the component's wall time (``*_overhead_pct``), and the time to solution of ``N`` sync
steps. Only staging traffic and the emulated work are modelled: coupling compute
(inference, checkpoint load, graph build) and waits are not, so the predicted time to
solution is a lower bound and the predicted overhead share an upper bound.

Which micro curve prices which call (:func:`price`, printed per term as "latency from" and "bytes
from"): a simulation call made after more than a tick of work since the step's sleep is its
back-to-back cost plus the CPU wait fitted to the ``warm_busy`` cold-call variant (the callers computed
while the other ranks trained as the workflow's trainer does), except a put under a new key (a snapshot):
the ``warm_busy+fresh_key`` put, measured so, where the micro run has it, else the CPU wait plus what a
new key costs over an overwrite (fresh-key minus back-to-back put, at least 0). A
simulation rank's first call after its step's sleep with less work than that takes the latency of
the ``cold_busy`` (else ``cold``) curve, as does every first call in a micro run without
``warm_busy``; its snapshot puts take the fresh-key curve. The trainer's calls come from the
back-to-back curves. Without the variants at all, back to back, with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rich.console import Console
from rich.table import Table

from simai_core.predict.model import COLD, COLD_BUSY, FRESH_KEY, WARM_BUSY, CostModel, CpuWait, OpCost, variant
from simai_core.predict.workflow import Op, Shape, sim_ops, train_ops
from simai_core.workflow.timers import TRAFFIC

COMPONENTS = ("sim", "train")
Contention = Literal["node", "callers"]
BACK_TO_BACK = "back-to-back"
#: The cold-call benchmarks time tensors: a cold byte-string call takes the latency of the tensor call of its direction.
COLD_STAND_IN = {"get_bytes": "get_tensor", "put_bytes": "put_tensor"}


@dataclass(frozen=True)
class Term:
    """One operation kind's share of a component rank's traffic."""

    op: Op
    cost: OpCost  # one call, with ``clients`` micro ranks
    sync_steps: int
    clients: int
    latency_from: str = BACK_TO_BACK  # the micro curve the latency term comes from
    bytes_from: str = BACK_TO_BACK  # the micro curve the bytes / bandwidth term comes from

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
    cpu_wait: CpuWait | None = None  # what a simulation call after work waits for a CPU (None: no busy_warm run)

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


def _joined(*warnings: str | None) -> str | None:
    return "; ".join(w for w in warnings if w) or None


Priced = tuple[OpCost, str, str, list[str]]  # one call's cost, the curves of its latency and bytes, fall-back notes


def price(model: CostModel, op: Op, clients: int) -> Priced:
    """One call of ``op`` with ``clients`` micro ranks: its cost, the curves of its latency and bytes, fall-back notes.

    A simulation call made after work (``op.warm``, a share) is priced by :func:`price_warm` where the micro
    run has the ``warm_busy`` variant, the rest of its calls by :func:`price_after_sleep`; a call with both
    kinds costs their weighted mean.
    """
    wait = model.cpu_wait(clients) if op.component == "sim" and op.warm > 0 else None
    if wait is None:
        return price_after_sleep(model, op, clients)
    warm = price_warm(model, op, clients, wait)
    if op.warm >= 1:
        return warm
    cold, w = price_after_sleep(model, op, clients), op.warm
    blend = OpCost(w * warm[0].latency_s + (1 - w) * cold[0].latency_s,
                   w * warm[0].transfer_s + (1 - w) * cold[0].transfer_s, _joined(warm[0].warning, cold[0].warning))
    share = f"{w:.0%}: {{}}; {1 - w:.0%}: {{}}"
    return blend, share.format(warm[1], cold[1]), share.format(warm[2], cold[2]), warm[3] + cold[3]


def price_after_sleep(model: CostModel, op: Op, clients: int) -> Priced:
    """A call made without a tick of work since the step's sleep (or any trainer call).

    A put under a new key takes its bytes (and, if not a first call, its latency) from the fresh-key put
    curve; a first call after the step's idle time takes its latency from the cold-call curve of its op,
    measured with busy neighbours where the micro run has it (the workflow's trainer ranks compute while
    the simulation sleeps), else with idle ones; anything else is priced back to back.
    """
    notes: list[str] = []
    cost, bytes_from = model.cost(op.op, op.nbytes, clients), BACK_TO_BACK
    if op.fresh:
        if model.has(variant(op.op, FRESH_KEY)):
            cost, bytes_from = model.cost(variant(op.op, FRESH_KEY), op.nbytes, clients), "fresh-key"
        else:
            notes.append(f"the micro run has no fresh-key put (test_tensor_fresh_key) on {model.backend}: "
                         f"puts to new keys priced as overwrites of one key (back to back)")
    latency_from = bytes_from
    if op.first:
        base = COLD_STAND_IN.get(op.op, op.op)
        kind = next((k for k in (COLD_BUSY, COLD) if model.has(variant(base, k))), None)
        if kind:
            cold = model.cost(variant(base, kind), 0, clients)  # its latency only: no size, no size warning
            cost = OpCost(cold.latency_s, cost.transfer_s, _joined(cost.warning, cold.warning))
            latency_from = f"{kind} {base}" if base != op.op else kind
        else:
            notes.append(f"the micro run has no cold-call curve of {base} (test_metadata_cold, test_tensor_cold) on "
                         f"{model.backend}: first calls after the step's idle time priced back to back")
    return cost, latency_from, bytes_from, notes


def price_warm(model: CostModel, op: Op, clients: int, wait: CpuWait) -> Priced:
    """A simulation call at a sync point: back to back, plus the ``warm_busy`` CPU wait, plus a new key's surcharge.

    A put under a new key takes the ``warm_busy+fresh_key`` curve where the micro run has it: such a put
    measured as the workflow makes it (its page allocation and copy slowed by the trainer's memory traffic,
    which an overwrite's surcharge measured back to back does not see). Else: ``wait`` is the CPU wait
    fitted to the ``warm_busy`` variant (:meth:`CostModel.cpu_wait`). The
    simulation makes its calls after its own sync-point work (snapshot, inference, collectives' busy
    waits) while the trainer ranks train: a call waits for a CPU when its reply wakes it, and loses a
    share of its run time to the waking trainer ranks, as the variant's callers did (split between the
    latency and bytes terms by :meth:`CpuWait.added_to`). A put under a new key adds what the fresh-key
    put costs over the back-to-back overwrite at its size (at least 0: a backend that does not care adds
    nothing, not its noise).
    """
    measured = variant(op.op, f"{WARM_BUSY}+{FRESH_KEY}")
    if op.fresh and model.has(measured):
        return model.cost(measured, op.nbytes, clients), measured, measured, []
    plain = model.cost(op.op, op.nbytes, clients)
    cost, label, notes = wait.added_to(plain), f"{BACK_TO_BACK} + {WARM_BUSY} CPU wait", []
    bytes_from = label
    if op.fresh:
        if model.has(variant(op.op, FRESH_KEY)):
            fresh = model.cost(variant(op.op, FRESH_KEY), op.nbytes, clients)
            surcharge = max(0.0, fresh.seconds - plain.seconds)
            cost = OpCost(cost.latency_s, cost.transfer_s + surcharge, _joined(cost.warning, fresh.warning))
            bytes_from = f"{label} + fresh-key"
        else:
            notes.append(f"the micro run has no fresh-key put (test_tensor_fresh_key) on {model.backend}: "
                         f"puts to new keys priced as overwrites of one key")
    return cost, label, bytes_from, notes


def predict(model: CostModel, shape: Shape, sync_steps: int, steps: int | None = None,
            contention: Contention = "node") -> Prediction:
    """Price every operation of the workflow ``shape`` with ``model`` over ``sync_steps`` sync steps.

    ``steps``: time steps of the run (default: those ``sync_steps`` sync points span). ``contention``:
    ``node`` prices every call as measured with as many micro ranks as the workflow has (they share the
    node's cores and the staging server: on a node with fewer cores than ranks, a call waits for a CPU
    slice as often as it did in the micro run); ``callers`` as measured with as many ranks as make the
    same call at the same time (a server that is the only shared resource). Each call's curves:
    :func:`price`.
    """
    terms: list[Term] = []
    warnings: list[str] = list(model.warnings)
    for op in (*sim_ops(shape), *train_ops(shape)):
        if op.per_sync == 0 and op.once == 0:
            continue
        clients = shape.ranks if contention == "node" else op.callers
        cost, latency_from, bytes_from, notes = price(model, op, clients)
        terms.append(Term(op, cost, sync_steps, clients, latency_from, bytes_from))
        for w in [*notes, *(cost.warning.split("; ") if cost.warning else [])]:
            if w not in warnings:
                warnings.append(w)
    if steps is None:  # the run ends at its last sync point
        steps = (sync_steps - 1) * shape.train_interval + 1
    wait = model.cpu_wait(shape.ranks if contention == "node" else shape.sim_ranks)
    return Prediction(model.backend, shape, sync_steps, terms, steps, warnings, wait)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def terms_table(pred: Prediction) -> Table:
    """Where the time goes: one row per operation kind, per component rank and sync step."""
    table = Table(title=f"{pred.backend}: predicted staging traffic per rank and sync step ({pred.sync_steps} sync steps)")
    left = ("component", "category", "operation", "latency from", "bytes from")
    for name in ("component", "category", "operation", "bytes", "calls/sync", "clients", "latency ms", "latency from",
                 "bytes/bw ms", "bytes from", "per call ms", "per sync ms"):
        table.add_column(name, justify="left" if name in left else "right")
    for t in sorted(pred.terms, key=lambda t: (COMPONENTS.index(t.op.component), TRAFFIC.index(t.op.category))):
        table.add_row(t.op.component, t.op.category, t.op.what + (" *" if t.cost.warning else ""), str(t.op.nbytes),
                      f"{t.calls_per_sync:.3g}", str(t.clients), _ms(t.cost.latency_s), t.latency_from,
                      _ms(t.cost.transfer_s), t.bytes_from if t.op.nbytes else "",
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
    """Print the terms, the summary, the fitted CPU wait and every extrapolation warning."""
    console.print(terms_table(pred))
    console.print(summary_table(pred))
    if (wait := pred.cpu_wait) is not None:
        console.print(f"CPU wait of a simulation call after work: {_ms(wait.per_call_s)} ms per call + "
                      f"{100 * wait.share:.0f} % of its back-to-back time (fitted to {wait.points} busy_warm "
                      "measurements)", markup=False, highlight=False)
    for warning in pred.warnings:
        console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    if pred.warnings:
        console.print("(* marks an operation whose cost was extrapolated)", markup=False, highlight=False)
