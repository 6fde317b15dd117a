"""The simulation: an MPI loop over steps of a field producer (imports torch lazily).

The producer (:class:`~simai_core.solvers.base.FieldSource`) is the mock travelling wave
(emulated step work, then the analytic snapshot) or the Devito acoustic solver (K time
steps per loop step), chosen by ``simulation.solver``; a solver is built and compiled
before the timed loop. Every ``train_interval`` steps (a sync point, step 0 included)
the producer leaves its training sample (inputs, then targets); the heads read the
trainer's status, all ranks agree on it; if every scope has a checkpoint, each rank
loads a newer one when there is one (the reference re-downloaded it at every check),
predicts the targets of a fixed sample of ``check_points`` interior points (the mock:
every point is interior; see :mod:`~simai_core.workflow.check`) and the MSE over the
sample is all-reduced; then every rank sends its sample, and after a barrier the
heads announce the step. The loop
stops once ``success_checks`` consecutive checks succeeded (reason ``skill``: skill
against persistence at least ``min_skill``, the default; reason ``tolerance``: MSE at
most ``tolerance``, the reference's rule) or at ``max_steps`` (reason ``max_steps``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from simai_core.models.config import GNNConfig
from simai_core.solvers.base import FieldSource
from simai_core.staging.base import StagingClient
from simai_core.workflow.check import CheckSet, check_errors, check_set
from simai_core.workflow.collective import agree
from simai_core.workflow.config import WorkflowConfig
from simai_core.workflow.layout import Role
from simai_core.workflow.problem import MockFields
from simai_core.workflow.protocol import CONVERGED, STOP_REASONS, STORE_REMOVAL_S, Heartbeat, Keys, PeerMonitor, WorkflowError
from simai_core.workflow.report import ComponentReport, Outcome
from simai_core.workflow.snapshots import make_sender
from simai_core.workflow.timers import Accounting


def make_fields(cfg: WorkflowConfig, comm: Any) -> FieldSource:
    """The configured field producer on ``comm`` (collective), compiled when it is a solver."""
    if cfg.simulation.solver == "mock":
        return MockFields(cfg.problem, cfg.simulation, comm)
    from simai_core.solvers.acoustic import AcousticSolver

    solver = AcousticSolver.for_size(cfg.simulation.acoustic, cfg.problem.size, comm,
                                     loop_steps=cfg.simulation.max_steps, dtype=cfg.problem.dtype)
    solver.compile()
    return solver


class Simulation:
    """One simulation rank; :meth:`run` returns its :class:`ComponentReport`."""

    def __init__(self, cfg: WorkflowConfig, role: Role, client: StagingClient, start_epoch_s: float) -> None:
        self.cfg, self.sim, self.role, self.client = cfg, cfg.simulation, role, client
        self.keys = Keys(cfg.run_id)
        self.acc = Accounting("sim", role.rank, start_epoch_s)
        self.monitor = PeerMonitor(client, self.keys, "train", 3, cfg.startup_timeout_s, cfg.peer_timeout_s)
        self.heartbeat = Heartbeat(client, self.keys.sim_status, cfg.heartbeat_interval_s)
        self.sender = make_sender(cfg, client, self.keys, role.rank)
        self.model: Any = None
        self.loaded_version = 0
        self.mse: float | None = None
        self.persistence_mse: float | None = None
        self.successes = 0
        self.last_step = -1
        self.detail: dict[str, Any] = {"data_path": self.sender.describe()}

    def run(self) -> ComponentReport:
        """Run the time loop to its stop; heads publish the stop reason."""
        import torch  # deferred: importing simai_core.workflow must stay torch-free

        torch.set_num_threads(1)
        if self.cfg.model_kind == "gnn":
            from simai_core.workflow.graph import preload

            preload(self.cfg.graph.builder)  # library import is process start-up, not workflow time
        # Before the clock starts: a solver's JIT compile is its own FOM, never workflow time.
        self.fields = make_fields(self.cfg, self.role.comm)
        self.acc.start()
        try:
            self._setup()
            steps, reason = self._loop()
            if self.role.is_head:
                with self.acc.section("meta"):
                    self.heartbeat.write([self.last_step, STOP_REASONS[reason]], force=True)
            with self.acc.section("wait", what="data_close"):
                self.sender.close()  # a stream waits here until the trainer has read every queued step
        except BaseException:
            with contextlib.suppress(Exception):  # the original error matters, not a follow-up one
                self.sender.close()
            raise
        finally:
            self.acc.stop()
        outcome = Outcome(converged=reason in CONVERGED, reason=reason, criterion=self.sim.criterion,
                          final_mse=self.mse, tolerance=self.sim.tolerance, min_skill=self.sim.min_skill,
                          persistence_mse=self.persistence_mse, skill=self.skill, steps=steps,
                          checks_passed=self.successes)
        self.detail["producer_foms"] = self.fields.foms()
        return ComponentReport.from_accounting(self.acc, world_rank=self.role.world_rank, scope=self.role.scope,
                                               steps=steps, outcome=outcome, detail=self.detail)

    def _setup(self) -> None:
        self.detail |= self.fields.detail()
        self.graph = self._graph() if self.cfg.model_kind == "gnn" else None
        self.check = self._check_set()
        with self.acc.section("wait"):
            self.role.comm.Barrier()
        if self.role.is_head:
            f = self.fields
            size = np.array([f.n_points, f.n_in, f.n_out, f.dim, self.role.sim_size, self.sim.train_interval],
                            dtype=np.int64)
            with self.acc.section("meta", nbytes=size.nbytes, key="meta/size"):
                self.client.put_tensor(self.keys.size, size)
            with self.acc.section("meta"):
                self.heartbeat.write([-1, 0], force=True)
        with self.acc.section("wait", what="data_open"):
            self.sender.open()  # a sync stream waits here for its reader

    def _graph(self) -> tuple[Any, Any]:
        """Build this rank's kNN graph once and publish it (coordinates + edges) for the trainer."""
        import torch

        from simai_core.workflow.graph import knn_graph

        with self.acc.section("graph_build"):
            edges, builder = knn_graph(self.fields.coords, self.cfg.graph.k, self.cfg.graph.builder)
        self.detail["graph_builder"] = builder
        self.detail["graph_edges"] = int(edges.shape[1])
        coords = self.fields.coords
        for key, array in ((self.keys.pos(self.role.rank), coords), (self.keys.edges(self.role.rank), edges)):
            with self.acc.section("meta", nbytes=array.nbytes, key=key.removeprefix(self.keys.prefix)):
                self.client.put_tensor(key, array)
        return torch.from_numpy(edges), torch.from_numpy(coords.astype(np.float32))

    def _check_set(self) -> CheckSet:
        """The fixed sample this rank's checks judge, drawn once (the GNN's k-hop subgraph cut once)."""
        model = self.cfg.trainer.model
        hops = model.n_message_passing_layers if isinstance(model, GNNConfig) else 0
        with self.acc.section("inference", what="check_set"):
            check = check_set(self.fields.coords, self.fields.interior, self.graph, self.sim.check_points,
                              self.sim.check_patch_points, hops, seed=1000 + self.role.rank)
        self.detail["check_nodes"], self.detail["check_subgraph_nodes"] = check.n_judged, check.n_fed
        return check

    def _loop(self) -> tuple[int, str]:
        interval = self.sim.train_interval
        for step in range(self.sim.max_steps):
            sync = step % interval == 0
            with self.acc.section("compute", step=step):
                self.fields.advance(step, capture=sync)
            if sync:
                self._sync(step)
                if self.successes >= self.sim.success_checks:
                    return step + 1, "skill" if self.sim.criterion == "skill" else "tolerance"
            elif self.role.is_head and self.heartbeat.due():
                with self.acc.section("meta"):
                    self.heartbeat.write([self.last_step, 0])
        return self.sim.max_steps, "max_steps"

    def _sync(self, step: int) -> None:
        with self.acc.section("wait", record=False, what="field_check"):
            self.fields.check(self.role.comm)  # a diverged solver fails every rank here, with the reason
        versions = self._check_trainer()
        if versions and min(versions.values()) > 0:
            self._infer(versions[self.role.scope], step)
        sample = self.fields.sample
        with self.acc.section("data", nbytes=sample.nbytes, step=step) as ev:
            ev["waited_s"] = self.sender.send(step, sample)  # a sync stream's wait for queue room
        with self.acc.section("wait"):
            self.role.comm.Barrier()
        self.last_step = step
        if self.role.is_head:
            with self.acc.section("meta"):
                self.heartbeat.write([step, 0], force=True)

    def _check_trainer(self) -> dict[int, int]:
        """Checkpoint version per scope, agreed by all ranks; raises on every rank if the trainer died."""
        def probe() -> tuple[int, int]:
            status = self.monitor.read()
            if status is not None and int(status[2]) == 1:
                raise WorkflowError("the trainer finished before the simulation asked it to stop")
            return self.role.scope, 0 if status is None else int(status[0])

        results = agree(self.role.comm, self.acc, probe if self.role.is_head else None)
        return dict(r for r in results if r is not None)

    def _infer(self, version: int, step: int) -> None:
        from simai_core.workflow import checkpoint

        if version > self.loaded_version:
            with self.acc.section("checkpoint", version=version, what="fetch") as ev:
                blob = self.client.get_bytes(self.keys.model)
                ev["nbytes"] = len(blob) if blob is not None else None
            if blob is None:
                self.client.check_store(within_s=STORE_REMOVAL_S)
                raise WorkflowError(f"the trainer announced checkpoint {version} but {self.keys.model!r} is missing")
            with self.acc.section("checkpoint_load", version=version):
                self.model = checkpoint.from_bytes(blob)
            self.loaded_version = version
        f = self.fields
        with self.acc.section("inference", step=step, version=self.loaded_version) as ev:
            # Judged on interior points only: the model cannot see across a face shared with another rank.
            local = check_errors(self.model, f.sample, f.n_in, f.persistence_columns, self.check)
            ev["local_mse"] = local[0] / local[1] if local[1] else None
        with self.acc.section("wait", what="mse_allreduce") as ev:
            total = self.role.comm.allreduce(local)
            self.mse = ev["mse"] = float(total[0] / total[1])
            self.persistence_mse = ev["persistence_mse"] = float(total[2] / total[1])
        self.successes = self.successes + 1 if self._check_passes() else 0

    @property
    def skill(self) -> float | None:
        """1 - MSE / persistence MSE of the last check (None before the first, or if persistence is exact)."""
        if self.mse is None or not self.persistence_mse:
            return None
        return 1.0 - self.mse / self.persistence_mse

    def _check_passes(self) -> bool:
        if self.sim.criterion == "mse":
            return self.mse is not None and self.mse <= self.sim.tolerance
        skill = self.skill
        return skill is not None and skill >= self.sim.min_skill


def run_simulation(cfg: WorkflowConfig, role: Role, client: StagingClient, start_epoch_s: float) -> ComponentReport:
    """Run one simulation rank to the end of its loop (collective over ``role.comm``)."""
    return Simulation(cfg, role, client, start_epoch_s).run()
