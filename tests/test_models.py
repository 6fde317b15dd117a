"""The surrogate models: sizes as in the reference, TorchScript checkpoints, GNN symmetries."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

torch = pytest.importorskip("torch")
pytest.importorskip("torch_geometric")

from simai_core.models import GNNConfig, MLPConfig, build_model  # noqa: E402
from simai_core.workflow import checkpoint  # noqa: E402


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def random_graph(n: int = 50, dim: int = 2, n_in: int = 1, k: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, pos = torch.randn(n, n_in, generator=g), torch.randn(n, dim, generator=g)
    senders = torch.randint(0, n, (n * k,), generator=g)
    receivers = torch.arange(n).repeat_interleave(k)
    return x, torch.stack([senders, receivers]), pos


def test_parameter_counts_match_the_reference():
    assert n_params(build_model(MLPConfig(), 1, 1, 2)) == 6681
    assert n_params(build_model(GNNConfig(), 1, 1, 1)) == 20673
    assert n_params(build_model(GNNConfig(), 1, 1, 2)) == 20689
    assert n_params(build_model(GNNConfig(), 2, 2, 2)) == 20738


@pytest.mark.parametrize("config", [MLPConfig(neurons=8, layers=2), GNNConfig(hidden_channels=8, n_message_passing_layers=2)])
@pytest.mark.parametrize("n_in", [1, 3])
def test_shapes_and_torchscript_round_trip(config, n_in):
    torch.manual_seed(0)
    model = build_model(config, n_in, n_in, 3).eval()
    x, edges, pos = random_graph(dim=3, n_in=n_in)
    expected = model(x, edges, pos)
    assert expected.shape == (50, n_in)
    loaded = checkpoint.from_bytes(checkpoint.to_bytes(checkpoint.script(model)))
    torch.testing.assert_close(loaded(x, edges, pos), expected)


def test_scripted_module_follows_training():
    model = build_model(MLPConfig(neurons=4, layers=1), 1, 1, 1)
    scripted = checkpoint.script(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    x, edges, pos = random_graph(dim=1)
    loaded = checkpoint.from_bytes(checkpoint.to_bytes(scripted))
    torch.testing.assert_close(loaded(x, edges, pos), model(x, edges, pos))


def test_gnn_is_permutation_equivariant_and_translation_invariant():
    torch.manual_seed(1)
    model = build_model(GNNConfig(hidden_channels=8, n_message_passing_layers=3), 1, 1, 2).eval()
    x, edges, pos = random_graph()
    out = model(x, edges, pos)
    perm = torch.randperm(len(x))
    inverse = torch.argsort(perm)
    out_perm = model(x[perm], inverse[edges], pos[perm])
    torch.testing.assert_close(out_perm, out[perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(x, edges, pos + 3.5), out, rtol=1e-5, atol=1e-5)


def test_gnn_batch_of_graphs_is_their_disjoint_union():
    torch.manual_seed(2)
    model = build_model(GNNConfig(hidden_channels=8, n_message_passing_layers=2), 1, 1, 2).eval()
    a, b = random_graph(30, seed=3), random_graph(20, seed=4)
    joined = model(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1] + 30], dim=1), torch.cat([a[2], b[2]]))
    torch.testing.assert_close(joined, torch.cat([model(*a), model(*b)]), rtol=1e-5, atol=1e-5)


def test_configs_reject_unknown_fields():
    with pytest.raises(ValidationError):
        MLPConfig(neurons=4, width=3)
    with pytest.raises(ValidationError):
        GNNConfig(hidden=3)


def test_importing_the_packages_does_not_import_torch():
    code = ("import sys, simai_core.models, simai_core.workflow, simai_core.workflow.driver, "
            "simai_core.workflow.graph, simai_core.workflow.problem; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_a_process_that_scripts_a_gnn_leaves_no_generated_source_behind(tmp_path):
    """PyG writes the generated ``propagate`` of each message-passing class to the temp dir; it goes at exit."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    mine = temp / "not-pyg.py"
    mine.write_text("")
    code = ("import pathlib, tempfile; from simai_core.models import GNNConfig, build_model; "
            "from simai_core.workflow import checkpoint; "
            "model = build_model(GNNConfig(hidden_channels=8, n_message_passing_layers=2), 1, 1, 2); "
            "checkpoint.to_bytes(checkpoint.script(model)); "
            "print(*sorted(p.name for p in pathlib.Path(tempfile.gettempdir()).glob('*_propagate_*.py')))")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TMPDIR": str(temp)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ProcessorBlock_propagate_" in proc.stdout, "PyG no longer writes a temp file: drop the clean-up"
    assert sorted(p.name for p in temp.iterdir()) == ["not-pyg.py"]
