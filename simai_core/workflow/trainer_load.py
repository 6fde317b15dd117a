"""The motif-6 trainer's computation without its staging: a neighbour load for the micro benchmarks.

A staging call made on a node where the trainer trains waits for a CPU, and shares the caches and
memory bandwidth with it. What it waits for depends on the trainer's work at the problem size: on
``small``, mini-batches of 64 rows (about 2.5 ms per step here, in cache); on ``medium``,
4096 rows gathered at random from a table of every snapshot received so far (tens of MiB), about 12 ms
per step, and a rebuild of that table at each sync point. :class:`TrainerLoad` runs that work with the
workflow's own data set classes and model: the mini-batches, their forward, backward and Adam step,
a short sleep after each (the blocking all-reduce of a DDP step, which here has no peer to wait for),
and a new snapshot each sync interval (which makes the next epoch rebuild its table).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import torch

from simai_core.models import build_model
from simai_core.workflow.config import WorkflowConfig
from simai_core.workflow.dataset import PointBatches, SnapshotWindow
from simai_core.workflow.problem import ProblemSize, problem_spec

#: Snapshots in the table: what a 100-step run (20 sync steps) holds at its midpoint.
SNAPSHOTS = 10
#: The sleep after each step: a blocking all-reduce with nothing to exchange.
ALLREDUCE_SLEEP_S = 0.0001


class TrainerLoad:
    """One trainer rank's MLP training at the problem size ``size`` (the workflow's default cadence)."""

    def __init__(self, size: ProblemSize, snapshots: int = SNAPSHOTS, seed: int = 0) -> None:
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

    def _receive(self, step: int) -> None:
        """A new snapshot (a fresh 2-field copy, as a staging get makes) enters the window; the oldest leaves."""
        self.window.add_step(step, {0: self._base + step})

    def train_step(self) -> None:
        """One mini-batch: forward, backward, Adam step (a new epoch, and table rebuild, when one ran out)."""
        batch = next(self._epoch, None)
        if batch is None:
            self._epoch = self.batches.epoch(len(self.window))
            batch = next(self._epoch)
        x, edge_index, pos, y = batch
        self.opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(self.model(x, edge_index, pos), y).backward()
        self.opt.step()

    def run(self, seconds: float) -> None:
        """Train for ``seconds`` (whole steps: the last one may end later), taking a new snapshot each sync interval."""
        end = time.perf_counter() + seconds
        while (now := time.perf_counter()) < end:
            if now - self._synced >= self.sync_interval_s:
                self._receive(self._step)
                self._step, self._synced = self._step + 1, now
            self.train_step()
            time.sleep(ALLREDUCE_SLEEP_S)
