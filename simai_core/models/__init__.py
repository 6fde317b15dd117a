"""Surrogate models for the online-training workflow.

Importing this package does not import torch: :func:`build_model` imports the model
module (and torch / torch_geometric) when it is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simai_core.models.config import GNNConfig, MLPConfig, ModelConfig

if TYPE_CHECKING:
    from torch import nn


def build_model(config: MLPConfig | GNNConfig, n_in: int, n_out: int, spatial_dim: int) -> nn.Module:
    """Build the model ``config`` describes; every model has ``forward(x, edge_index, pos) -> (n, n_out)``."""
    if isinstance(config, MLPConfig):
        from simai_core.models.mlp import MLP

        return MLP(config, n_in, n_out)
    from simai_core.models.gnn import GNN

    return GNN(config, n_in, n_out, spatial_dim)


__all__ = ["GNNConfig", "MLPConfig", "ModelConfig", "build_model"]
