"""The simulation's surrogate check on a fixed sample of points (imports torch and SciPy lazily).

Each check predicts the targets of ``check_points`` interior points of the rank, drawn
once per run, instead of every point: its cost is then bounded by the sample, not by the
problem size. The MLP's sample is scattered over the interior. The GNN's is drawn as
patches of neighbouring points and predicted on the subgraph of their k-hop
neighbourhood, k = message-passing layers. That prediction is exactly the whole graph's
at those points (up to float rounding): the GNN aggregates by sum over in-edges and
every other layer works per node or per edge, so after k blocks a node's value depends
on its k-hop in-neighbourhood only. Patches keep those neighbourhoods overlapping (a
6-hop ball on a kNN grid graph holds about 85 nodes, so thousands of scattered points
would cover most of the graph).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class CheckSet:
    """What the check feeds the model and judges.

    ``nodes``: rows of the sample fed to the model; ``centres``: positions in ``nodes`` whose
    prediction is judged; ``edges`` and ``pos``: the graph on ``nodes`` (empty for the MLP).
    """

    nodes: Tensor
    centres: Tensor
    edges: Tensor
    pos: Tensor

    @property
    def n_judged(self) -> int:
        """Points whose prediction is judged."""
        return int(self.centres.numel())

    @property
    def n_fed(self) -> int:
        """Points (graph nodes) the model predicts."""
        return int(self.nodes.numel())


def sample_points(coords: np.ndarray, interior: np.ndarray, n: int | None, patch: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` interior points (every interior point when ``n`` is None or covers them).

    ``patch`` 1 draws them scattered; more draws patches of up to ``patch`` nearest
    interior points around random unchosen seeds until ``n`` are chosen.
    """
    inside = np.flatnonzero(interior)
    if n is None or n >= inside.size:
        return inside
    if patch <= 1:
        return np.sort(rng.choice(inside, n, replace=False))
    from scipy.spatial import cKDTree

    tree = cKDTree(coords[inside])
    chosen = np.zeros(inside.size, dtype=bool)
    count = 0
    while count < n:  # every round adds at least its seed, which is its own nearest point
        seed = rng.choice(np.flatnonzero(~chosen))
        _, near = tree.query(coords[inside[seed]], k=min(patch, n - count))
        chosen[np.atleast_1d(near)] = True
        count = int(chosen.sum())
    return inside[chosen]


def check_set(coords: np.ndarray, interior: np.ndarray, graph: tuple[Tensor, Tensor] | None, n: int | None,
              patch: int, hops: int, seed: int) -> CheckSet:
    """The check's sample: scattered for the MLP (``graph`` None); patches on their ``hops``-hop subgraph for the GNN."""
    import torch

    rng = np.random.default_rng(seed)
    if graph is None:
        rows = torch.from_numpy(sample_points(coords, interior, n, 1, rng))
        return CheckSet(rows, torch.arange(rows.numel()), torch.empty((2, 0), dtype=torch.long), torch.empty((0, 1)))
    edges, pos = graph
    points = sample_points(coords, interior, n, patch, rng)
    if points.size == pos.shape[0]:  # the whole graph: nothing to cut
        every = torch.from_numpy(points)
        return CheckSet(every, every, edges, pos)
    subset, sub_edges, centres = k_hop_subgraph(points, hops, edges.numpy(), pos.shape[0])
    return CheckSet(torch.from_numpy(subset), torch.from_numpy(centres), torch.from_numpy(sub_edges), pos[subset])


def k_hop_subgraph(points: np.ndarray, hops: int, edges: np.ndarray, n_nodes: int) -> tuple[np.ndarray, ...]:
    """The nodes within ``hops`` in-edges of ``points``, the edges among them, and where ``points`` landed.

    As PyG's ``k_hop_subgraph`` (``flow="source_to_target"``, relabelled), in NumPy: importing
    PyG costs the simulation seconds, and it runs the model from TorchScript without it.
    Returns ``(subset, edges relabelled into subset, positions of points in subset)``.
    """
    inside = np.zeros(n_nodes, dtype=bool)
    inside[points] = True
    for _ in range(hops):
        inside[edges[0, inside[edges[1]]]] = True  # senders of every edge into the set
    subset = np.flatnonzero(inside)
    relabel = np.full(n_nodes, -1, dtype=np.int64)
    relabel[subset] = np.arange(subset.size)
    kept = edges[:, inside[edges[0]] & inside[edges[1]]]
    return subset, relabel[kept], relabel[points]


def check_errors(model: Any, sample: np.ndarray, n_in: int, persistence_columns: tuple[int, ...],
                 check: CheckSet) -> np.ndarray:
    """``[sum of squared errors, values judged, persistence's sum of squared errors]`` on the check's points."""
    import torch

    table = torch.from_numpy(sample[check.nodes.numpy()].astype(np.float32))
    # Each checkpoint runs only a few times: the JIT's profiling runs (10x slower first calls for
    # the GNN) would never pay off, so run it unoptimised.
    with torch.jit.optimized_execution(False), torch.inference_mode():
        pred = model(table[:, :n_in], check.edges, check.pos)[check.centres]
    rows = table[check.centres]
    target = rows[:, n_in:]
    persistence = rows[:, list(persistence_columns)]  # predict no change
    return np.array([float(((pred - target) ** 2).sum()), float(pred.numel()),
                     float(((persistence - target) ** 2).sum())])
