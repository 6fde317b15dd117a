"""The travelling-wave problem: sizes, formula, snapshots and the domain partition."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from mpi4py import MPI

from simai_core.workflow.config import ProblemConfig
from simai_core.workflow.problem import SIZES, Subdomain, WaveProblem, grid_coordinates, partition_domain, wave_fields


def test_sizes_match_the_reference():
    expected = {  # name: (dim, points per axis, fields, period, samples per rank)
        "small": (2, 32, 1, 60, 1024),
        "medium": (2, 256, 2, 100, 65536),
        "large": (3, 100, 3, 200, 1_000_000),
        "very_large": (3, 128, 3, 200, 2_097_152),
    }
    for name, (dim, n, fields, period, samples) in expected.items():
        spec = SIZES[name]
        assert (spec.dim, spec.points_per_axis, spec.n_fields, spec.period, spec.n_points) == (
            dim, n, fields, period, samples)
    # Snapshot bytes per rank as in the reference table (float64, inputs + targets).
    assert SIZES["small"].n_points * 2 * 8 == 16 * 1024
    assert SIZES["large"].n_points * 6 * 8 == 48_000_000


@pytest.mark.parametrize("size", ["debug", "small", "medium", "large"])
def test_fields_match_the_formula(size):
    spec = SIZES[size]
    rng = np.random.default_rng(1)
    coords = rng.uniform(-2 * np.pi, 2 * np.pi, (200, spec.dim))
    for step in (0, 7, 61):
        r = np.linalg.norm(coords, axis=1)
        phase = 2 * r - 2 * np.pi / spec.period * step
        formula = {"u": np.sin(phase) / (r + 1), "v": np.cos(phase) / (r + 1), "w": np.sin(phase) ** 2 / (r + 1)}
        got = wave_fields(spec, coords, step)
        assert got.shape == (200, spec.n_fields)
        for i, name in enumerate(spec.fields):
            np.testing.assert_allclose(got[:, i], formula[name], rtol=0, atol=1e-14)


def test_snapshot_holds_step_t_then_t_plus_1():
    problem = WaveProblem(ProblemConfig(size="medium"), MPI.COMM_SELF)
    snap = problem.snapshot(12)
    assert snap.shape == (256 * 256, 4) and snap.dtype == np.float64
    np.testing.assert_array_equal(snap[:, :2], wave_fields(problem.spec, problem.coords, 12))
    np.testing.assert_array_equal(snap[:, 2:], wave_fields(problem.spec, problem.coords, 13))
    out = np.zeros_like(snap)
    assert problem.snapshot(12, out=out) is out and np.array_equal(out, snap)


def test_float32_snapshots():
    problem = WaveProblem(ProblemConfig(size="small", dtype="float32"), MPI.COMM_SELF)
    assert problem.snapshot(0).dtype == np.float32


def test_one_rank_covers_the_whole_domain():
    sub = partition_domain(2, MPI.COMM_SELF)
    assert sub.decomposition == (1, 1) and sub.origin == (0.0, 0.0) and sub.extent == (1.0, 1.0)
    coords = grid_coordinates(SIZES["small"], sub)
    assert coords.shape == (1024, 2)
    assert coords.min() > -2 * np.pi and coords.max() < 2 * np.pi
    np.testing.assert_allclose(coords.min(axis=0), -2 * np.pi + 4 * np.pi / 64)


@pytest.mark.parametrize("decomposition", [(2, 2), (4, 1), (2, 3)])
def test_subdomains_tile_one_global_grid_without_duplicates(decomposition):
    spec = SIZES["small"]
    n = spec.points_per_axis
    parts = []
    for rank, coords in enumerate(itertools.product(*(range(d) for d in decomposition))):
        extent = tuple(1.0 / d for d in decomposition)
        sub = Subdomain(rank=rank, nranks=int(np.prod(decomposition)), decomposition=decomposition,
                        coordinates=coords, origin=tuple(c * e for c, e in zip(coords, extent, strict=True)),
                        extent=extent)
        parts.append(grid_coordinates(spec, sub))
    points = np.concatenate(parts)
    # The union is exactly the cell-centred grid of the whole box: every cell once.
    axes = [(np.arange(n * d) + 0.5) / (n * d) * 4 * np.pi - 2 * np.pi for d in decomposition]
    expected = np.stack([m.ravel() for m in np.meshgrid(*axes, indexing="ij")], axis=1)
    assert len(np.unique(points.round(9), axis=0)) == len(points) == len(expected)
    np.testing.assert_allclose(np.sort(points.view("f8,f8"), axis=0).view("f8").reshape(-1, 2),
                               np.sort(expected.view("f8,f8"), axis=0).view("f8").reshape(-1, 2), atol=1e-12)


@pytest.mark.parametrize("size", ["debug", "small"])
def test_well_posed_inputs_determine_the_next_step(size):
    """With u alone the next u is not a function of the input; with (u, v) it is a fixed rotation."""
    spec = SIZES[size]
    coords = np.random.default_rng(2).uniform(-2 * np.pi, 2 * np.pi, (2000, spec.dim))
    assert spec.input_fields("reference") == ("u",) and spec.input_fields("well_posed") == ("u", "v")
    now, nxt = (wave_fields(spec, coords, t, ("u", "v")) for t in (3, 4))
    # The same u (to 3 digits) is followed by different next values: no model can learn that map.
    _, first, inverse = np.unique(now[:, 0].round(3), return_index=True, return_inverse=True)
    spread = np.abs(nxt[:, 0] - nxt[first[inverse], 0]).max()
    assert spread > 2 * np.abs(nxt[:, 0] - now[:, 0]).mean()  # deterministic: spread ~ rounding, 5e-4
    w = 2 * np.pi / spec.period
    rotation = np.array([[np.cos(w), np.sin(w)], [-np.sin(w), np.cos(w)]])
    np.testing.assert_allclose(now @ rotation, nxt, atol=1e-12)


def test_differences_from_the_reference_are_named():
    assert any("static" in d for d in SIZES["debug"].differences("reference"))
    assert any("'v'" in d for d in SIZES["small"].differences("well_posed"))
    assert SIZES["small"].differences("reference") == [] == SIZES["medium"].differences("well_posed")
    problem = WaveProblem(ProblemConfig(size="small"), MPI.COMM_SELF)
    assert problem.n_in == 2 and problem.snapshot(0).shape == (1024, 4)
