"""Who does what: splitting MPI ranks into simulation and trainer roles.

``clustered``: the first ``sim_fraction`` of the world simulates, the rest trains; one
staging scope (one server) for everybody. ``colocated``: the split is made inside every
node, and each node is its own staging scope (node-local server). In each scope the
lowest rank of each role is its *head* (writes that role's control keys), and trainer
``i`` of a scope trains on the data of the scope's simulation ranks ``j`` with
``j % n_trainers == i`` (the reference required as many trainers as simulation ranks
for the GNN; this does not).

Which node a rank is on is decided here and nowhere else (:func:`node_comm`,
:func:`node_info`): the staging pool's node-scoped servers, colocated servers and the
role split all ask it. With *virtual nodes* (:func:`set_virtual_nodes`, pytest's
``--simai-virtual-nodes`` or the profile's ``virtual_nodes``) each real node's ranks are
cut into N equal blocks of consecutive ranks, each treated as a node of its own, so one
machine exercises every per-node path (they still share its cores, memory and network).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Component = Literal["sim", "train"]


class LayoutError(ValueError):
    """A rank split that cannot run (a role without ranks, a trainer without data)."""


@dataclass(frozen=True)
class Role:
    """One rank's part in the workflow.

    ``comm`` is the component's communicator (all simulation or all trainer ranks);
    ``rank`` is the rank in it (a simulation rank's id in key names).
    """

    component: Component
    comm: Any
    rank: int = 0
    scope: int = 0
    is_head: bool = True
    owned: tuple[int, ...] = ()
    max_owned: int = 1
    sim_size: int = 1
    local_index: int = 0
    world_rank: int = 0
    node: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


def split_count(n: int, fraction: float) -> int:
    """Simulation ranks out of ``n``: ``round(n * fraction)`` kept within ``[1, n - 1]``."""
    if n < 2:
        raise LayoutError(f"a workflow needs at least 2 ranks to split into simulation and trainer, got {n}")
    return min(max(round(n * fraction), 1), n - 1)


_VIRTUAL_NODES = [1]  # virtual nodes per real node (1: the real layout)


def set_virtual_nodes(n: int) -> None:
    """Split every real node's ranks into ``n`` virtual nodes from now on (1 turns it off)."""
    if n < 1:
        raise LayoutError(f"virtual nodes must be at least 1, got {n}")
    _VIRTUAL_NODES[0] = n


def virtual_nodes() -> int:
    """Virtual nodes per real node (1 when off)."""
    return _VIRTUAL_NODES[0]


@dataclass(frozen=True)
class NodeInfo:
    """Where a rank sits: its node (numbered by lowest world rank), its place on it, the job's node count."""

    index: int
    local_rank: int
    local_size: int
    count: int
    virtual: bool


def node_comm(world: Any) -> Any:
    """The communicator of this rank's node, virtual if set (collective over ``world``; the caller frees it).

    A real node whose rank count does not split into the virtual nodes evenly is an error on
    every rank (checked collectively, so no rank is left in a collective).
    """
    from mpi4py import MPI

    real = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.Get_rank())
    n = virtual_nodes()
    if n == 1:
        return real
    try:
        size, local = real.Get_size(), real.Get_rank()
        leader = real.allreduce(world.Get_rank(), op=MPI.MIN)
    finally:
        real.Free()
    uneven = world.allreduce(size if size % n else 0, op=MPI.MAX)
    if uneven:
        raise LayoutError(f"a node with {uneven} ranks cannot be split into {n} virtual nodes of equal size: "
                          f"start a multiple of {n} ranks per node")
    return world.Split(leader * n + local // (size // n), key=world.Get_rank())


def node_info(world: Any) -> NodeInfo:
    """This rank's :class:`NodeInfo` under the current (real or virtual) layout (collective over ``world``)."""
    from mpi4py import MPI

    comm = node_comm(world)
    try:
        leader = comm.allreduce(world.Get_rank(), op=MPI.MIN)
        local, local_size = comm.Get_rank(), comm.Get_size()
    finally:
        comm.Free()
    leaders = sorted(set(world.allgather(leader)))
    return NodeInfo(index=leaders.index(leader), local_rank=local, local_size=local_size, count=len(leaders),
                    virtual=virtual_nodes() > 1)


def plan_layout(world: Any, deployment: str, sim_fraction: float) -> Role:
    """This rank's :class:`Role` (collective over ``world``)."""
    node = node_info(world)
    if deployment == "clustered":
        is_sim, scope = world.Get_rank() < split_count(world.Get_size(), sim_fraction), 0
    elif deployment == "colocated":
        is_sim, scope = node.local_rank < split_count(node.local_size, sim_fraction), node.index
    else:
        raise LayoutError(f"unknown deployment {deployment!r}; expected 'clustered' or 'colocated'")
    comm = world.Split(0 if is_sim else 1, key=world.Get_rank())
    table = world.allgather(("sim" if is_sim else "train", scope, comm.Get_rank()))
    return _role_from_table(table, world.Get_rank(), comm, node.index)


def _role_from_table(table: list[tuple[str, int, int]], world_rank: int, comm: Any, node: int) -> Role:
    component, scope, rank = table[world_rank]
    sims = sorted(r for c, s, r in table if c == "sim" and s == scope)
    trainers = sorted(r for c, s, r in table if c == "train" and s == scope)
    if not sims or not trainers:
        raise LayoutError(f"staging scope {scope} has {len(sims)} simulation and {len(trainers)} trainer ranks; "
                          "every scope (node, if colocated) needs both")
    if len(trainers) > len(sims):
        raise LayoutError(f"scope {scope}: {len(trainers)} trainer ranks but only {len(sims)} simulation ranks; "
                          "every trainer trains on at least one simulation rank's data: lower the trainer share")
    mine = sims if component == "sim" else trainers
    index = mine.index(rank)
    owned = tuple(s for j, s in enumerate(sims) if j % len(trainers) == index) if component == "train" else ()
    scopes = {s for _, s, _ in table}
    max_owned = max(-(-sum(1 for c, s2, _ in table if c == "sim" and s2 == s)
                      // sum(1 for c, s2, _ in table if c == "train" and s2 == s)) for s in scopes)
    return Role(component="sim" if component == "sim" else "train", comm=comm, rank=rank, scope=scope,
                is_head=index == 0, owned=owned, max_owned=max_owned, sim_size=sum(1 for c, _, _ in table if c == "sim"),
                local_index=index, world_rank=world_rank, node=node,
                detail={"scopes": len(scopes), "scope_sim_ranks": len(sims), "scope_trainer_ranks": len(trainers)})


def serial_role(component: Component, comm: Any) -> Role:
    """The role of a component that runs alone in its own process (one rank, one scope)."""
    return Role(component=component, comm=comm, rank=int(comm.Get_rank()), owned=(0,) if component == "train" else ())
