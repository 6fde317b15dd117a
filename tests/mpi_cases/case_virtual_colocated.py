"""Run by tests/test_virtual_nodes.py under ``mpiexec -n 8 ... --simai-virtual-nodes 2``: a colocated redis run.

Every server logs every command it executes (Redis's slow log with a threshold of 0 us), so
what reached each node's server is read from the server itself, not from the clients.
"""

import re

import pytest

from simai_core import mpi
from simai_core.staging import registry
from simai_core.workflow.config import WorkflowConfig
from simai_core.workflow.driver import colocated_address, run_workflow
from simai_core.workflow.layout import node_info

PER_NODE = 4
DATA_KEY = re.compile(rb"simai/[^/]+/data/(\d+)/\d+$")


def logged_data_ranks(client) -> set[int]:
    """The simulation ranks whose snapshots this server stored (from every MSET it logged)."""
    entries = client.command("SLOWLOG", "GET", "-1")
    assert len(entries) < MAX_LOG, "the slow log overflowed: raise MAX_LOG"
    ranks = set()
    for entry in entries:
        args = entry[3]
        if args[0].upper() == b"MSET":
            ranks |= {int(m[1]) for a in args[1::2] if (m := DATA_KEY.match(a))}
    return ranks


MAX_LOG = 1_000_000


@pytest.mark.timeout(300)
def test_each_node_has_its_own_server_holding_only_its_ranks_data(staging_pool, simai_profile, tmp_path):
    world = mpi.world()
    assert mpi.size() == 8 and node_info(world).count == 2, "run with mpiexec -n 8 and --simai-virtual-nodes 2"
    staging_pool.client("redis")
    shared = staging_pool.address("redis")
    cfg = WorkflowConfig.model_validate({
        "problem": {"size": "debug"}, "deployment": "colocated", "heartbeat_interval_s": 0.2,
        "simulation": {"step_time_s": 0.05, "max_steps": 20, "train_interval": 5}})
    with colocated_address("redis", shared, world, simai_profile, tmp_path) as address:
        client = registry.connect("redis", address)
        try:
            client.command("CONFIG", "SET", "slowlog-max-len", MAX_LOG)
            client.command("CONFIG", "SET", "slowlog-log-slower-than", 0)  # before this rank's first put
            result = run_workflow(cfg, "redis", address, tmp_path, world=world)
            world.Barrier()
            ranks = logged_data_ranks(client)
        finally:
            client.close()
    result.raise_for_errors()
    node = node_info(world).index
    addresses = mpi.gather_to_all((node, address))
    assert len({a for _, a in addresses}) == 2 and shared not in {a for _, a in addresses}, "one new server per node"
    assert all(a == b for (n, a) in addresses for (m, b) in addresses if n == m)
    mine = {r.rank for r in result.reports if r.component == "sim" and r.world_rank // PER_NODE == node}
    assert len(mine) == 2 and {r.scope for r in result.reports if r.world_rank // PER_NODE == node} == {node}
    assert ranks == mine, f"node {node}'s server stored snapshots of simulation ranks {sorted(ranks)}, not {sorted(mine)}"
