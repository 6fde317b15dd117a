"""What the simulation loop needs from whatever produces its fields (mock or real solver)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class FieldSource(ABC):
    """One simulation rank's field producer.

    The loop calls :meth:`advance` once per step; at a sync step (``capture=True``) the
    producer must leave that step's training sample in :attr:`sample`: ``(n_points,
    n_in + n_out)``, the model inputs then the targets. Inference compares the surrogate's
    prediction with the targets on the rows of :attr:`interior` and persistence (the
    targets predicted as the input columns :attr:`persistence_columns`, "no change").
    """

    #: ``(n_points, n_in + n_out)``, the sample of the last captured step.
    sample: np.ndarray
    #: ``(n_points, dim)`` float64 node positions (the GNN's graph), in grid spacings.
    coords: np.ndarray
    #: Input columns persistence predicts the targets with (one per target column).
    persistence_columns: tuple[int, ...]
    #: Boolean ``(n_points,)``: rows inference is judged on (the model sees their neighbourhood).
    interior: np.ndarray

    @property
    @abstractmethod
    def n_in(self) -> int:
        """Model inputs per point."""

    @property
    @abstractmethod
    def n_out(self) -> int:
        """Model targets per point."""

    @property
    def n_points(self) -> int:
        """Points (graph nodes) on this rank."""
        return int(self.sample.shape[0])

    @property
    def dim(self) -> int:
        """Spatial dimensions."""
        return int(self.coords.shape[1])

    @abstractmethod
    def advance(self, step: int, capture: bool) -> None:
        """Run loop step ``step``; when ``capture``, leave its training sample in :attr:`sample`."""

    def check(self, comm: Any) -> None:  # noqa: B027  (an optional hook: the mock cannot diverge)
        """Collective over ``comm`` at every sync step: raise on every rank if the fields went wrong."""

    def detail(self) -> dict[str, Any]:
        """Facts for the JSON (subdomain, solver settings)."""
        return {}

    def foms(self) -> dict[str, float]:
        """This rank's producer FOMs (solver throughput, compile time); none for the mock."""
        return {}
