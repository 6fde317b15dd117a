"""Encode-process-decode message-passing GNN (imports torch and torch_geometric).

Follows the reference design: edge inputs are computed inside ``forward`` from the
node inputs and positions (relative position sender minus receiver, its norm, and
the input difference sender minus receiver), so absolute positions are never node
features; node and edge encoders, ``n_message_passing_layers`` processor blocks
(residual edge update on ``[x_sender, x_receiver, e]``, sum aggregation at the
receiver, residual node update on ``[x, aggregated]``) and a node decoder.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from simai_core.models.config import GNNConfig


def make_mlp(n_in: int, hidden: int, n_out: int, n_hidden_layers: int, layer_norm: bool) -> nn.Sequential:
    """``n_hidden_layers + 2`` linear layers with ReLU between them, optionally LayerNorm on the output."""
    layers: list[nn.Module] = [nn.Linear(n_in, hidden), nn.ReLU()]
    for _ in range(n_hidden_layers):
        layers += [nn.Linear(hidden, hidden), nn.ReLU()]
    layers.append(nn.Linear(hidden, n_out))
    if layer_norm:
        layers.append(nn.LayerNorm(n_out))
    return nn.Sequential(*layers)


_REMOVE_AT_EXIT: set[str] = set()


def _remove_generated_source_at_exit(module_name: str) -> None:
    """Remove PyG's generated module ``module_name`` from the temp dir when this process exits.

    PyG writes each MessagePassing class's ``propagate`` to a new temp file per process and never
    removes it (hundreds pile up over a test session). TorchScript reads that source when it scripts
    the model, so the file must stay while the process runs.
    """
    path = getattr(sys.modules.get(module_name), "__file__", None)
    if path is None or path in _REMOVE_AT_EXIT:
        return
    generated = Path(path)
    if generated.parent != Path(tempfile.gettempdir()) or not generated.name.startswith(f"{module_name}_"):
        return  # not PyG's temp file: leave it alone
    _REMOVE_AT_EXIT.add(path)
    atexit.register(_unlink_quietly, path)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class ProcessorBlock(MessagePassing):
    """One message-passing step: residual edge update, sum aggregation, residual node update.

    ``forward(x, e, edge_index)``: ``x`` ``(n, h)``, ``e`` ``(E, h)``, ``edge_index`` ``(2, E)``
    (row 0 sender, row 1 receiver); returns the updated ``(x, e)``.
    """

    def __init__(self, hidden: int, n_hidden_layers: int, layer_norm: bool) -> None:
        super().__init__(aggr="sum", flow="source_to_target")
        _remove_generated_source_at_exit(f"{type(self).__module__}_{type(self).__name__}_propagate")
        self.edge_mlp = make_mlp(3 * hidden, hidden, hidden, n_hidden_layers, layer_norm)
        self.node_mlp = make_mlp(2 * hidden, hidden, hidden, n_hidden_layers, layer_norm)

    def forward(self, x: Tensor, e: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        """Update node features ``x`` and edge features ``e`` once."""
        sender, receiver = edge_index[0], edge_index[1]
        e = e + self.edge_mlp(torch.cat([x[sender], x[receiver], e], dim=1))
        n = x.size(0)
        aggregated = self.propagate(edge_index, e=e, size=(n, n))
        x = x + self.node_mlp(torch.cat([x, aggregated], dim=1))
        return x, e

    def message(self, e: Tensor) -> Tensor:
        """The message along an edge is its (updated) edge feature."""
        return e


class GNN(nn.Module):
    """Mesh GNN mapping the fields at step t to the fields at step t+1.

    ``forward(x, edge_index, pos)``: ``x`` ``(n, n_in)`` float32, ``edge_index`` ``(2, E)``
    int64 (row 0 sender, row 1 receiver), ``pos`` ``(n, spatial_dim)`` float32;
    returns ``(n, n_out)`` (with ``residual``: ``x[:, :n_out]`` plus the decoded change). Several
    graphs are batched as one disjoint union.
    """

    def __init__(self, config: GNNConfig, n_in: int, n_out: int, spatial_dim: int) -> None:
        super().__init__()
        h, nh, ln = config.hidden_channels, config.n_mlp_hidden_layers, config.layer_norm
        self.node_encoder = make_mlp(n_in, h, h, nh, ln)
        self.edge_encoder = make_mlp(n_in + spatial_dim + 1, h, h, nh, ln)
        self.processor = nn.ModuleList(ProcessorBlock(h, nh, ln) for _ in range(config.n_message_passing_layers))
        self.node_decoder = make_mlp(h, h, n_out, nh, False)
        if config.residual and n_out > n_in:
            raise ValueError(f"a residual GNN adds its output to the first n_out inputs: n_out {n_out} > n_in {n_in}")
        self.residual = config.residual
        self.n_out = n_out

    def forward(self, x: Tensor, edge_index: Tensor, pos: Tensor) -> Tensor:
        """Predict ``(n, n_out)`` for every node."""
        sender, receiver = edge_index[0], edge_index[1]
        rel = pos[sender] - pos[receiver]
        dist = torch.linalg.vector_norm(rel, dim=1, keepdim=True)
        e = self.edge_encoder(torch.cat([rel, dist, x[sender] - x[receiver]], dim=1))
        v = self.node_encoder(x)
        for block in self.processor:
            v, e = block(v, e, edge_index)
        out = self.node_decoder(v)
        return x[:, : self.n_out] + out if self.residual else out
