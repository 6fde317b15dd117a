"""The micro benchmarks' trainer load: the workflow's own MLP training, at a problem size's cadence."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from simai_core.workflow.problem import problem_spec  # noqa: E402
from simai_core.workflow.trainer_load import TrainerLoad  # noqa: E402


def test_it_trains_the_problem_sizes_mini_batches_and_takes_a_new_snapshot_each_sync_interval():
    load = TrainerLoad("small", snapshots=3)
    assert load.mini_batch == 64 and TrainerLoad("medium", snapshots=1).mini_batch == 4096  # the workflow's defaults
    assert list(load.window.steps) == [0, 1, 2]
    before = [p.detach().clone() for p in load.model.parameters()]
    load.sync_interval_s = 0.0  # a new snapshot before every step
    load.run(0.05)
    newest = load.window.steps[-1]
    assert newest > 2 and list(load.window.steps) == [newest - 2, newest - 1, newest]  # the oldest left the window
    assert any(not torch.equal(a, b) for a, b in zip(before, load.model.parameters(), strict=True))  # it trained
    n_points, n_in = problem_spec("small").n_points, load.window.n_in
    assert tuple(load.batches.x.shape) == (3 * n_points, n_in)  # the table holds every snapshot of the window
    assert load.window.arrays[(0, newest)].shape == (n_points, 2 * n_in)
