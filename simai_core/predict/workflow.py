"""The motif-6 workflow's staging operations, counted from its parameters (no run needed).

The counts follow the workflow's own code (``simai_core.workflow``): per sync step every
simulation rank puts its snapshot (``data``) and fetches the newest checkpoint when the
trainer published one (``checkpoint``); the simulation head reads the trainer's status
and error keys and writes its heartbeat (``meta``), and writes a heartbeat at the steps
between syncs once ``heartbeat_interval_s`` has passed. Each trainer rank gets and deletes
the snapshots of the simulation ranks it owns (``data``); its head reads the simulation's
status once per loop iteration, pushes a checkpoint every ``checkpoint_every`` epochs and
writes heartbeats (``meta``). Figures are per rank, averaged over the component's ranks
(a head's operations count 1 / ranks), as the mini benchmark's ``*_pct`` FOMs are.

Two things the micro benchmark's back-to-back calls on one key do not see are marked per call:
``first``, the first staging call a simulation rank makes after its step's emulated work (a
sleep: the head's trainer error-key read, another rank's checkpoint fetch, or its snapshot put
when no checkpoint is due; each heartbeat between syncs); and ``fresh``, a put under a key that
did not exist (every snapshot). ``warm`` is the share of an op's calls made after more CPU work
since the step's sleep than a scheduler tick (:data:`WARM_AFTER_S`), while the trainer trains:
the ``busy_warm`` cold-call variant prices those (a call that has spent its sleep's credit waits
for a CPU). The work before each call is the workflow's own, timed by ``predict`` on this CPU:
the snapshot's build (before every call of the step), then, at a sync point with a new
checkpoint, its load (before the snapshot put and the heartbeat after it). The trainer's calls
follow its training and are priced back to back.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np

from simai_core.workflow.config import WorkflowConfig
from simai_core.workflow.layout import split_count
from simai_core.workflow.problem import problem_spec

INT64 = np.dtype(np.int64).itemsize
SIM_STATUS_BYTES = 3 * INT64  # [last_complete_step, stop_code, heartbeat]
TRAIN_STATUS_BYTES = 4 * INT64  # [checkpoint_version, epoch, done, heartbeat]
SIZE_BYTES = 6 * INT64  # meta/size


@dataclass(frozen=True)
class Op:
    """One kind of staging call a component rank makes: how often, how big, with how many ranks at once."""

    component: str  # sim | train
    category: str  # meta | data | checkpoint (the mini benchmark's traffic categories)
    op: str  # a :data:`simai_core.predict.model.OPS` verb
    what: str
    nbytes: int
    per_sync: float  # calls per rank per sync step (mean over the component's ranks)
    once: float = 0.0  # calls per rank once per run (set-up and end)
    callers: int = 1  # ranks making the same call at the same time
    first: bool = False  # the rank's first staging call after the step's idle time (a cold call)
    fresh: bool = False  # a put under a new key
    warm: float = 0.0  # share of the calls made after more than a tick of CPU work since the step's sleep


@dataclass(frozen=True)
class Shape:
    """What the operation counts depend on, resolved from a :class:`WorkflowConfig` and the rank count."""

    ranks: int
    sim_ranks: int
    trainer_ranks: int
    snapshot_nbytes: int
    checkpoint_nbytes: int
    graph_nbytes: tuple[int, int]  # pos, edges (GNN only; 0 for the MLP)
    train_interval: int  # time steps between sync points
    step_time_s: float  # emulated work per time step
    heartbeat_interval_s: float
    heartbeats_between_syncs: int
    fetches_per_sync: float  # share of sync steps at which the simulation fetches a new checkpoint
    epochs_per_sync: float
    trainer_loops_per_sync: float
    checkpoint_every: int
    delete_consumed: bool
    step_cpu_s: float = 0.0  # CPU seconds a simulation rank computes between its step's sleep and its next call
    load_cpu_s: float = 0.0  # CPU seconds a simulation rank spends loading a new checkpoint


def snapshot_nbytes(cfg: WorkflowConfig) -> int:
    """Bytes of one simulation rank's snapshot: ``(n_points, 2 * n_in)`` of the problem's dtype."""
    spec = problem_spec(cfg.problem.size)
    n_in = len(spec.input_fields(cfg.problem.inputs))
    return spec.n_points * 2 * n_in * np.dtype(cfg.problem.dtype).itemsize


def graph_nbytes(cfg: WorkflowConfig) -> tuple[int, int]:
    """Bytes of the GNN graph a simulation rank publishes: coordinates (float64) and kNN edge index (int64)."""
    if cfg.model_kind != "gnn":
        return 0, 0
    spec = problem_spec(cfg.problem.size)
    n, k = spec.n_points, min(cfg.graph.k, spec.n_points - 1)
    return n * spec.dim * 8, 2 * n * k * INT64


@functools.lru_cache(maxsize=16)
def _checkpoint(config_json: str) -> tuple[int, float]:
    import torch  # deferred: only the checkpoint needs it

    from simai_core.models import build_model
    from simai_core.workflow import checkpoint

    cfg = WorkflowConfig.model_validate_json(config_json)
    spec = problem_spec(cfg.problem.size)
    n_in = len(spec.input_fields(cfg.problem.inputs))
    torch.manual_seed(cfg.trainer.seed)
    model = build_model(cfg.trainer.model, n_in, n_in, spec.dim)
    blob = checkpoint.to_bytes(checkpoint.script(model))
    times = []
    for _ in range(3):
        t0 = time.thread_time()
        checkpoint.from_bytes(blob)
        times.append(time.thread_time() - t0)
    return len(blob), sorted(times)[1]


def checkpoint_nbytes(cfg: WorkflowConfig) -> int:
    """Bytes of the TorchScript checkpoint the trainer pushes (built and serialised as the trainer does)."""
    return _checkpoint(cfg.model_copy(update={"run_id": "predict"}).model_dump_json())[0]


def load_cpu_s(cfg: WorkflowConfig) -> float:
    """CPU seconds the simulation spends loading a checkpoint (the median of three loads, timed on this CPU)."""
    return _checkpoint(cfg.model_copy(update={"run_id": "predict"}).model_dump_json())[1]


#: CPU time after a sleep past which a rank has spent the credit the sleep gave it with the scheduler (one
#: tick at the common HZ=250): its next call is priced as a call after work (``busy_warm``), not a cold one.
WARM_AFTER_S = 0.004


def warm_after(cpu_s: float) -> float:
    """1 when ``cpu_s`` of work since the step's sleep has spent the sleep's credit (:data:`WARM_AFTER_S`), else 0."""
    return 1.0 if cpu_s >= WARM_AFTER_S else 0.0


@functools.lru_cache(maxsize=16)
def _snapshot_cpu_s(config_json: str) -> float:
    from mpi4py import MPI  # deferred: the snapshot's build needs a communicator of its own

    from simai_core.workflow.problem import WaveProblem

    problem = WaveProblem(WorkflowConfig.model_validate_json(config_json).problem, MPI.COMM_SELF)
    out = problem.snapshot(0)
    times = []
    for step in range(1, 4):
        t0 = time.thread_time()
        problem.snapshot(step, out=out)
        times.append(time.thread_time() - t0)
    return sorted(times)[1]


def step_cpu_s(cfg: WorkflowConfig) -> float:
    """CPU seconds a simulation rank computes between its step's sleep and a heartbeat between syncs.

    The mock's snapshot build (the workflow's own code, timed here on this machine's CPU: the median of
    three builds); with ``step_cost=kernel`` the whole step computes.
    """
    if cfg.simulation.step_cost == "kernel":
        return cfg.simulation.step_time_s
    return _snapshot_cpu_s(cfg.model_copy(update={"run_id": "predict"}).model_dump_json())


def heartbeats_between_syncs(cfg: WorkflowConfig) -> int:
    """Heartbeats the simulation head writes at the steps between two sync points (one is forced at each sync)."""
    step, every, last, count = cfg.simulation.step_time_s, cfg.heartbeat_interval_s, 0.0, 0
    for k in range(1, cfg.simulation.train_interval):
        # A step takes at least step_time_s, so the nominal time is a lower bound; 1e-9 breaks ties towards writing.
        if k * step - last >= every - 1e-9:
            count, last = count + 1, k * step
    return count


def shape(cfg: WorkflowConfig, ranks: int, fetches_per_sync: float = 1.0, epochs_per_sync: float | None = None,
          trainer_loops_per_sync: float | None = None, checkpoint_bytes: int | None = None,
          step_cpu: float | None = None, load_cpu: float | None = None) -> Shape:
    """The :class:`Shape` of ``cfg`` on ``ranks`` ranks (clustered: one staging server, the configured split).

    ``fetches_per_sync``: share of sync steps at which a new checkpoint reaches the simulation (1: the
    trainer checkpoints at least once per sync interval). ``epochs_per_sync`` (default: ``checkpoint_every``
    times ``fetches_per_sync``) and ``trainer_loops_per_sync`` (default: the epochs; idle polls add to it)
    depend on how fast the trainer trains, which staging does not decide. ``step_cpu`` and ``load_cpu``
    override :func:`step_cpu_s` and :func:`load_cpu_s` (measured here by default).
    """
    sims = split_count(ranks, cfg.sim_fraction)
    cadence = cfg.cadence()
    epochs = cadence.checkpoint_every * fetches_per_sync if epochs_per_sync is None else epochs_per_sync
    return Shape(ranks=ranks, sim_ranks=sims, trainer_ranks=ranks - sims, snapshot_nbytes=snapshot_nbytes(cfg),
                 checkpoint_nbytes=checkpoint_nbytes(cfg) if checkpoint_bytes is None else checkpoint_bytes,
                 graph_nbytes=graph_nbytes(cfg),
                 train_interval=cfg.simulation.train_interval, step_time_s=cfg.simulation.step_time_s,
                 heartbeat_interval_s=cfg.heartbeat_interval_s,
                 heartbeats_between_syncs=heartbeats_between_syncs(cfg), fetches_per_sync=fetches_per_sync,
                 epochs_per_sync=epochs, trainer_loops_per_sync=epochs if trainer_loops_per_sync is None
                 else trainer_loops_per_sync, checkpoint_every=cadence.checkpoint_every,
                 delete_consumed=cfg.trainer.delete_consumed,
                 step_cpu_s=step_cpu_s(cfg) if step_cpu is None else step_cpu,
                 load_cpu_s=load_cpu_s(cfg) if load_cpu is None else load_cpu)


def sim_ops(s: Shape) -> list[Op]:
    """A simulation rank's staging calls (head-only calls weigh 1 / simulation ranks).

    Per sync step the head's first call after the step's work is the trainer error-key read; another
    rank's is the checkpoint fetch when one is due (``fetches_per_sync``), else the snapshot put.
    The calls before the sync point's own work follow the snapshot's build; the snapshot put and the
    heartbeat after it follow the new checkpoint's load too, when one came (``warm``: see the module).
    The head's status read and checkpoint fetch are never warm: each follows a call whose wait for its
    reply is a sleep (the fetch, after an all-gather the other ranks were already waiting in).
    """
    head, rest = 1.0 / s.sim_ranks, (s.sim_ranks - 1) / s.sim_ranks
    fetch = s.fetches_per_sync
    before = warm_after(s.step_cpu_s)  # the calls before the sync point's work: after the snapshot's build
    after_load = warm_after(s.step_cpu_s + s.load_cpu_s)
    put = fetch * after_load + (1 - fetch) * before  # a snapshot put: after a new checkpoint's load, if one came
    later_put = 1.0 - rest * (1 - fetch)  # the puts that are not a rank's first call: all but the no-fetch ones of others
    ops = [
        Op("sim", "meta", "exists", "trainer error key (a get that finds nothing)", 0, head, callers=1, first=True,
           warm=before),
        Op("sim", "meta", "get_tensor", "trainer status read", TRAIN_STATUS_BYTES, head, callers=1),  # after a reply's sleep
        Op("sim", "meta", "put_tensor", "heartbeat at each sync", SIM_STATUS_BYTES, head,
           once=2 * head, callers=1, warm=put),  # once: the start-up and the stop heartbeats
        Op("sim", "meta", "put_tensor", "heartbeats between syncs", SIM_STATUS_BYTES,
           head * s.heartbeats_between_syncs, callers=1, first=True, warm=before),
        Op("sim", "meta", "put_tensor", "problem size (start-up)", SIZE_BYTES, 0.0, once=head, callers=1),
        Op("sim", "data", "put_tensor", "snapshot put, first call", s.snapshot_nbytes, rest * (1 - fetch),
           callers=s.sim_ranks, first=True, fresh=True, warm=before),
        Op("sim", "data", "put_tensor", "snapshot put", s.snapshot_nbytes, later_put, callers=s.sim_ranks, fresh=True,
           warm=(fetch * after_load + head * (1 - fetch) * before) / later_put if later_put else put),
        Op("sim", "checkpoint", "get_bytes", "checkpoint fetch, first call", s.checkpoint_nbytes, rest * fetch,
           callers=s.sim_ranks, first=True, warm=before),
        Op("sim", "checkpoint", "get_bytes", "checkpoint fetch", s.checkpoint_nbytes, head * fetch,
           callers=s.sim_ranks),  # the head's: after its status read (a reply's sleep) and an all-gather it ends
    ]
    pos, edges = s.graph_nbytes
    if pos:
        ops += [Op("sim", "meta", "put_tensor", "graph coordinates (start-up)", pos, 0.0, once=1.0, callers=s.sim_ranks),
                Op("sim", "meta", "put_tensor", "graph edges (start-up)", edges, 0.0, once=1.0, callers=s.sim_ranks)]
    return ops


def train_ops(s: Shape) -> list[Op]:
    """A trainer rank's staging calls (head-only calls weigh 1 / trainer ranks)."""
    head, owned = 1.0 / s.trainer_ranks, s.sim_ranks / s.trainer_ranks
    beats = min(s.trainer_loops_per_sync, s.train_interval * s.step_time_s / s.heartbeat_interval_s)  # one per loop at most
    ops = [
        Op("train", "meta", "exists", "simulation error key (a get that finds nothing)", 0,
           head * s.trainer_loops_per_sync, callers=1),
        Op("train", "meta", "get_tensor", "simulation status read", SIM_STATUS_BYTES,
           head * s.trainer_loops_per_sync, callers=1),
        Op("train", "meta", "put_tensor", "heartbeats", TRAIN_STATUS_BYTES, head * beats, once=3 * head, callers=1),
        Op("train", "meta", "put_tensor", "heartbeat after each checkpoint", TRAIN_STATUS_BYTES,
           head * s.epochs_per_sync / s.checkpoint_every, callers=1),
        Op("train", "meta", "get_tensor", "problem size (start-up)", SIZE_BYTES, 0.0, once=1.0, callers=s.trainer_ranks),
        Op("train", "data", "get_tensor", "snapshot get", s.snapshot_nbytes, owned, callers=s.trainer_ranks),
        Op("train", "checkpoint", "put_bytes", "checkpoint push", s.checkpoint_nbytes,
           head * s.epochs_per_sync / s.checkpoint_every, callers=1),
    ]
    if s.delete_consumed:
        ops.append(Op("train", "data", "exists", "snapshot delete (a round trip, no value)", 0, owned,
                      callers=s.trainer_ranks))
    pos, edges = s.graph_nbytes
    if pos:
        ops += [Op("train", "meta", "get_tensor", "graph coordinates (start-up)", pos, 0.0, once=owned,
                   callers=s.trainer_ranks),
                Op("train", "meta", "get_tensor", "graph edges (start-up)", edges, 0.0, once=owned,
                   callers=s.trainer_ranks)]
    return ops


def sync_steps(steps: int, train_interval: int) -> int:
    """Sync points in a run of ``steps`` time steps (step 0 is one)."""
    return max(1, math.ceil(steps / train_interval))


def workflow_config(size: str = "small", model: str = "mlp", inputs: str | None = None, step_time_s: float | None = None,
                    train_interval: int | None = None, sim_fraction: float | None = None,
                    checkpoint_every: int | None = None, mini_batch: int | None = None,
                    epoch_batches: int | None = None) -> WorkflowConfig:
    """A clustered workflow configuration from the mini benchmark's options (None: the workflow's default)."""
    sim = {"step_time_s": step_time_s, "train_interval": train_interval}
    trainer = {"model": {"kind": model}, "checkpoint_every": checkpoint_every, "mini_batch": mini_batch,
               "epoch_batches": epoch_batches}
    data = {"problem": {k: v for k, v in {"size": size, "inputs": inputs}.items() if v is not None},
            "simulation": {k: v for k, v in sim.items() if v is not None},
            "trainer": {k: v for k, v in trainer.items() if v is not None}, "deployment": "clustered"}
    if sim_fraction is not None:
        data["sim_fraction"] = sim_fraction
    return WorkflowConfig.model_validate(data)
