"""The Devito acoustic-wave solver as a workflow field producer (imports Devito and mpi4py).

Physics: ``m u_tt - laplace(u) + damp u_t = s`` with ``m = 1 / v^2`` (v in km/s, space in
m, time in ms), a layered velocity model, a damping layer along the global boundary
(the absorbing boundary of Devito's seismic examples) and Ricker wavelets fired by
``n_sources`` point sources that take turns, so the field keeps changing for the whole
run. The time step must satisfy the scheme's CFL limit, computed here from the
finite-difference weights; a larger one is refused with the reason.

Decomposition: Devito's own MPI (``mpi='basic'``) over the communicator it is given (the
simulation ranks only). The process topology is fixed here (``MPI.Compute_dims``) and the
global grid is the rank tile times that topology (weak scaling); a test or caller can also
give the global shape, which makes the result independent of the number of ranks.

Compilation: the operator is built and JIT-compiled by :meth:`AcousticSolver.compile`,
which the simulation calls before its timed loop; Devito's compile cache is moved from the
shared temp dir (``/tmp/devito-jitcache-uid<N>``, which another user could create first) to a
private 0700 directory of this user.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import getpass
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from simai_core.private import check_private_dir, private_dir
from simai_core.solvers.base import FieldSource
from simai_core.solvers.config import AcousticConfig, acoustic_size

#: Sample columns: inputs u(n), u(n-1), v, then the target u(n+K).
SAMPLE_FIELDS = ("u", "u_prev", "velocity", "u_next")


class UnstableTimeStepError(ValueError):
    """A time step above the CFL limit of the model: the scheme would blow up."""


class SolverDivergedError(RuntimeError):
    """The field became non-finite or grew without bound during the run."""


def cfl_limit_ms(vmax_kmps: float, spacing_m: float, space_order: int, dim: int) -> float:
    """Largest stable dt (ms) of the leapfrog scheme with ``space_order`` central second derivatives.

    The scheme is stable when ``dt * v * sqrt(lambda_max) <= 2``, with ``lambda_max`` the largest
    eigenvalue of the discrete negative Laplacian: ``dim * S / h^2``, ``S`` the absolute value of
    the stencil's symbol at the Nyquist wavenumber (4 for order 2, 16/3 for order 4). Damping
    only adds stability.
    """
    from sympy import Rational, finite_diff_weights

    half = space_order // 2
    offsets = [Rational(k) for k in range(-half, half + 1)]
    weights = finite_diff_weights(2, offsets, 0)[2][-1]
    symbol = abs(sum(float(w) * (-1) ** k for k, w in zip(range(-half, half + 1), weights, strict=True)))
    return 2.0 * spacing_m / (vmax_kmps * math.sqrt(dim * symbol))


def ricker(t_ms: np.ndarray, peak_hz: float) -> np.ndarray:
    """Ricker wavelet centred at ``1 / peak`` (so it starts near zero at t = 0)."""
    a = (np.pi * peak_hz * 1e-3 * (t_ms - 1e3 / peak_hz)) ** 2
    return (1.0 - 2.0 * a) * np.exp(-a)


def compile_cache_dir() -> Path:
    """This user's private Devito compile cache (0700, checked on every use)."""
    return private_dir(Path(tempfile.gettempdir()) / f"simai-devito-{getpass.getuser()}")


@contextmanager
def private_tempdir(path: Path) -> Iterator[None]:
    """Make ``path`` the temp dir while Devito compiles: its cache is ``<tempdir>/devito-jitcache-uid<N>``.

    Devito names its cache directory after the shared temp dir, where another user could create it
    first; this puts it inside our private directory. The cache subdirectory itself is checked too.
    """
    saved = tempfile.tempdir
    tempfile.tempdir = str(path)
    try:
        yield
    finally:
        tempfile.tempdir = saved
    for sub in path.iterdir():
        check_private_dir(sub)


class FloatEnvironment:
    """Saves this thread's floating-point environment and puts it back (C ``fegetenv`` / ``fesetenv``).

    Devito's CPU kernels switch the thread to flush-to-zero and denormals-are-zero on entry and
    never switch back, which would change every later float operation of the process (the
    simulation's inference, numpy, whose ``finfo`` then warns). The kernel keeps its mode while
    it runs; the caller gets its own back.
    """

    def __init__(self) -> None:
        name = ctypes.util.find_library("m")
        self._libm = ctypes.CDLL(name) if name else None
        self._saved = ctypes.create_string_buffer(256)  # larger than any platform's fenv_t

    def __enter__(self) -> FloatEnvironment:
        if self._libm is not None:
            self._libm.fegetenv(self._saved)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._libm is not None:
            self._libm.fesetenv(self._saved)


def mpicc() -> str:
    """The MPI C compiler wrapper: ``$MPICC``, else the one beside this Python (the mpich wheel's), else ``mpicc``."""
    if os.environ.get("MPICC"):
        return os.environ["MPICC"]
    beside = Path(sys.executable).with_name("mpicc")
    return str(beside) if beside.is_file() else "mpicc"


def process_topology(nranks: int, dim: int) -> tuple[int, ...]:
    """The process grid Devito is given (MPI's balanced factorisation)."""
    from mpi4py import MPI

    return tuple(MPI.Compute_dims(nranks, dim))


class AcousticSolver(FieldSource):
    """One simulation rank's tile of the acoustic solver; :meth:`compile` before :meth:`advance`."""

    def __init__(self, cfg: AcousticConfig, comm: Any, shape: tuple[int, ...], loop_steps: int,
                 n_sources: int, dtype: str = "float64") -> None:
        self.cfg, self.comm, self.shape = cfg, comm, tuple(shape)
        self.topology = process_topology(comm.Get_size(), len(shape))
        if any(n % p for n, p in zip(self.shape, self.topology, strict=True)):
            raise ValueError(f"global shape {self.shape} does not split evenly over the process grid {self.topology}")
        vmax = max(cfg.velocities_kmps)
        self.cfl_limit_ms = cfl_limit_ms(vmax, cfg.spacing_m, cfg.space_order, len(shape))
        self.dt_ms = cfg.dt_ms if cfg.dt_ms is not None else cfg.courant * self.cfl_limit_ms
        if self.dt_ms > self.cfl_limit_ms:
            raise UnstableTimeStepError(
                f"dt = {self.dt_ms:g} ms exceeds the CFL limit {self.cfl_limit_ms:.4g} ms of this model (v max "
                f"{vmax:g} km/s, spacing {cfg.spacing_m:g} m, space order {cfg.space_order}, {len(shape)}-D): "
                "the scheme would blow up; lower dt_ms or leave it unset")
        self.nt = loop_steps * cfg.horizon_steps + 1
        self.n_sources = n_sources
        self.dtype = np.dtype(dtype)
        self.compile_s: float | None = None
        #: "warm" when the operator's shared object was already in the private cache on every rank, else "cold".
        self.compile_cache: str | None = None
        self.compile_cache_dir: str | None = None
        self.solver_s = 0.0
        self.updates = 0
        self._checked_n = 0
        self._build()

    @classmethod
    def for_size(cls, cfg: AcousticConfig, size: str, comm: Any, loop_steps: int,
                 dtype: str = "float64") -> AcousticSolver:
        """Weak scaling: every rank of ``comm`` holds the size's tile; one source per tile's worth of points."""
        tile = acoustic_size(size).tile
        topology = process_topology(comm.Get_size(), len(tile))
        shape = tuple(t * p for t, p in zip(tile, topology, strict=True))
        n_sources = max(1, round(cfg.sources_per_tile * comm.Get_size()))
        return cls(cfg, comm, shape, loop_steps, n_sources, dtype)

    # --- construction -------------------------------------------------------------------------
    def _build(self) -> None:
        from devito import Function, Grid, SparseTimeFunction, TimeFunction, configuration

        configuration["mpi"] = "basic"
        # No -ffast-math: linking it loads crtfastmath, which sets flush-to-zero for the whole process
        # (the trainer's and numpy's floats too; numpy warns about it).
        configuration["safe-math"] = 1
        configuration["log-level"] = "WARNING"
        h = self.cfg.spacing_m
        extent = tuple(h * (n - 1) for n in self.shape)
        self.grid = Grid(shape=self.shape, extent=extent, comm=self.comm, topology=self.topology, dtype=np.float32)
        self.numb = [np.asarray(a) for a in self.grid.distributor.glb_numb]
        so = self.cfg.space_order
        self.u = TimeFunction(name="u", grid=self.grid, time_order=2, space_order=so)
        self.m = Function(name="m", grid=self.grid, space_order=so)
        self.damp = Function(name="damp", grid=self.grid)
        velocity = self._local_velocity()
        self.m.data._local[:] = 1.0 / velocity**2
        self.damp.data._local[:] = self._local_damping()
        self.src = SparseTimeFunction(name="src", grid=self.grid, npoint=self.n_sources, nt=self.nt)
        self.src.coordinates.data[:] = self._source_positions()
        self.src.data[:] = self._source_signals()
        tile = velocity.shape
        n = math.prod(tile)
        self.coords = np.stack([m.ravel() for m in np.meshgrid(*self.numb, indexing="ij")], axis=1).astype(np.float64)
        self.sample = np.zeros((n, len(SAMPLE_FIELDS)), dtype=self.dtype)
        self.sample[:, 2] = velocity.ravel()
        self.persistence_columns = (0,)
        self.interior = self._interior_mask(tile)
        self._op: Any = None
        self._fenv = FloatEnvironment()

    def _local_velocity(self) -> np.ndarray:
        """Layers of equal thickness along the last axis, broadcast over this rank's tile."""
        layers = np.asarray(self.cfg.velocities_kmps, dtype=np.float64)
        depth = self.numb[-1]
        v = layers[np.minimum(depth * len(layers) // self.shape[-1], len(layers) - 1)]
        tile = tuple(len(a) for a in self.numb)
        return np.broadcast_to(v, tile).astype(np.float32)

    def _local_damping(self) -> np.ndarray:
        """Damping grows as in Devito's seismic examples towards every global face, zero inside."""
        nbl = self.cfg.absorbing_points
        tile = tuple(len(a) for a in self.numb)
        total = np.zeros(tile, dtype=np.float64)
        if nbl == 0:
            return total.astype(np.float32)
        coeff = 1.5 * math.log(1.0 / 0.001) / nbl
        for axis, (idx, n) in enumerate(zip(self.numb, self.shape, strict=True)):
            depth = np.maximum(nbl - idx, 0) + np.maximum(idx - (n - 1 - nbl), 0)  # points into the layer
            pos = np.clip(depth / nbl, 0.0, 1.0)
            profile = coeff * (pos - np.sin(2 * np.pi * pos) / (2 * np.pi)) / self.cfg.spacing_m
            shape = [1] * len(tile)
            shape[axis] = len(idx)
            total = total + profile.reshape(shape)
        return total.astype(np.float32)

    def _source_positions(self) -> np.ndarray:
        """Random points (fixed by the seed and the global grid only) inside the damping layer's inner box."""
        rng = np.random.default_rng(self.cfg.seed)
        margin = self.cfg.absorbing_points + 2
        lo = np.array([min(margin, n // 2) for n in self.shape])
        hi = np.array([max(n - 1 - margin, n // 2) for n in self.shape])
        points = lo + rng.random((self.n_sources, len(self.shape))) * (hi - lo)
        return (np.round(points) * self.cfg.spacing_m).astype(np.float32)  # on grid points: exact injection

    def _source_signals(self) -> np.ndarray:
        """``(nt, n_sources)``: every source fires a Ricker every fire_interval_ms, the sources in turn."""
        t = np.arange(self.nt) * self.dt_ms
        every = self.cfg.fire_interval_ms
        signals = np.zeros((self.nt, self.n_sources), dtype=np.float64)
        for i in range(self.n_sources):
            for start in np.arange(i * every / self.n_sources, t[-1] + 1e-9, every):
                signals[:, i] += ricker(t - start, self.cfg.peak_frequency_hz)
        return (self.cfg.amplitude * signals).astype(np.float32)

    def _interior_mask(self, tile: tuple[int, ...]) -> np.ndarray:
        """Points at least interior_margin away from every face this tile shares with another rank."""
        margin = self.cfg.interior_margin
        keep = np.ones(tile, dtype=bool)
        for axis, (idx, n) in enumerate(zip(self.numb, self.shape, strict=True)):
            cut = [slice(None)] * len(tile)
            if idx[0] > 0:
                cut[axis] = slice(0, margin)
                keep[tuple(cut)] = False
            if idx[-1] < n - 1:
                cut[axis] = slice(len(idx) - margin, len(idx))
                keep[tuple(cut)] = False
        return keep.ravel()

    # --- compile and run ----------------------------------------------------------------------
    def compile(self) -> float:
        """Build and JIT-compile the operator (collective); returns the seconds it took.

        Sets :attr:`compile_cache`: ``"warm"`` when every rank found the operator's shared object in
        the private cache already (then only the operator's construction and loading are timed).
        """
        from devito import Eq, Operator, solve
        from mpi4py import MPI

        # Devito makes a new compiler object per operator, which reads $MPICC (the wrapper beside this
        # Python when unset: a venv's mpiexec does not put it on PATH).
        os.environ.setdefault("MPICC", mpicc())
        t0 = time.perf_counter()
        u, m, damp = self.u, self.m, self.damp
        pde = m * u.dt2 - u.laplace + damp * u.dt
        dt = self.grid.stepping_dim.spacing
        inject = self.src.inject(field=u.forward, expr=self.src * dt**2 / m)
        self._op = Operator([Eq(u.forward, solve(pde, u.forward)), inject], name="acoustic")
        with private_tempdir(compile_cache_dir()):
            shared_object = self._op._compiler.get_jit_dir() / f"{self._op._soname}.so"
            # Every rank looks before any compiles (the allreduce waits for all): warm only if all found it.
            found = self.comm.allreduce(int(shared_object.is_file()), op=MPI.MIN)
            self.compile_cache = "warm" if found else "cold"
            self.compile_cache_dir = str(shared_object.parent)
            self._op.cfunction  # noqa: B018  (JIT-compiles and loads the shared object)
        self._prepare_arguments()
        self.comm.Barrier()
        self.compile_s = time.perf_counter() - t0
        return self.compile_s

    def _prepare_arguments(self) -> None:
        """Derive the kernel's arguments once; only the time range changes from one chunk to the next.

        ``Operator.apply`` re-derives every argument on every call: about 10 ms here, more than a
        small tile's K steps take. The arguments point at the same arrays for the whole run.
        """
        k = self.cfg.horizon_steps
        args = self._op.arguments(time_m=0, time_M=k - 1, dt=np.float32(self.dt_ms))
        names = [p.name for p in self._op.parameters]
        self._args = [args[name] for name in names]
        self._time_m, self._time_M = names.index("time_m"), names.index("time_M")

    def _run(self, first: int, last: int) -> None:
        """Time steps ``first`` to ``last`` (computing u at first + 1 .. last + 1)."""
        self._args[self._time_m], self._args[self._time_M] = first, last
        with self._fenv:
            code = self._op.cfunction(*self._args)
        if code != 0:
            raise RuntimeError(f"the acoustic kernel returned error code {code} at time steps {first}..{last}")

    @property
    def n_in(self) -> int:
        return 3

    @property
    def n_out(self) -> int:
        return 1

    def local_u(self, time_index: int) -> np.ndarray:
        """This rank's tile of u at ``time_index`` (one of the two newest or the one before)."""
        return np.asarray(self.u.data._local[time_index % 3])

    def advance(self, step: int, capture: bool) -> None:
        """Run K time steps: from n = step * K to n + K; a capture keeps u(n), u(n-1) and u(n+K)."""
        if self._op is None:
            raise RuntimeError("compile() the solver before advancing it")
        k = self.cfg.horizon_steps
        n = step * k
        if n + k >= self.nt:
            raise ValueError(f"step {step} runs past the {self.nt - 1} time steps the sources were made for")
        if capture:
            self.sample[:, 0] = self.local_u(n).ravel()
            self.sample[:, 1] = self.local_u(n - 1).ravel()
        t0 = time.perf_counter()
        self._run(n, n + k - 1)
        self.solver_s += time.perf_counter() - t0
        self.updates += self.n_points * k
        if capture:
            self.sample[:, 3] = self.local_u(n + k).ravel()
            self._checked_n = n + k

    def check(self, comm: Any) -> None:
        """Raise on every rank when any rank's newest field is non-finite or beyond any physical amplitude."""
        from mpi4py import MPI

        field = self.sample[:, 3]
        bad = 0 if np.all(np.isfinite(field)) and float(np.abs(field).max(initial=0.0)) < 1e6 else 1
        if comm.allreduce(bad, op=MPI.MAX):
            raise SolverDivergedError(
                f"the acoustic field diverged (non-finite or above 1e6) by time step {self._checked_n}: dt = "
                f"{self.dt_ms:g} ms against a CFL limit of {self.cfl_limit_ms:.4g} ms")

    def gather_u(self, time_index: int) -> np.ndarray:
        """The global field u at ``time_index`` on every rank (collective; for tests and small grids)."""
        pieces = self.comm.allgather((tuple((int(a[0]), int(a[-1]) + 1) for a in self.numb), self.local_u(time_index)))
        out = np.empty(self.shape, dtype=np.float32)
        for bounds, tile in pieces:
            out[tuple(slice(a, b) for a, b in bounds)] = tile
        return out

    def detail(self) -> dict[str, Any]:
        return {"solver": "devito acoustic", "global_shape": list(self.shape), "topology": list(self.topology),
                "tile": [len(a) for a in self.numb], "dt_ms": self.dt_ms, "cfl_limit_ms": self.cfl_limit_ms,
                "sources": self.n_sources, "sample_fields": list(SAMPLE_FIELDS),
                "compile_cache": self.compile_cache, "compile_cache_dir": self.compile_cache_dir}

    def foms(self) -> dict[str, float]:
        out = {}
        if self.compile_s is not None:
            out["compile_time_s"] = self.compile_s
        if self.solver_s > 0:
            out["solver_GPtsps"] = self.updates / self.solver_s / 1e9
        return out
