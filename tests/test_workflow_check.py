"""The simulation's surrogate check on a sample: exact on the GNN's k-hop subgraph, whole graph without a sample."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

torch = pytest.importorskip("torch")
pytest.importorskip("torch_geometric")

from simai_core.models import GNNConfig, MLPConfig, build_model  # noqa: E402
from simai_core.workflow import checkpoint  # noqa: E402
from simai_core.workflow.check import CheckSet, check_errors, check_set, k_hop_subgraph, sample_points  # noqa: E402
from simai_core.workflow.config import ProblemConfig  # noqa: E402
from simai_core.workflow.graph import knn_graph  # noqa: E402
from simai_core.workflow.problem import WaveProblem  # noqa: E402

LAYERS = 4


def mesh(size: str = "small") -> tuple[np.ndarray, np.ndarray, tuple[torch.Tensor, torch.Tensor]]:
    """Coordinates, a sample (noise: every neighbour's input matters) and the kNN graph of one rank's mesh."""
    problem = WaveProblem(ProblemConfig(size=size), MPI.COMM_SELF)
    coords = problem.coords
    sample = np.random.default_rng(3).standard_normal((len(coords), 4))
    edges, _ = knn_graph(coords, 4, "scipy")
    return coords, sample, (torch.from_numpy(edges), torch.from_numpy(coords.astype(np.float32)))


def scripted(config: GNNConfig | MLPConfig, n_in: int = 2, dim: int = 2) -> torch.jit.ScriptModule:
    """The model as the simulation runs it: a loaded TorchScript checkpoint.

    Weights of unit gain (normal, std 1/sqrt(fan-in)): torch's default initialisation damps
    what a node hears from k hops away to ~1e-7, below float32's resolution of the output.
    """
    torch.manual_seed(5)
    model = build_model(config, n_in, n_in, dim)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
    return checkpoint.from_bytes(checkpoint.to_bytes(checkpoint.script(model)))


def predictions(model, sample: np.ndarray, check: CheckSet, graph) -> tuple[torch.Tensor, torch.Tensor]:
    """The judged points' predictions on the check's subgraph, and on the whole graph."""
    table = torch.from_numpy(sample.astype(np.float32))
    with torch.inference_mode():
        sub = model(table[check.nodes, :2], check.edges, check.pos)[check.centres]
        whole = model(table[:, :2], *graph)[check.nodes[check.centres]]
    return sub, whole


def whole_graph_errors(model, sample: np.ndarray, graph, judged: np.ndarray) -> np.ndarray:
    """The check as it was before the sample: predict every node, judge the rows ``judged``."""
    table = torch.from_numpy(sample.astype(np.float32))
    with torch.inference_mode():
        pred = model(table[:, :2], *graph)[judged]
    target = table[judged, 2:]
    return np.array([float(((pred - target) ** 2).sum()), float(pred.numel()),
                     float(((table[judged, :2] - target) ** 2).sum())])


def interior_ring(coords: np.ndarray, margin: float) -> np.ndarray:
    """Points at least ``margin`` away from the box's faces (as a solver's interior mask)."""
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    return np.all((coords - lo >= margin) & (hi - coords >= margin), axis=1)


@pytest.mark.parametrize("patch", [1, 32])
def test_gnn_check_on_the_k_hop_subgraph_equals_the_whole_graph_on_the_sample(patch):
    coords, sample, graph = mesh()
    interior = interior_ring(coords, 1.0)
    model = scripted(GNNConfig(n_message_passing_layers=LAYERS))
    check = check_set(coords, interior, graph, 128, patch, LAYERS, seed=11)
    assert check.n_judged == 128 and check.n_fed < len(coords)
    judged = check.nodes[check.centres].numpy()
    assert interior[judged].all()
    sub, whole = predictions(model, sample, check, graph)
    torch.testing.assert_close(sub, whole, rtol=0, atol=1e-5)  # one hop short moves them by > 1e-4 (next test)
    got = check_errors(model, sample, 2, (0, 1), check)
    np.testing.assert_allclose(got, whole_graph_errors(model, sample, graph, judged), rtol=1e-6)


def test_a_subgraph_one_hop_short_gives_another_figure():
    """What the exactness test guards against: with k one less than the layers, the figure changes."""
    coords, sample, graph = mesh()
    interior = np.ones(len(coords), dtype=bool)
    model = scripted(GNNConfig(n_message_passing_layers=LAYERS))
    short = check_set(coords, interior, graph, 128, 32, LAYERS - 1, seed=11)
    sub, whole = predictions(model, sample, short, graph)
    assert float((sub - whole).abs().max()) > 1e-4, "a k-hop cut too small must change the prediction"
    judged = short.nodes[short.centres].numpy()
    got, full = check_errors(model, sample, 2, (0, 1), short), whole_graph_errors(model, sample, graph, judged)
    assert got[1] == full[1] and got[2] == pytest.approx(full[2])  # same points, same persistence
    assert got[0] != pytest.approx(full[0], rel=1e-6), "... and the check's error"


@pytest.mark.parametrize("config", [GNNConfig(n_message_passing_layers=LAYERS), MLPConfig(neurons=8, layers=2)])
def test_check_points_none_is_the_whole_graph_figure(config):
    coords, sample, graph = mesh()
    interior = np.ones(len(coords), dtype=bool)
    gnn = isinstance(config, GNNConfig)
    model = scripted(config)
    check = check_set(coords, interior, graph if gnn else None, None, 32, LAYERS, seed=11)
    assert check.n_judged == check.n_fed == len(coords)
    args = graph if gnn else (torch.empty((2, 0), dtype=torch.long), torch.empty((0, 1)))
    np.testing.assert_allclose(check_errors(model, sample, 2, (0, 1), check),
                               whole_graph_errors(model, sample, args, np.arange(len(coords))), rtol=1e-6)


def test_mlp_sample_is_scattered_and_its_figure_is_the_rows_figure():
    coords, sample, _ = mesh()
    interior = interior_ring(coords, 1.0)
    model = scripted(MLPConfig(neurons=8, layers=2))
    check = check_set(coords, interior, None, 100, 32, 0, seed=2)
    rows = check.nodes.numpy()
    assert check.n_judged == check.n_fed == 100 and interior[rows].all()
    empty = (torch.empty((2, 0), dtype=torch.long), torch.empty((0, 1)))
    np.testing.assert_allclose(check_errors(model, sample, 2, (0, 1), check),
                               whole_graph_errors(model, sample, empty, rows), rtol=1e-6)


def test_sample_points_draws_exactly_n_interior_points_in_compact_patches():
    coords, _, graph = mesh("medium")
    interior = interior_ring(coords, 0.5)
    rng = np.random.default_rng(0)
    points = sample_points(coords, interior, 4096, 256, rng)
    assert points.size == np.unique(points).size == 4096 and interior[points].all()
    assert np.array_equal(points, sample_points(coords, interior, 4096, 256, np.random.default_rng(0)))
    assert np.array_equal(sample_points(coords, interior, None, 256, rng), np.flatnonzero(interior))
    # Patches keep the 6-hop neighbourhood small; scattered centres would cover most of the graph.
    patched = check_set(coords, interior, graph, 4096, 256, 6, seed=0).n_fed
    scattered = check_set(coords, interior, graph, 4096, 1, 6, seed=0).n_fed
    assert patched < 0.25 * len(coords) < 0.5 * scattered


@pytest.mark.parametrize("hops", [0, 1, 3])
def test_k_hop_subgraph_matches_pyg(hops):
    from torch_geometric.utils import k_hop_subgraph as pyg_k_hop_subgraph

    coords, _, (edges, _) = mesh()
    points = np.array([5, 40, 41, 700, 1000])
    subset, sub_edges, centres = k_hop_subgraph(points, hops, edges.numpy(), len(coords))
    want = pyg_k_hop_subgraph(torch.from_numpy(points), hops, edges, relabel_nodes=True, num_nodes=len(coords),
                              flow="source_to_target")
    for got, expected in zip((subset, sub_edges, centres), want[:3], strict=True):
        np.testing.assert_array_equal(got, expected.numpy())
