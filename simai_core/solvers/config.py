"""Settings and sizes of the Devito acoustic solver (no Devito import here).

Sizes fix the points per simulation rank (weak scaling, as the mini benchmark's): the
global grid is the rank tile times Devito's process topology, so every rank holds
exactly ``tile`` points. The outermost ``absorbing_points`` of the global grid are the
damping layer.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field


class AcousticSize(BaseModel):
    """Per-rank tile of one size."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(description="Size name")
    tile: tuple[int, ...] = Field(description="Grid points per axis on every simulation rank")

    @property
    def dim(self) -> int:
        """Spatial dimensions."""
        return len(self.tile)

    @property
    def n_points(self) -> int:
        """Grid points per rank."""
        return math.prod(self.tile)


ACOUSTIC_SIZES: dict[str, AcousticSize] = {
    "debug": AcousticSize(name="debug", tile=(48, 48)),
    "small": AcousticSize(name="small", tile=(96, 96)),
    "medium": AcousticSize(name="medium", tile=(384, 384)),
    "large": AcousticSize(name="large", tile=(96, 96, 96)),
}


def acoustic_size(name: str) -> AcousticSize:
    """The :class:`AcousticSize` of a size name (ValueError naming the sizes otherwise)."""
    if name not in ACOUSTIC_SIZES:
        raise ValueError(f"the acoustic solver has no size {name!r}; sizes: {', '.join(ACOUSTIC_SIZES)}")
    return ACOUSTIC_SIZES[name]


class AcousticConfig(BaseModel):
    """The acoustic wave equation ``m u_tt - laplace(u) + damp u_t = sources`` on a layered model."""

    model_config = ConfigDict(extra="forbid")
    spacing_m: float = Field(10.0, gt=0, description="Grid spacing (m), equal on every axis")
    space_order: int = Field(4, ge=2, multiple_of=2, description="Spatial order of the finite differences")
    velocities_kmps: tuple[float, ...] = Field(
        (1.5, 2.0, 2.5, 3.0), min_length=1,
        description="Layer velocities (km/s), top to bottom along the last axis, equal thickness")
    absorbing_points: int = Field(12, ge=0, description="Width (points) of the damping layer at the global boundary")
    horizon_steps: int = Field(
        4, ge=1, description="K: time steps per loop step; the sample's target is u at n + K, its inputs u at n and n-1")
    dt_ms: float | None = Field(
        None, gt=0, description="Time step (ms); None: courant times the CFL limit. A dt above the limit is refused")
    courant: float = Field(0.5, gt=0, le=1, description="Share of the CFL limit used when dt_ms is None")
    peak_frequency_hz: float = Field(15.0, gt=0, description="Ricker wavelet peak frequency")
    fire_interval_ms: float = Field(
        240.0, gt=0, description="Each source fires a Ricker wavelet this often; sources take turns")
    sources_per_tile: float = Field(
        1.0, gt=0, description="Sources per rank tile's worth of global points (at least 1 source)")
    amplitude: float = Field(0.2, gt=0, description="Source amplitude (scales u to order 1)")
    seed: int = Field(7, description="Seed of the source positions")
    interior_margin: int = Field(
        4, ge=0, description="Inference ignores points this close to a face shared with another rank "
                             "(the model cannot see across it)")
