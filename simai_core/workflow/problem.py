"""The analytic travelling circular wave that the mock simulation produces.

On the global domain ``[-2 pi, 2 pi]^d`` with ``r = |x|`` and ``omega = 2 pi / period``
(period in steps), the fields at step ``t`` are

* ``u = sin(2 r - omega t) / (r + 1)``
* ``v = cos(2 r - omega t) / (r + 1)``        (medium, large, very_large)
* ``w = sin^2(2 r - omega t) / (r + 1)``      (large, very_large)

A snapshot holds the fields at ``t`` (model inputs) followed by the same fields at
``t + 1`` (targets). The unit box is split over the simulation communicator with
:class:`mpipartition.Partition`; each rank holds ``points_per_axis ** dim`` points
(weak scaling). Unlike the reference (inclusive ``linspace``, so shared faces are
duplicated on both ranks) the points are cell centres: the ranks' points tile one
uniform global grid without duplicates. ``debug`` is a 1-D instance of the same wave
(the reference used an unrelated static 1-D function for it, which has no time step to
learn and no "no change" baseline): :data:`DEBUG_DIFFERENCE` says so in the JSON.

Well-posed inputs. With ``u`` alone at one point (the reference's ``debug`` and
``small``) the next value is not determined: the same ``u`` occurs on the rising and
the falling side of the wave. With its quadrature partner ``v`` the step is a rotation,
``u' = u cos w - v sin w`` and ``v' = u sin w + v cos w`` (``w = omega``), which any
model can learn point by point. ``inputs="well_posed"`` (the default) adds ``v`` to
the sizes that lack it; ``inputs="reference"`` keeps the reference's fields.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from simai_core.solvers.base import FieldSource
from simai_core.workflow.config import ProblemConfig, ProblemInputs, ProblemSize, SimulationConfig

DEBUG_DIFFERENCE = ("debug is a 1-D travelling wave (512 points per rank, period 60), not the reference's static "
                    "random-point function y = sin(x) + 0.1 sin(4 pi x)")

if TYPE_CHECKING:
    from mpi4py import MPI


class ProblemSpec(BaseModel):
    """Per-rank size and physics of one reference problem size."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(description="Size name")
    dim: int = Field(description="Spatial dimensions (and mpipartition dimensions)")
    points_per_axis: int = Field(description="Grid points per axis on every rank")
    fields: tuple[str, ...] = Field(description="Field names, in column order")
    period: int = Field(description="Wave period in time steps")

    @property
    def n_points(self) -> int:
        """Points (samples) per rank."""
        return self.points_per_axis**self.dim

    @property
    def n_fields(self) -> int:
        """Fields per point of the reference (model inputs = model outputs)."""
        return len(self.fields)

    def input_fields(self, inputs: ProblemInputs) -> tuple[str, ...]:
        """The fields sent and learnt: the reference's, plus ``v`` after ``u`` when ``well_posed`` needs it."""
        if inputs == "reference" or "v" in self.fields:
            return self.fields
        return ("u", "v", *self.fields[1:])

    def differences(self, inputs: ProblemInputs) -> list[str]:
        """How this problem differs from the reference's problem of the same name (for the JSON)."""
        out = [DEBUG_DIFFERENCE] if self.name == "debug" else []
        if self.input_fields(inputs) != self.fields:
            out.append(f"fields {list(self.input_fields(inputs))} instead of the reference's {list(self.fields)}: "
                       "u alone does not determine u one step later")
        return out


SIZES: dict[str, ProblemSpec] = {
    "debug": ProblemSpec(name="debug", dim=1, points_per_axis=512, fields=("u",), period=60),
    "small": ProblemSpec(name="small", dim=2, points_per_axis=32, fields=("u",), period=60),
    "medium": ProblemSpec(name="medium", dim=2, points_per_axis=256, fields=("u", "v"), period=100),
    "large": ProblemSpec(name="large", dim=3, points_per_axis=100, fields=("u", "v", "w"), period=200),
    "very_large": ProblemSpec(name="very_large", dim=3, points_per_axis=128, fields=("u", "v", "w"), period=200),
}


def problem_spec(size: ProblemSize) -> ProblemSpec:
    """The :class:`ProblemSpec` of a size name."""
    return SIZES[size]


@dataclass(frozen=True)
class Subdomain:
    """One rank's share of the unit box (as mpipartition assigns it)."""

    rank: int
    nranks: int
    decomposition: tuple[int, ...]
    coordinates: tuple[int, ...]
    origin: tuple[float, ...]
    extent: tuple[float, ...]


def partition_domain(dim: int, comm: MPI.Comm) -> Subdomain:
    """Split the unit box over ``comm`` with mpipartition (collective over ``comm``)."""
    from mpipartition import Partition

    part = Partition(dim, comm=comm)
    sub = Subdomain(
        rank=part.rank,
        nranks=part.nranks,
        decomposition=tuple(part.decomposition),
        coordinates=tuple(part.coordinates),
        origin=tuple(float(o) for o in part.origin),
        extent=tuple(float(e) for e in part.extent),
    )
    # Free the Cartesian communicator now, while MPI is certainly still initialised.
    del part
    return sub


def grid_coordinates(spec: ProblemSpec, sub: Subdomain) -> np.ndarray:
    """Physical coordinates ``(n_points, dim)`` float64 of this rank's cell centres."""
    n = spec.points_per_axis
    axes = [o + (np.arange(n) + 0.5) * (e / n) for o, e in zip(sub.origin, sub.extent, strict=True)]
    mesh = np.meshgrid(*axes, indexing="ij")
    unit = np.stack([m.ravel() for m in mesh], axis=1)
    return 4.0 * np.pi * unit - 2.0 * np.pi


def wave_fields(spec: ProblemSpec, coords: np.ndarray, step: float, fields: tuple[str, ...] | None = None) -> np.ndarray:
    """Fields ``(n_points, len(fields))`` float64 at time ``step`` (default: the reference's fields)."""
    r = np.sqrt(np.sum(coords * coords, axis=1))
    phase = 2.0 * r - (2.0 * np.pi / spec.period) * step
    amp = 1.0 / (r + 1.0)
    table = {"u": np.sin(phase) * amp, "v": np.cos(phase) * amp, "w": np.sin(phase) ** 2 * amp}
    return np.stack([table[f] for f in (fields or spec.fields)], axis=1)


class WaveProblem:
    """One rank's view of the problem: its subdomain, coordinates and snapshots."""

    def __init__(self, config: ProblemConfig, comm: MPI.Comm) -> None:
        self.spec = problem_spec(config.size)
        self.fields = self.spec.input_fields(config.inputs)
        self.dtype = np.dtype(config.dtype)
        self.subdomain = partition_domain(self.spec.dim, comm)
        self.coords = grid_coordinates(self.spec, self.subdomain)

    @property
    def n_in(self) -> int:
        """Model inputs per point."""
        return len(self.fields)

    def snapshot(self, step: int, out: np.ndarray | None = None) -> np.ndarray:
        """``(n_points, 2 * n_fields)``: fields at ``step`` then at ``step + 1`` (in ``out`` when given)."""
        k = self.n_in
        if out is None:
            out = np.empty((self.spec.n_points, 2 * k), dtype=self.dtype)
        out[:, :k] = wave_fields(self.spec, self.coords, step, self.fields)
        out[:, k:] = wave_fields(self.spec, self.coords, step + 1, self.fields)
        return out


class StepKernel:
    """Emulated PDE work for one step: sleep, or Jacobi sweeps on a private grid until the time is up."""

    def __init__(self, config: SimulationConfig) -> None:
        self.mode, self.seconds = config.step_cost, config.step_time_s
        self.grid = np.random.default_rng(0).random((256, 256)) if self.mode == "kernel" else None
        self.sweeps = 0

    def run(self) -> None:
        """Spend ``step_time_s`` of wall time."""
        if self.mode == "sleep" or self.grid is None:
            time.sleep(self.seconds)
            return
        g = self.grid
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            g[1:-1, 1:-1] = 0.25 * (g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:])
            self.sweeps += 1


class MockFields(FieldSource):
    """The mock as a field producer: emulated step work, then the analytic snapshot (every step, as the reference).

    The sample is the fields at the step then at the next step; persistence predicts the
    next fields as the current ones, and inference is judged on every point (the analytic
    wave needs no neighbourhood).
    """

    def __init__(self, problem: ProblemConfig, simulation: SimulationConfig, comm: MPI.Comm) -> None:
        self.problem = WaveProblem(problem, comm)
        self.kernel = StepKernel(simulation)
        self.sample = self.problem.snapshot(0)
        self.coords = self.problem.coords
        self.persistence_columns = tuple(range(self.problem.n_in))
        self.interior = np.ones(self.problem.spec.n_points, dtype=bool)

    @property
    def n_in(self) -> int:
        return self.problem.n_in

    @property
    def n_out(self) -> int:
        return self.problem.n_in

    @property
    def dim(self) -> int:
        return self.problem.spec.dim

    def advance(self, step: int, capture: bool) -> None:
        self.kernel.run()
        self.problem.snapshot(step, out=self.sample)

    def detail(self) -> dict[str, Any]:
        sub = self.problem.subdomain
        return {"subdomain": {"origin": sub.origin, "extent": sub.extent}}
