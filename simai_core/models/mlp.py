"""The MLP surrogate (imports torch)."""

from __future__ import annotations

from torch import Tensor, nn

from simai_core.models.config import MLPConfig


class MLP(nn.Module):
    """Point-wise MLP mapping the fields at step t to the fields at step t+1.

    ``forward(x, edge_index, pos)``: ``x`` is ``(n, n_in)`` float32; ``edge_index``
    ``(2, E)`` int64 and ``pos`` ``(n, d)`` are accepted and ignored, so that the MLP and
    the GNN share one TorchScript signature; returns ``(n, n_out)``.
    """

    def __init__(self, config: MLPConfig, n_in: int, n_out: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_in
        for _ in range(config.layers):
            layers += [nn.Linear(width, config.neurons), nn.LeakyReLU(config.negative_slope)]
            width = config.neurons
        layers.append(nn.Linear(width, n_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, edge_index: Tensor, pos: Tensor) -> Tensor:
        """Predict ``(n, n_out)`` from ``x`` ``(n, n_in)``; the graph arguments are unused."""
        return self.net(x)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
