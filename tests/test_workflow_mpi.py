"""The workflow under MPI: run with ``mpiexec -n 2`` (or more) ``python -m pytest --with-mpi tests/test_workflow_mpi.py``."""

from __future__ import annotations

import time

import numpy as np
import pytest

from simai_core import mpi
from simai_core.bench.pool import StagingPool
from simai_core.profiles import load_profile
from simai_core.staging import registry
from simai_core.workflow.config import ProblemConfig, WorkflowConfig
from simai_core.workflow.layout import plan_layout, split_count
from simai_core.workflow.problem import WaveProblem
from simai_core.workflow.protocol import Keys, PeerFailedError, PeerTimeoutError, publish_error

pytestmark = pytest.mark.mpi(min_size=2)
pytest.importorskip("torch")

FAST = {"problem": {"size": "debug"}, "simulation": {"step_time_s": 0.05}, "heartbeat_interval_s": 0.2}


@pytest.fixture
def shared_files(tmp_path):
    """A filesystem staging area started on rank 0; every rank gets a client and the address."""
    pool = StagingPool(load_profile("local"), tmp_path)
    try:
        yield pool.client("filesystem"), pool.address("filesystem")
    finally:
        pool.close()


def test_ddp_ranks_hold_identical_weights_after_a_step():
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from simai_core.models import MLPConfig, build_model
    from simai_core.workflow.distributed import init_process_group, shutdown_process_group

    comm = mpi.world()
    init_process_group(comm, "gloo", timeout_s=60)
    try:
        torch.manual_seed(100 + comm.rank)  # different initial weights: DDP must broadcast rank 0's
        model = build_model(MLPConfig(neurons=8, layers=2), 1, 1, 1)
        ddp = DistributedDataParallel(model)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        before = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
        x = torch.randn(32, 1, generator=torch.Generator().manual_seed(comm.rank))  # different data per rank
        torch.nn.functional.mse_loss(ddp(x, torch.empty(2, 0), torch.empty(0, 1)), torch.sin(x)).backward()
        opt.step()
        after = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()
    finally:
        shutdown_process_group()
    everyone = comm.allgather(after)
    assert all(np.array_equal(everyone[0], w) for w in everyone)
    assert not np.array_equal(before.numpy(), after)


def test_partition_covers_the_domain_once():
    comm = mpi.world()
    problem = WaveProblem(ProblemConfig(size="small"), comm)
    points = np.concatenate(comm.allgather(problem.coords))
    decomposition = problem.subdomain.decomposition
    assert int(np.prod(decomposition)) == comm.size
    n = problem.spec.points_per_axis
    axes = [(np.arange(n * d) + 0.5) / (n * d) * 4 * np.pi - 2 * np.pi for d in decomposition]
    expected = {tuple(p) for p in np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2).round(9)}
    got = {tuple(p) for p in points.round(9)}
    assert len(points) == comm.size * 1024 == len(got) == len(expected)
    assert got == expected


@pytest.mark.parametrize("deployment", ["clustered", "colocated"])
def test_ranks_split_into_roles(deployment):
    comm = mpi.world()
    role = plan_layout(comm, deployment, 0.5)
    roles = comm.allgather((role.component, role.is_head, role.owned))
    n_sim = split_count(comm.size, 0.5)  # one node here, so both deployments split the same way
    assert [c for c, _, _ in roles] == ["sim"] * n_sim + ["train"] * (comm.size - n_sim)
    owned = sorted(s for c, _, o in roles if c == "train" for s in o)
    assert owned == list(range(n_sim)), "every simulation rank's data go to exactly one trainer"
    role.comm.Free()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("model", ["mlp", "gnn"])
def test_workflow_converges_over_mpi(shared_files, model):
    from simai_core.workflow.driver import run_mpi

    client, address = shared_files
    cfg = WorkflowConfig.model_validate({**FAST, "trainer": {"model": {"kind": model}}})
    result = run_mpi(cfg, "filesystem", address, mpi.world())
    result.raise_for_errors()
    assert result.outcome.converged and result.outcome.skill > 0
    assert len(result.reports) == mpi.size()
    for report in result.reports:
        # Complete accounting, not a timing target: on an oversubscribed node a rank can be descheduled
        # between two sections, so a run of a few seconds gets an absolute allowance too.
        gap = report.unaccounted_s
        assert gap < max(0.02 * report.wall_s, 0.25), f"{report.component} {report.rank}: accounting gap {gap:.3f} s"
    assert client.clean(Keys(cfg.run_id).prefix) == 0


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_streamed_workflow_converges_over_mpi(shared_files, tmp_path, mode):
    """Each simulation rank streams to the trainer rank that owns it; trainers with unequal windows stay in step."""
    pytest.importorskip("adios2")
    from simai_core.workflow.driver import run_mpi

    client, address = shared_files
    cfg = WorkflowConfig.model_validate({**FAST, "streamed_data": {"mode": mode}})
    result = run_mpi(cfg, "filesystem", address, mpi.world(), workdir=tmp_path)
    result.raise_for_errors()
    assert result.outcome.converged and result.outcome.skill > 0
    counts = result.stream_counts()
    sync_steps = -(-result.outcome.steps // cfg.simulation.train_interval)
    assert counts["steps_written"] == result.detail()["sim_ranks"] * sync_steps
    # Counted twice, independently: stream step ids vs the writers' published counts, and the
    # simulation's send events vs the payloads the trainers read or drained.
    assert counts["discarded_steps"] == result.discarded_from_events()
    if mode == "sync":
        assert counts["discarded_steps"] == 0
    assert client.clean(Keys(cfg.run_id).prefix) == 0


@pytest.mark.timeout(300)
def test_silent_trainer_fails_every_simulation_rank(shared_files):
    from simai_core.workflow.simulation import run_simulation

    client, _ = shared_files
    comm = mpi.world()
    cfg = comm.bcast(WorkflowConfig.model_validate({**FAST, "startup_timeout_s": 2.0}))
    role = plan_layout(comm, "clustered", 0.5)
    start = time.monotonic()
    if role.component == "sim":  # the trainer ranks never start: as if killed before their first heartbeat
        with pytest.raises(PeerTimeoutError, match="no sign of life"):
            run_simulation(cfg, role, client, time.time())
        assert time.monotonic() - start < 2.0 + 2.0
    comm.Barrier()
    role.comm.Free()


@pytest.mark.timeout(300)
def test_failed_simulation_fails_every_trainer_rank(shared_files):
    from simai_core.workflow.trainer import run_trainer

    client, _ = shared_files
    comm = mpi.world()
    cfg = comm.bcast(WorkflowConfig.model_validate(FAST))
    role = plan_layout(comm, "clustered", 0.5)
    if role.component == "train":
        with pytest.raises(PeerFailedError, match="simulated crash"):
            run_trainer(cfg, role, client, time.time())
    elif role.is_head:
        publish_error(client, Keys(cfg.run_id), "sim", "RuntimeError on sim rank 0: simulated crash")
    comm.Barrier()
    role.comm.Free()


def test_colocated_runs_get_a_node_local_server(shared_files, tmp_path):
    from pathlib import Path

    from simai_core.workflow.driver import colocated_address

    _, shared = shared_files
    comm = mpi.world()
    profile = load_profile("local")
    with colocated_address("filesystem", shared, comm, profile, tmp_path) as address:
        assert address == shared  # one node: the shared server is node-local already
    with colocated_address("filesystem", shared, comm, profile, tmp_path, force_per_node=True) as address:
        addresses = comm.allgather(address)
        assert address != shared and len(set(addresses)) == 1 and Path(address).is_dir()
        client = registry.connect("filesystem", address)
        client.put_tensor(f"k{comm.rank}", np.arange(3))
        client.close()
        comm.Barrier()
    comm.Barrier()  # the node's first rank stops the server on leaving the block
    assert not Path(address).exists(), "the per-node server is stopped when the block ends"
