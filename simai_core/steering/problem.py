"""The inverse problem the ensemble is steered on: find the hidden parameters behind some observations.

A seed picks hidden normalised parameters; the observations are the solver's sensor readings
for them, on the same grid, so the misfit of the hidden parameters is exactly zero and the
optimum is known. The target is reached when the best parameters found (lowest misfit) are
within ``tolerance`` of the hidden ones in every normalised coordinate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simai_core.steering.solver import DIM, solve


@dataclass(frozen=True)
class InverseProblem:
    """Hidden parameters, their observations and the target tolerance."""

    hidden: np.ndarray
    observations: np.ndarray
    tolerance: float
    n: int

    def misfit(self, qoi: np.ndarray) -> float:
        """Relative squared misfit of sensor readings ``qoi`` against the observations (0 at the optimum)."""
        diff = np.asarray(qoi, dtype=np.float64) - self.observations
        return float(np.dot(diff, diff) / np.dot(self.observations, self.observations))

    def error(self, theta: np.ndarray) -> float:
        """Largest distance of ``theta`` from the hidden parameters over the normalised coordinates."""
        return float(np.max(np.abs(np.asarray(theta, dtype=np.float64) - self.hidden)))

    def reached(self, theta: np.ndarray) -> bool:
        """Whether ``theta`` is within the tolerance of the hidden parameters."""
        return self.error(theta) <= self.tolerance


def make_problem(seed: int, n: int, tolerance: float) -> InverseProblem:
    """Hidden parameters drawn from ``seed`` (kept 0.1 away from the box's faces), observed on an ``n x n`` grid."""
    from mpi4py import MPI

    hidden = np.random.default_rng([seed, 0x5EED]).uniform(0.1, 0.9, DIM)
    observations = solve(hidden, n, MPI.COMM_SELF).qoi
    return InverseProblem(hidden=hidden, observations=observations, tolerance=tolerance, n=n)
