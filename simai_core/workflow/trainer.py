"""The online trainer: PyTorch DDP over its own ranks, fed from the staging area (imports torch).

Per loop iteration the trainer heads read the simulation's status (one key) and its
error key, the trainer ranks agree on the newest complete sync step and on whether to
stop, every rank fetches only the snapshots of new steps that it owns, trains one
epoch and, every ``checkpoint_every`` epochs, the heads publish a TorchScript
checkpoint. Before the first data arrive the ranks poll with backoff. A silent or
failed simulation raises :class:`~simai_core.workflow.protocol.PeerTimeoutError` /
``PeerFailedError`` on every trainer rank within ``peer_timeout_s``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from simai_core.models import build_model
from simai_core.staging.base import StagingClient
from simai_core.workflow import checkpoint, distributed
from simai_core.workflow.collective import agree
from simai_core.workflow.config import WorkflowConfig
from simai_core.workflow.dataset import GraphBatches, PointBatches, SnapshotWindow
from simai_core.workflow.layout import Role
from simai_core.workflow.protocol import Heartbeat, Keys, PeerMonitor, fetch_announced
from simai_core.workflow.report import ComponentReport
from simai_core.workflow.snapshots import SnapshotSource, make_source
from simai_core.workflow.timers import Accounting

_MAX_IDLE_SLEEP_S = 0.05


class Trainer:
    """One trainer rank; :meth:`run` returns its :class:`ComponentReport`."""

    def __init__(self, cfg: WorkflowConfig, role: Role, client: StagingClient, start_epoch_s: float,
                 profile_backend: str | None = None) -> None:
        self.cfg, self.role, self.client = cfg, role, client
        self.keys = Keys(cfg.run_id)
        self.acc = Accounting("train", role.rank, start_epoch_s)
        self.device = distributed.pick_device(cfg.trainer.device, role.local_index)
        self.backend = distributed.pick_backend(cfg.trainer.dist_backend, self.device, profile_backend)
        self.monitor = PeerMonitor(client, self.keys, "sim", 2, cfg.startup_timeout_s, cfg.peer_timeout_s)
        self.heartbeat = Heartbeat(client, self.keys.train_status, cfg.heartbeat_interval_s)
        self.epoch = 0
        self.version = 0
        self.last_loss: float | None = None
        self.source: SnapshotSource | None = None
        self.data_counters: dict[str, int] = {}
        self._idle_sleep = 1e-3
        self.samples_trained = 0  # grid points (rows) through forward and backward
        self.train_compute_s = 0.0

    def run(self) -> ComponentReport:
        """Train until the simulation says stop; always leaves the process group destroyed."""
        torch.set_num_threads(self.cfg.trainer.threads)
        self.acc.start()
        try:
            with self.acc.section("process_group"):
                distributed.init_process_group(self.role.comm, self.backend, self.cfg.peer_timeout_s)
            # The first heartbeat comes once set up: model building and scripting take a minute on a busy node, and
            # until then the simulation's start-up deadline applies, not the shorter one for a silent peer.
            self._setup()
            self._beat(force=True)
            self._open_source()
            self._loop()
            self.data_counters = self._finish_source()
            if self.role.is_head:
                with self.acc.section("meta"):
                    self.heartbeat.write([self.version, self.epoch, 1], force=True)
        finally:
            if self.source is not None:
                with self.acc.section("meta", what="data_close"):
                    self.source.close()
            distributed.shutdown_process_group()
            self.acc.stop()
        return ComponentReport.from_accounting(
            self.acc, world_rank=self.role.world_rank, scope=self.role.scope, epochs=self.epoch,
            detail={"device": str(self.device), "dist_backend": self.backend, "final_loss": self.last_loss,
                    "owned_sim_ranks": list(self.role.owned), "n_parameters": self._n_params,
                    "train_samples_per_s": self.samples_trained / self.train_compute_s if self.train_compute_s else None,
                    **self.data_counters})

    def _beat(self, force: bool = False) -> None:
        if self.role.is_head and (force or self.heartbeat.due()):
            with self.acc.section("meta"):
                self.heartbeat.write([self.version, self.epoch, 0], force=True)

    def _wait_key(self, key: str) -> None:
        """Poll ``key`` with backoff on every rank, checking the simulation's liveness about once a second."""
        while True:
            with self.acc.section("wait"):
                found = self.client.poll(key, timeout_s=1.0)

            everywhere = all(agree(self.role.comm, self.acc, functools.partial(self._probe_key, found)))
            if everywhere:
                return

    def _probe_key(self, found: bool) -> bool:
        if self.role.is_head:
            self.monitor.read()
        return found

    def _setup(self) -> None:
        self._wait_key(self.keys.size)
        size = self._get(self.keys.size, "meta")
        n_points, n_in, n_out, dim = (int(v) for v in size[:4])
        self.n_points, self.n_in, self.n_out = n_points, n_in, n_out
        graphs = self._read_graphs() if self.cfg.model_kind == "gnn" else {}
        with self.acc.section("compute", record=False):
            torch.manual_seed(self.cfg.trainer.seed)
            model = build_model(self.cfg.trainer.model, n_in, n_out, dim).to(self.device)
            self._n_params = sum(p.numel() for p in model.parameters())
            self.scripted = checkpoint.script(model)
            self.ddp = DistributedDataParallel(model)
            scale = self.role.comm.Get_size() if self.cfg.trainer.lr_scaling == "linear" else 1
            self.opt = torch.optim.Adam(model.parameters(), lr=self.cfg.trainer.learning_rate * scale)
            self.window = SnapshotWindow(self.role.owned, n_in, self.cfg.trainer.window)
            seed = self.cfg.trainer.seed + 1 + self.role.rank
            c = self.cadence = self.cfg.trainer.cadence(n_points)
            self.batches = (GraphBatches(self.window, graphs, c.mini_batch, self.role.max_owned, self.device, seed,
                                         c.epoch_batches, c.graph_patches)
                            if graphs else PointBatches(self.window, c.mini_batch, self.role.max_owned, self.device, seed,
                                                        c.epoch_batches))

    def _read_graphs(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        graphs = {}
        for rank in self.role.owned:
            pos = self._get(self.keys.pos(rank), "meta")
            edges = self._get(self.keys.edges(rank), "meta")
            graphs[rank] = (pos, edges)
        return graphs

    def _get(self, key: str, category: str) -> np.ndarray:
        return fetch_announced(self.client, self.acc, self.keys, key, category)

    def _control(self) -> tuple[int, bool]:
        """(newest sync step complete on every scope, stop requested), agreed by all trainer ranks."""
        def probe() -> tuple[int, int]:
            status = self.monitor.read()
            return (-1, 0) if status is None else (int(status[0]), int(status[1]))

        results = [r for r in agree(self.role.comm, self.acc, probe if self.role.is_head else None) if r is not None]
        return min(step for step, _ in results), any(code != 0 for _, code in results)

    def _open_source(self) -> None:
        shape = (self.n_points, self.n_in + self.n_out)
        self.source = make_source(self.cfg, self.client, self.keys, self.role.owned, shape, self.acc)
        self.source.open()
        self._beat(force=True)

    def _finish_source(self) -> dict[str, int]:
        assert self.source is not None
        return self.source.finish(self.cfg.finish_timeout_s)

    def _load(self, announced: int) -> bool:
        """Add the new snapshots to the window; whether there were any."""
        assert self.source is not None
        received = self.source.receive(announced)
        with self.acc.section("compute", record=False):  # in-memory bookkeeping, no bytes move
            for step in sorted(received):
                self.window.add_step(step, received[step])
        return bool(received)

    def _window_steps(self) -> tuple[int, int]:
        """(fewest, most) steps in any trainer rank's window: a streamed rank may have lost or not yet got some."""
        with self.acc.section("wait"):
            sizes = self.role.comm.allgather(len(self.window))
        return min(sizes), max(sizes)

    def _loop(self) -> None:
        every = self.cadence.checkpoint_every
        while True:
            announced, stop = self._control()
            if stop:
                return
            if self._load(announced):
                self._idle_sleep = 1e-3
            fewest, most = self._window_steps()
            if fewest == 0:
                self._idle()
                continue
            self._train_epoch(most)
            if self.epoch % every == 0:
                self._checkpoint()
            self._beat()

    def _idle(self) -> None:
        with self.acc.section("wait", record=False):
            time.sleep(self._idle_sleep)
        self._idle_sleep = min(2 * self._idle_sleep, _MAX_IDLE_SLEEP_S)
        self._beat()

    def _train_epoch(self, steps: int) -> None:
        """One pass over a window of ``steps`` steps (the largest of all ranks': every rank runs as many batches).

        Long epochs pause for heartbeats so the simulation knows we are alive.
        """
        t0, compute_s = time.perf_counter(), 0.0
        sums = [0.0, 0.0]  # loss total, batches
        batches = self.batches.epoch(steps)
        done = False
        while not done:
            with self.acc.section("compute", record=False):
                c0 = time.perf_counter()
                done = self._train_until_heartbeat(batches, sums)
                compute_s += time.perf_counter() - c0
            if not done:
                self._beat()
        self.train_compute_s += compute_s
        loss = sums[0] / sums[1] if sums[1] else None  # no batch, no loss: null, never 0
        if loss is not None:
            self.last_loss = loss
        self.acc.event("epoch", t0, compute_s, epoch=self.epoch, loss=loss, batches=int(sums[1]),
                       steps_in_window=len(self.window))
        self.epoch += 1

    def _train_until_heartbeat(self, batches: Iterator[tuple[torch.Tensor, ...]], sums: list[float]) -> bool:
        """Train on ``batches`` until they run out (True) or a head's heartbeat is due (False)."""
        for x, edge_index, pos, y in batches:
            self.opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(self.ddp(x, edge_index, pos), y)
            loss.backward()
            self.opt.step()
            sums[0] += float(loss.detach())
            sums[1] += 1
            self.samples_trained += int(x.shape[0])
            if self.role.is_head and self.heartbeat.due():
                return False
        return True

    def _checkpoint(self) -> None:
        self.version += 1
        if not self.role.is_head:
            return
        with self.acc.section("checkpoint_serialize", version=self.version):
            blob = checkpoint.to_bytes(self.scripted)
        with self.acc.section("checkpoint", nbytes=len(blob), version=self.version, what="put"):
            self.client.put_bytes(self.keys.model, blob)
        with self.acc.section("meta"):
            self.heartbeat.write([self.version, self.epoch, 0], force=True)


def run_trainer(cfg: WorkflowConfig, role: Role, client: StagingClient, start_epoch_s: float,
                profile_backend: str | None = None) -> ComponentReport:
    """Run one trainer rank to the end of the workflow (collective over ``role.comm``)."""
    return Trainer(cfg, role, client, start_epoch_s, profile_backend).run()
