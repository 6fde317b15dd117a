"""Choosing the next simulations: a Gaussian-process surrogate with expected improvement, or random sampling.

The surrogate models ``log10(misfit)`` over the normalised parameters (a Matern-5/2 kernel
with one length scale per parameter plus a noise term, scikit-learn's
``GaussianProcessRegressor``). Candidates are random points of the unit cube and Gaussian
perturbations of the best points so far; each pick is the candidate of highest expected
improvement that is at least ``exclusion`` away from every pending (running or just chosen)
point, so a batch never asks for the same simulation twice.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, Protocol

import numpy as np

from simai_core.steering.solver import DIM

Policy = Literal["ai", "random"]
_FLOOR = 1e-14  # misfits below this are one value for the surrogate (log10 of 0 is -inf)


class Chooser(Protocol):
    """Something that proposes the next parameters from the results so far."""

    def fit(self, x: np.ndarray, misfit: np.ndarray) -> None:
        """Update the model with every result so far (``x``: (m, DIM), ``misfit``: (m,))."""

    def choose(self, count: int, pending: np.ndarray) -> np.ndarray:
        """``count`` new points (``(count, DIM)``), away from ``pending`` ones."""


class RandomChooser:
    """Uniform random points of the unit cube: the baseline, with no model."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng([seed, 1])

    def fit(self, x: np.ndarray, misfit: np.ndarray) -> None:
        """Nothing to learn."""

    def choose(self, count: int, pending: np.ndarray) -> np.ndarray:
        """Uniform points."""
        return self.rng.uniform(0.0, 1.0, (count, DIM))


class GPChooser:
    """Gaussian-process surrogate of log10 misfit, expected improvement over candidates."""

    def __init__(self, seed: int, candidates: int = 2048, exclusion: float = 0.02, restarts: int = 1) -> None:
        self.rng = np.random.default_rng([seed, 2])
        self.candidates, self.exclusion, self.restarts = candidates, exclusion, restarts
        self.x = np.empty((0, DIM))
        self.y = np.empty(0)
        self.model: Any = None

    def fit(self, x: np.ndarray, misfit: np.ndarray) -> None:
        """Refit the GP on every result (hyper-parameters re-optimised from the last fit's)."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        self.x, self.y = np.asarray(x, dtype=np.float64), np.log10(np.maximum(misfit, _FLOOR))
        if self.model is None:
            kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * Matern([0.2] * DIM, (1e-3, 10.0), nu=2.5)
                      + WhiteKernel(1e-4, (1e-8, 1e-1)))
            restarts = self.restarts
        else:  # warm start: the optimiser begins at the last fit's hyper-parameters
            kernel, restarts = self.model.kernel_, 0
        gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=restarts,
                                      random_state=int(self.rng.integers(2**31)))
        with warnings.catch_warnings():  # hyper-parameters at a bound are expected early on, not an error
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(self.x, self.y)
        self.model = gp

    def choose(self, count: int, pending: np.ndarray) -> np.ndarray:
        """Greedy expected improvement with an exclusion radius around pending and chosen points."""
        if self.model is None:
            return self.rng.uniform(0.0, 1.0, (count, DIM))
        cand = self._candidates()
        ei = self._expected_improvement(cand)
        taken = [p for p in np.asarray(pending).reshape(-1, DIM)]
        chosen: list[np.ndarray] = []
        for _ in range(count):
            if taken:
                near = np.min(np.max(np.abs(cand[:, None, :] - np.asarray(taken)[None]), axis=2), axis=1)
                ei = np.where(near < self.exclusion, -np.inf, ei)
            best = int(np.argmax(ei))
            chosen.append(cand[best])
            taken.append(cand[best])
        return np.asarray(chosen)

    def _candidates(self) -> np.ndarray:
        uniform = self.rng.uniform(0.0, 1.0, (self.candidates, DIM))
        order = np.argsort(self.y)[:3]
        local = [self.x[i] + self.rng.normal(0.0, scale, (self.candidates // 8, DIM))
                 for i in order for scale in (0.1, 0.03, 0.01)]
        return np.clip(np.vstack([uniform, *local]), 0.0, 1.0)

    def _expected_improvement(self, cand: np.ndarray) -> np.ndarray:
        from scipy.stats import norm

        mean, std = self.model.predict(cand, return_std=True)
        std = np.maximum(std, 1e-9)
        gain = self.y.min() - mean
        z = gain / std
        return gain * norm.cdf(z) + std * norm.pdf(z)  # type: ignore[no-any-return]


def make_chooser(policy: Policy, seed: int) -> Chooser:
    """The chooser of ``policy``."""
    return GPChooser(seed) if policy == "ai" else RandomChooser(seed)


def initial_design(count: int, seed: int) -> np.ndarray:
    """The first ``count`` points, the same for every policy: a scrambled Latin hypercube."""
    from scipy.stats import qmc

    return qmc.LatinHypercube(d=DIM, seed=np.random.default_rng([seed, 3])).random(count)
