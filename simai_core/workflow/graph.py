"""k-nearest-neighbour mesh graph of one rank's points.

Two builders give the same edges: ``torch_cluster.knn_graph`` when the package is
installed (PyG 2.8's own ``knn_graph`` needs pyg-lib, which PyPI does not carry, so
torch_cluster is called directly) and SciPy's ``cKDTree`` otherwise. Regular grids
have many equidistant neighbours, and the two libraries break such ties differently;
both candidate sets are therefore widened until the k-th distance is strictly
separated from the next candidate and then re-ranked by (distance, index), which
makes the result independent of the builder.

Edges are directed ``(2, n * k)`` int64, row 0 the neighbour (sender), row 1 the
centre (receiver), no self loops, grouped by receiver (PyG's ``source_to_target``).
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import numpy as np

Builder = Literal["auto", "torch_cluster", "scipy"]


def torch_cluster_available() -> bool:
    """Whether ``torch_cluster`` can be imported."""
    return importlib.util.find_spec("torch_cluster") is not None


def resolve_builder(builder: Builder) -> str:
    """The builder ``auto`` stands for on this machine (or ``builder`` itself)."""
    if builder == "auto":
        return "torch_cluster" if torch_cluster_available() else "scipy"
    if builder == "torch_cluster" and not torch_cluster_available():
        raise ImportError("graph builder 'torch_cluster' requested but torch_cluster is not installed (see `make setup`)")
    return builder


def preload(builder: Builder = "auto") -> str:
    """Import the builder's library now (so its import time is not billed to the first graph); returns its name."""
    used = resolve_builder(builder)
    if used == "torch_cluster":
        import torch_cluster  # noqa: F401
    else:
        import scipy.spatial  # noqa: F401
    return used


def _candidates_scipy(pos: np.ndarray, m: int) -> np.ndarray:
    """``(n, m)`` indices of the m nearest other points (any order)."""
    from scipy.spatial import cKDTree

    _, idx = cKDTree(pos).query(pos, k=m + 1)
    idx = np.asarray(idx).reshape(len(pos), m + 1)
    own = idx == np.arange(len(pos))[:, None]
    # Drop the point itself; a row without it (impossible for distinct points) drops its farthest.
    own[~own.any(axis=1), -1] = True
    return idx[~own].reshape(len(pos), m)


def _candidates_torch_cluster(pos: np.ndarray, m: int) -> np.ndarray:
    """``(n, m)`` indices of the m nearest other points, from torch_cluster.knn_graph."""
    import torch
    import torch_cluster

    edges = torch_cluster.knn_graph(torch.from_numpy(pos), k=m, loop=False).numpy()
    sender, receiver = edges[0], edges[1]
    counts = np.bincount(receiver, minlength=len(pos))
    if not np.all(counts == m):
        raise RuntimeError(f"torch_cluster.knn_graph returned {counts.min()}..{counts.max()} neighbours, expected {m}")
    order = np.argsort(receiver, kind="stable")
    return sender[order].reshape(len(pos), m)


def _rank(pos: np.ndarray, cand: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidates sorted by (distance, index) with ties within ``tol``; returns (indices, tie groups)."""
    d = np.linalg.norm(pos[cand] - pos[:, None, :], axis=2)
    by_dist = np.argsort(d, axis=1, kind="stable")
    d = np.take_along_axis(d, by_dist, axis=1)
    cand = np.take_along_axis(cand, by_dist, axis=1)
    groups = np.concatenate([np.zeros((len(d), 1), int), np.cumsum(np.diff(d, axis=1) > tol, axis=1)], axis=1)
    order = _lexsort_rows(cand, groups)
    return np.take_along_axis(cand, order, axis=1), np.take_along_axis(groups, order, axis=1)


def _lexsort_rows(cand: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per-row order by group, then by index."""
    key = groups.astype(np.int64) * (int(cand.max(initial=0)) + 1) + cand
    return np.argsort(key, axis=1, kind="stable")


def knn_graph(pos: np.ndarray, k: int, builder: Builder = "auto") -> tuple[np.ndarray, str]:
    """Directed kNN edge index ``(2, n * min(k, n - 1))`` of points ``pos`` ``(n, d)``; returns (edges, builder used)."""
    pos = np.ascontiguousarray(pos, dtype=np.float64)
    used = resolve_builder(builder)
    n = len(pos)
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((2, 0), dtype=np.int64), used
    find = _candidates_torch_cluster if used == "torch_cluster" else _candidates_scipy
    span = float(np.ptp(pos, axis=0).max()) if n > 1 else 1.0
    tol = 1e-9 * max(span, 1e-300)
    m = min(n - 1, 2 * k)
    while True:
        ranked, groups = _rank(pos, find(pos, m), tol)
        # Complete when no point tied with the k-th neighbour can lie beyond the candidate set.
        if m == n - 1 or np.all(groups[:, k - 1] < groups[:, m - 1]):
            break
        m = min(n - 1, 2 * m)
    receiver = np.repeat(np.arange(n, dtype=np.int64), k)
    sender = ranked[:, :k].astype(np.int64).ravel()
    return np.stack([sender, receiver]), used
