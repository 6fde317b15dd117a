"""Run by tests/test_virtual_nodes.py under ``mpiexec -n 8 ... --simai-virtual-nodes 2``: 2 nodes of 4 ranks."""

import numpy as np
import pytest

from simai_core import mpi
from simai_core.workflow.layout import node_info, plan_layout, set_virtual_nodes, virtual_nodes

PER_NODE = 4


@pytest.fixture(autouse=True)
def eight_ranks_two_nodes():
    assert mpi.size() == 8 and virtual_nodes() == 2, "run with mpiexec -n 8 and --simai-virtual-nodes 2"


def test_ranks_sit_on_two_nodes_of_four_consecutive_ranks():
    node = node_info(mpi.world())
    assert (node.index, node.local_rank, node.local_size, node.count, node.virtual) == \
        (mpi.rank() // PER_NODE, mpi.rank() % PER_NODE, PER_NODE, 2, True)


def test_nodelocal_directories_are_per_node(staging_pool):
    client = staging_pool.client("nodelocal")
    addresses = mpi.gather_to_all(staging_pool.address("nodelocal"))
    nodes = [r // PER_NODE for r in range(8)]
    assert len(set(addresses)) == 2
    assert all((addresses[a] == addresses[b]) == (nodes[a] == nodes[b]) for a in range(8) for b in range(8))
    client.put_tensor(f"vn/{mpi.rank()}", np.full(3, mpi.rank()))
    mpi.barrier()
    seen = [r for r in range(8) if client.exists(f"vn/{r}")]
    assert seen == [r for r in range(8) if nodes[r] == nodes[mpi.rank()]], "a node sees only its own node's keys"
    mpi.barrier()
    client.delete(f"vn/{mpi.rank()}")


def test_colocated_roles_have_one_head_per_node_and_component():
    world = mpi.world()
    role = plan_layout(world, "colocated", 0.5)
    roles = world.allgather((role.component, role.scope, role.node, role.is_head, role.rank))
    role.comm.Free()
    for rank, (component, scope, node, _, _) in enumerate(roles):
        assert scope == node == rank // PER_NODE
        assert component == ("sim" if rank % PER_NODE < 2 else "train"), "the split is made inside each node"
    heads = sorted((scope, component) for component, scope, _, head, _ in roles if head)
    assert heads == [(0, "sim"), (0, "train"), (1, "sim"), (1, "train")]


def test_clustered_roles_do_not_change():
    world = mpi.world()

    def roles() -> list[tuple]:
        role = plan_layout(world, "clustered", 0.5)
        out = world.allgather((role.component, role.rank, role.scope, role.is_head, role.owned, role.max_owned))
        role.comm.Free()
        return out

    virtual = roles()
    set_virtual_nodes(1)
    try:
        real = roles()
    finally:
        set_virtual_nodes(2)
    assert virtual == real
    assert [c for c, *_ in real] == ["sim"] * 4 + ["train"] * 4


def test_the_json_says_the_nodes_are_virtual(staging_pool, simai_run):
    staging_pool.client("nodelocal")
    run = simai_run("nodelocal", {})
    assert run.nodes == 2 and run.virtual_nodes is True
    assert run.model_dump(by_alias=True)["virtual_nodes"] is True
