"""The motif-6 trainer's computation without its staging: a neighbour load for the micro benchmarks.

A staging call made on a node where the trainer trains waits for a CPU, and shares the caches and
memory bandwidth with it. What it waits for depends on the trainer's work at the problem size: on
``small``, mini-batches of 64 rows (about 2.5 ms per step here, in cache); on ``medium``,
4096 rows gathered at random from a table of every snapshot received so far (tens of MiB), about 12 ms
per step, and a rebuild of that table at each sync point. :class:`TrainerLoad` runs that work with the
workflow's own data set classes and model: the mini-batches, their forward, backward and Adam step,
and a new snapshot each sync interval (which makes the next epoch rebuild its table). Given a gloo
group of the other loads, each step all-reduces its gradients with them before the Adam step, as the
trainer's DDP does: a rank then blocks until its slowest peer's step is done, and sleeps meanwhile,
which leaves a caller on the node more CPU than a load that never waits. Alone, a step ends with a short
sleep instead (the all-reduce with no peer).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from simai_core.models import build_model
from simai_core.workflow.config import WorkflowConfig
from simai_core.workflow.dataset import PointBatches, SnapshotWindow
from simai_core.workflow.problem import ProblemSize, problem_spec

#: Snapshots in the table: what a 100-step run (20 sync steps) holds at its midpoint.
SNAPSHOTS = 10
#: The sleep after each step of a load without peers: a blocking all-reduce with nothing to exchange.
ALLREDUCE_SLEEP_S = 0.0001


class TrainerLoad:
    """One trainer rank's MLP training at the problem size ``size`` (the workflow's default cadence).

    ``group``: a gloo process group of the loads that train together (each step all-reduces with them, and
    :meth:`run` is then collective over it); ``None``: this load trains alone.
    """

    def __init__(self, size: ProblemSize, snapshots: int = SNAPSHOTS, seed: int = 0, group: Any = None) -> None:
        cfg = WorkflowConfig.model_validate({"problem": {"size": size}})
        spec = problem_spec(size)
        n_in = len(spec.input_fields(cfg.problem.inputs))
        cadence = cfg.cadence()
        self.mini_batch = cadence.mini_batch
        self.sync_interval_s = cfg.simulation.train_interval * cfg.simulation.step_time_s
        self._base = np.random.default_rng(seed).random((spec.n_points, 2 * n_in))
        self.window = SnapshotWindow((0,), n_in, snapshots)
        for step in range(snapshots):
            self._receive(step)
        self.batches = PointBatches(self.window, cadence.mini_batch, 1, torch.device("cpu"), seed, cadence.epoch_batches)
        torch.set_num_threads(cfg.trainer.threads)  # as the trainer runs (one thread per rank)
        torch.manual_seed(seed)
        self.model = build_model(cfg.trainer.model, n_in, n_in, spec.dim)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.trainer.learning_rate)
        self._epoch: Iterator[tuple[torch.Tensor, ...]] = iter(())
        self._step, self._synced = snapshots, time.perf_counter()
        self.group = group
        self.steps = 0  # mini-batches trained

    def _receive(self, step: int) -> None:
        """A new snapshot (a fresh 2-field copy, as a staging get makes) enters the window; the oldest leaves."""
        self.window.add_step(step, {0: self._base + step})

    def train_step(self, done: bool = False) -> bool:
        """One mini-batch: forward, backward, gradient all-reduce, Adam step; returns whether any rank is done.

        A new epoch, and table rebuild, starts when one ran out. ``done``: this rank wants to stop; the group's ranks
        agree on it in the all-reduce, so all of them stop after the same step (fixed rounds).
        """
        batch = next(self._epoch, None)
        if batch is None:
            self._epoch = self.batches.epoch(len(self.window))
            batch = next(self._epoch)
        x, edge_index, pos, y = batch
        self.opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(self.model(x, edge_index, pos), y).backward()
        done = self._allreduce(done)
        self.opt.step()
        self.steps += 1
        return done

    def _allreduce(self, done: bool) -> bool:
        """Average the gradients over the group, and OR the ranks' ``done`` flags, in one all-reduce."""
        if self.group is None:
            time.sleep(ALLREDUCE_SLEEP_S)
            return done
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads] + [torch.tensor([float(done)])])
        self.group.allreduce([flat]).wait()
        offset, ranks = 0, self.group.size()
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g) / ranks)
            offset += g.numel()
        return bool(flat[-1] > 0)

    def run(self, seconds: float) -> None:
        """Train for ``seconds`` (whole steps: the last one may end later), taking a new snapshot each sync interval.

        With a group, every rank stops after the step in which the first one's time ran out.
        """
        end = time.perf_counter() + seconds
        done = False
        while not done:
            now = time.perf_counter()
            if now - self._synced >= self.sync_interval_s:
                self._receive(self._step)
                self._step, self._synced = self._step + 1, now
            done = self.train_step(done=now >= end)
