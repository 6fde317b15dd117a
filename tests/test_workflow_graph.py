"""kNN mesh graphs: correct neighbours, canonical ties, and the two builders agree."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from simai_core.workflow import graph
from simai_core.workflow.config import ProblemConfig
from simai_core.workflow.graph import knn_graph, torch_cluster_available
from simai_core.workflow.problem import WaveProblem

needs_torch_cluster = pytest.mark.skipif(not torch_cluster_available(), reason="torch_cluster is not installed")


def brute_force(pos: np.ndarray, k: int) -> np.ndarray:
    """Reference: all pairwise distances, ranked by (distance within 1e-9, index)."""
    d = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=2)
    np.fill_diagonal(d, np.inf)
    senders = []
    for row in d:
        order = np.lexsort((np.arange(len(row)), np.round(row / 1e-9)))
        senders.append(order[:k])
    return np.stack([np.concatenate(senders), np.repeat(np.arange(len(pos)), k)])


def point_sets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    grid2 = np.stack(np.meshgrid(np.arange(12.0), np.arange(9.0), indexing="ij"), -1).reshape(-1, 2)
    grid3 = np.stack(np.meshgrid(*[np.arange(6.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return {"random1d": rng.random((150, 1)), "random2d": rng.random((300, 2)), "random3d": rng.random((300, 3)),
            "grid2d": grid2 * 0.37, "grid3d": grid3, "line": np.arange(40.0)[:, None]}


@pytest.mark.parametrize("name", list(point_sets()))
@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_scipy_builder_matches_brute_force(name, k):
    pos = point_sets()[name]
    edges, used = knn_graph(pos, k, "scipy")
    assert used == "scipy" and edges.dtype == np.int64 and edges.shape == (2, len(pos) * k)
    assert not np.any(edges[0] == edges[1]), "no self loops"
    np.testing.assert_array_equal(edges, brute_force(pos, k))


@needs_torch_cluster
@pytest.mark.parametrize("name", list(point_sets()))
@pytest.mark.parametrize("k", [2, 4, 8])
def test_builders_agree(name, k):
    pos = point_sets()[name]
    a, _ = knn_graph(pos, k, "scipy")
    b, used = knn_graph(pos, k, "torch_cluster")
    assert used == "torch_cluster"
    np.testing.assert_array_equal(a, b)


@needs_torch_cluster
def test_builders_agree_on_the_benchmark_mesh():
    coords = WaveProblem(ProblemConfig(size="small"), MPI.COMM_SELF).coords
    a, _ = knn_graph(coords, 4, "scipy")
    b, _ = knn_graph(coords, 4, "torch_cluster")
    np.testing.assert_array_equal(a, b)
    # Interior nodes of a regular grid: exactly the 4 axis neighbours at one spacing.
    spacing = 4 * np.pi / 32
    lengths = np.linalg.norm(coords[a[0]] - coords[a[1]], axis=1).reshape(-1, 4)
    assert np.allclose(lengths[33], spacing)


def test_auto_picks_what_is_installed(monkeypatch):
    assert graph.resolve_builder("auto") == ("torch_cluster" if torch_cluster_available() else "scipy")
    monkeypatch.setattr(graph, "torch_cluster_available", lambda: False)
    assert graph.resolve_builder("auto") == "scipy"
    with pytest.raises(ImportError, match="torch_cluster is not installed"):
        graph.resolve_builder("torch_cluster")


def test_k_is_clipped_to_the_number_of_other_points():
    pos = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    edges, _ = knn_graph(pos, 5, "scipy")
    assert edges.shape == (2, 6)
    assert knn_graph(pos[:1], 3, "scipy")[0].shape == (2, 0)
