"""The cost of one staging operation, from the micro benchmarks' per-op times.

Per operation: ``cost = latency + bytes / bandwidth``.

* A :class:`Curve` holds one operation's measured per-op times (``<op>_latency_s``: the
  mean over every round on every rank) at the sizes the micro benchmark swept, all with
  one number of clients at once (the run's world size). Its latency is the intercept of
  the line through the smallest size and the next one at least 4x larger; the bandwidth
  at every other measured size is ``nbytes / (time - latency)``. Between measured sizes
  the bandwidth is interpolated in log-size (log-log), so the curve passes through every
  measured point; outside the measured range the bandwidth of the nearest measured size
  is kept (the model extrapolates) and the cost carries a warning.
* Contention (:class:`CostModel`): a call made while ``c`` ranks run costs what one op
  cost while ``c`` micro ranks ran it at once, interpolated linearly
  between the measured rank counts (one micro run per world size); outside them the
  nearest count's cost is kept, with a warning. The measured aggregates (``<op>_GBps``,
  all ranks' bytes over the round's common window) are not used: the window includes
  the ranks' start skew after the round's barrier, which on an oversubscribed node is
  milliseconds and would be charged to every small operation, whereas the workflow's
  accounting times each rank's own call.
* Variants (:func:`variant`): ``cold:<op>`` from the cold-call micro benchmarks
  (``test_metadata_cold``, ``test_tensor_cold``: one call per round after an idle sleep;
  ``cold_busy:<op>`` where the odd ranks computed meanwhile: ``neighbours=busy``; ``warm_busy:<op>`` where,
  besides, the calling ranks computed before the call: ``neighbours=busy_warm``) and
  ``fresh_key:put_tensor`` from ``test_tensor_fresh_key`` (each put under a new key) are curves of
  their own, read the same way, as is ``warm_busy+fresh_key:put_tensor`` from ``test_tensor_cold_fresh_key``
  (a ``busy_warm`` put under a new key: a snapshot put at a sync point).
* The ``busy_warm`` neighbours train as the motif-6 trainer does at one problem size
  (``trainer_size``); :func:`cost_model` keeps the ``busy_warm`` benchmarks of the workflow's size
  when the micro runs have them, else all of them, with a warning.
* CPU wait (:meth:`CostModel.cpu_wait`): what a ``warm_busy`` call cost beyond the back-to-back call
  of its op and size, fitted over all of them as a Theil-Sen line ``per_call_s + share * t`` (``t``:
  the back-to-back time): the wait for a CPU when the reply wakes the caller, and the share of its
  own run time lost to neighbours that preempt it. One fit over every op and size of a backend,
  because each benchmark's mean is carried by a few slow calls of a heavy tail, too few to price an
  op alone.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from scipy.stats import theilslopes

from simai_core.report.loading import Bench, Run

#: Operations the model knows: the staging client's verbs (``exists`` also stands for a
#: get of a missing key and for a delete: one round trip that moves no value).
OPS = ("put_tensor", "get_tensor", "put_bytes", "get_bytes", "exists")
#: Curve variants beside the back-to-back one: a call after an idle sleep (with the other ranks asleep too,
#: or computing: ``neighbours=busy``; computing while the caller also computed before its call:
#: ``neighbours=busy_warm``), a put under a new key.
COLD, COLD_BUSY, WARM_BUSY, FRESH_KEY = "cold", "cold_busy", "warm_busy", "fresh_key"
#: The cold-call benchmarks' ``neighbours`` parameter -> the curve variant it measures.
NEIGHBOURS = {"idle": COLD, "busy": COLD_BUSY, "busy_warm": WARM_BUSY}


def variant(op: str, kind: str | None) -> str:
    """The curve name of ``op`` measured as ``kind`` (:data:`COLD`, :data:`FRESH_KEY`; None: back to back)."""
    return f"{kind}:{op}" if kind else op


@dataclass(frozen=True)
class Sample:
    """One measured size of an operation: its per-op time with the curve's clients."""

    nbytes: int
    seconds: float


@dataclass(frozen=True)
class OpCost:
    """What one operation costs: ``latency_s + transfer_s``; ``warning`` when the model extrapolated."""

    latency_s: float
    transfer_s: float
    warning: str | None = None

    @property
    def seconds(self) -> float:
        """The whole per-op time."""
        return self.latency_s + self.transfer_s

    def scaled(self, factor: float, warning: str | None = None) -> OpCost:
        """Both terms times ``factor``; the warnings of both joined."""
        joined = "; ".join(w for w in (self.warning, warning) if w) or None
        return OpCost(self.latency_s * factor, self.transfer_s * factor, joined)


def _intercept(a: Sample, b: Sample) -> float:
    """Latency: where the line through two measured sizes meets zero bytes, kept within [0, a.seconds]."""
    if b.nbytes == a.nbytes:
        return a.seconds
    latency = (a.seconds * b.nbytes - b.seconds * a.nbytes) / (b.nbytes - a.nbytes)
    return min(max(latency, 0.0), a.seconds)


@dataclass(frozen=True)
class Curve:
    """One operation measured at several sizes with ``clients`` clients at once."""

    op: str
    clients: int
    samples: tuple[Sample, ...]
    source: str = ""

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError(f"{self.op}: a curve needs at least one measured size")
        object.__setattr__(self, "samples", tuple(sorted(self.samples, key=lambda s: s.nbytes)))

    @property
    def latency_s(self) -> float:
        """The fixed per-op cost: the zero-byte intercept through the smallest size and the next one at least 4x larger.

        (Two sizes closer than that, such as two checkpoint formats, leave the intercept to the noise.)
        """
        s = self.samples
        if len(s) == 1:
            return s[0].seconds
        wider = next((x for x in s[1:] if x.nbytes >= 4 * max(s[0].nbytes, 1)), s[-1])
        return _intercept(s[0], wider)

    def _log_bandwidths(self) -> list[float]:
        """ln(bytes/s) of the transfer term at each measured size (the smallest takes its neighbour's)."""
        lat = self.latency_s
        # A larger size measured no slower than the latency (noise) gets a tiny transfer term, not a negative one.
        logs = [math.log(s.nbytes / max(s.seconds - lat, 1e-12 * s.seconds, 1e-15)) if s.nbytes > 0 else math.nan
                for s in self.samples]
        if len(logs) > 1:
            logs[0] = logs[1]
        return logs

    def cost(self, nbytes: int) -> OpCost:
        """The per-op cost at ``nbytes`` with the curve's clients."""
        s, lat = self.samples, self.latency_s
        if len(s) == 1 or nbytes <= 0 or s[-1].nbytes <= 0:
            return OpCost(lat, 0.0)  # a round trip that moves no value, or a size the op does not have
        sizes = [x.nbytes for x in s]
        logs = self._log_bandwidths()
        warning = None
        if nbytes < sizes[0]:
            log_bw, warning = logs[0], f"{self.op} at {nbytes} B: below the smallest measured size ({sizes[0]} B)"
        elif nbytes > sizes[-1]:
            log_bw, warning = logs[-1], f"{self.op} at {nbytes} B: above the largest measured size ({sizes[-1]} B)"
        else:
            i = bisect.bisect_left(sizes, nbytes)
            if sizes[i] == nbytes:
                log_bw = logs[i]
            else:
                w = math.log(nbytes / sizes[i - 1]) / math.log(sizes[i] / sizes[i - 1])
                log_bw = (1 - w) * logs[i - 1] + w * logs[i]
        if warning:
            warning += f", extrapolated with that size's bandwidth ({self.source or self.op})"
        return OpCost(lat, nbytes / math.exp(log_bw), warning)


@dataclass(frozen=True)
class CpuWait:
    """What a call costs beyond its back-to-back time ``t`` when it waits for a CPU: ``per_call_s + share * t``."""

    per_call_s: float
    share: float
    points: int  # the warm_busy measurements it was fitted to

    def added_to(self, plain: OpCost) -> OpCost:
        """``plain``, a back-to-back cost, with the wait added.

        ``per_call_s`` and the share of the latency go to the latency term, the share of the transfer to
        the transfer term.
        """
        return OpCost(plain.latency_s * (1 + self.share) + self.per_call_s, plain.transfer_s * (1 + self.share),
                      plain.warning)


def fit_cpu_wait(points: Sequence[tuple[float, float]]) -> CpuWait:
    """A Theil-Sen line ``excess = per_call_s + share * t`` through ``(t, excess)`` points, both terms kept >= 0.

    The slope is the median of the pairwise slopes, the intercept the median of ``excess - share * t``, so
    the few points of one size whose own mechanism adds time (SmartSim's 2 MiB calls in a fresh process)
    do not set every call's wait, as they did a least-squares line's.
    """
    n = len(points)
    if n == 0:
        raise ValueError("no points to fit")
    ts, excess = [t for t, _ in points], [y for _, y in points]
    if len(set(ts)) < 2:
        return CpuWait(max(statistics.median(excess), 0.0), 0.0, n)
    share, per_call, *_ = theilslopes(excess, ts, method="joint")
    if share < 0:  # no growth with the call's length: a constant wait
        return CpuWait(max(statistics.median(excess), 0.0), 0.0, n)
    return CpuWait(max(float(per_call), 0.0), float(share), n)  # below zero: a share only, no wait of its own


@dataclass
class CostModel:
    """Every measured curve of one backend, by operation and client count."""

    backend: str
    curves: dict[str, dict[int, Curve]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what the micro runs lack for the workflow priced

    def add(self, curve: Curve) -> None:
        """Add a curve (one op, one client count); a second curve of the same op and count merges its sizes."""
        mine = self.curves.setdefault(curve.op, {})
        old = mine.get(curve.clients)
        if old is not None:
            sources = list(dict.fromkeys([*old.source.split("; "), curve.source]))
            curve = Curve(curve.op, curve.clients, old.samples + curve.samples, "; ".join(sources))
        mine[curve.clients] = curve

    def has(self, op: str) -> bool:
        """Whether the micro run measured the curve ``op`` (a :func:`variant` name)."""
        return bool(self.curves.get(op))

    def cost(self, op: str, nbytes: int, clients: int) -> OpCost:
        """One op of ``nbytes`` while ``clients`` ranks do the same: the per-op time measured with that many clients.

        Between measured client counts the cost is interpolated linearly in the count; outside them the
        nearest count's cost is kept, with a warning.
        """
        by_count = self.curves.get(op)
        if not by_count:
            raise KeyError(f"the micro run has no measurement of {op} on {self.backend}")
        counts = sorted(by_count)
        at = {w: by_count[w].cost(nbytes) for w in counts}
        if clients in at:
            return at[clients]
        if clients < counts[0] or clients > counts[-1]:
            near = counts[0] if clients < counts[0] else counts[-1]
            return at[near].scaled(1.0, f"{op} with {clients} concurrent client(s): measured with "
                                        f"{', '.join(map(str, counts))}, the {near}-client cost kept")
        hi = bisect.bisect_left(counts, clients)
        a, b = at[counts[hi - 1]], at[counts[hi]]
        w = (clients - counts[hi - 1]) / (counts[hi] - counts[hi - 1])
        return OpCost((1 - w) * a.latency_s + w * b.latency_s, (1 - w) * a.transfer_s + w * b.transfer_s,
                      "; ".join(x for x in (a.warning, b.warning) if x) or None)

    def cpu_wait(self, clients: int) -> CpuWait | None:
        """The CPU wait fitted to every ``warm_busy`` measurement with ``clients`` ranks (or the nearest count).

        Each measurement is set against the back-to-back call of its op and size; None without any.
        """
        counts = sorted({c for op, by_count in self.curves.items() if op.startswith(f"{WARM_BUSY}:") for c in by_count})
        if not counts:
            return None
        near = min(counts, key=lambda c: (abs(c - clients), c))
        points = []
        for op, by_count in self.curves.items():
            base = op.removeprefix(f"{WARM_BUSY}:")
            if base == op or near not in by_count or not self.has(base):
                continue
            for sample in by_count[near].samples:
                plain = self.cost(base, sample.nbytes, near).seconds
                points.append((plain, sample.seconds - plain))
        return fit_cpu_wait(points) if points else None

    def describe(self) -> list[str]:
        """One line per curve: what was measured, at which sizes and client counts."""
        lines = []
        for op in sorted(self.curves, key=lambda c: (c.split(":")[-1], c)):
            for w, curve in sorted(self.curves[op].items()):
                sizes = [s.nbytes for s in curve.samples]
                span = f"{min(sizes)}-{max(sizes)} B" if max(sizes) > 0 else "no value"
                lines.append(f"{op}: {w} client(s), {len(sizes)} size(s) {span} ({curve.source})")
        return lines


# --- reading a micro run --------------------------------------------------------------------------------------------


def _value(bench: Bench, fom: str) -> float | None:
    """The mean per-op time over every round on every rank (``samples``), else the FOM's value (a median).

    A workflow's traffic is a sum of calls, whose expectation is the mean call, not the median: on a
    busy node the rare call that waits for a CPU slice weighs in the sum.
    """
    f = bench.foms.get(fom)
    if f is None:
        return None
    values = [x for x in (f.samples or [f.value]) if math.isfinite(x) and x > 0]
    return sum(values) / len(values) if values else None


def _points(bench: Bench) -> Iterable[tuple[str, int, Sample]]:
    """(curve, clients, sample) that one micro benchmark contributes: its per-rank per-op time (``*latency_s``)."""
    params, world, name = bench.params, bench.world_size or 1, bench.base_name
    op, nbytes = params.get("op"), params.get("nbytes")
    scalar = {"put_scalar": ("put_tensor", 8), "get_scalar": ("get_tensor", 8), "exists": ("exists", 0)}
    cold = NEIGHBOURS.get(str(params.get("neighbours", "idle")), COLD)
    if name == "test_tensor" and op in ("put", "get") and isinstance(nbytes, int):
        t = _value(bench, f"{op}_latency_s")
        if t:
            yield f"{op}_tensor", world, Sample(nbytes, t)
    elif name == "test_checkpoint" and op in ("push", "pull") and isinstance(nbytes, int):
        t = _value(bench, f"{op}_latency_s")
        if t:  # rank 0 pushes while the other ranks keep in step on the node; every rank pulls
            yield ("put_bytes" if op == "push" else "get_bytes"), world, Sample(nbytes, t)
    elif name == "test_metadata" and op in ("put_scalar", "exists"):
        t = _value(bench, "latency_s")
        if t:  # put_scalar stores an 8-byte tensor: the put curve's smallest size
            yield scalar[op][0], world, Sample(scalar[op][1], t)
    elif name == "test_metadata_cold" and op in scalar:
        t = _value(bench, "cold_latency_s")
        if t:
            yield variant(scalar[op][0], cold), world, Sample(scalar[op][1], t)
    elif name == "test_tensor_cold" and op in ("put", "get") and isinstance(nbytes, int):
        t = _value(bench, "cold_latency_s")
        if t:
            yield variant(f"{op}_tensor", cold), world, Sample(nbytes, t)
    elif name == "test_tensor_cold_fresh_key" and isinstance(nbytes, int):
        t = _value(bench, "cold_latency_s")
        if t:
            yield variant("put_tensor", f"{cold}+{FRESH_KEY}"), world, Sample(nbytes, t)
    elif name == "test_tensor_fresh_key" and isinstance(nbytes, int):
        t = _value(bench, "fresh_key_put_latency_s")
        if t:
            yield variant("put_tensor", FRESH_KEY), world, Sample(nbytes, t)


#: The trainer size of a run made before ``--simai-trainer-size`` (its neighbours computed 64x64 products in 2.5 ms bursts).
UNRECORDED = "unrecorded (2.5 ms bursts)"


def trainer_size(bench: Bench) -> str | None:
    """The problem size whose trainer a ``busy_warm`` benchmark's neighbours emulated (None: not ``busy_warm``)."""
    if bench.params.get("neighbours") != "busy_warm":
        return None
    return str(bench.params.get("trainer_size", UNRECORDED))


def cost_model(runs: Sequence[Run], backend: str, problem_size: str | None = None) -> CostModel:
    """The cost model of ``backend`` from one or more micro runs (one per world size, say).

    ``problem_size``: the workflow's; of the ``busy_warm`` benchmarks, only those whose neighbours
    trained as its trainer does are kept, if the runs have any (else all, with a warning). None: all.
    """
    model = CostModel(backend)
    benches = [(run, b) for run in runs for b in run.benches if b.level == "micro" and b.backend == backend]
    trained = sorted({size for _, b in benches if (size := trainer_size(b)) is not None})
    keep = problem_size if problem_size in trained else None
    if problem_size is not None and trained and keep is None:
        model.warnings.append(
            f"no busy_warm benchmark of the micro run(s) had neighbours training as on {problem_size} (they trained "
            f"as on: {', '.join(trained)}); calls after work are priced with them (run the busy_warm benchmarks "
            f"with --simai-trainer-size {problem_size})")
    for run, bench in benches:
        if keep is not None and trainer_size(bench) not in (None, keep):
            continue
        for op, clients, sample in _points(bench):
            model.add(Curve(op, clients, (sample,), f"{bench.base_name} {bench.params.get('op')} ({run.label})"))
    return model


def backends(runs: Sequence[Run]) -> list[str]:
    """The backends the micro runs measured, in order of appearance."""
    seen: dict[str, None] = {}
    for run in runs:
        for bench in run.benches:
            if bench.level == "micro" and bench.backend:
                seen.setdefault(bench.backend)
    return list(seen)
