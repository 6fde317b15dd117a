"""The steered simulation: a 2-D steady diffusion problem solved by distributed conjugate gradients.

``-div(k grad u) = f`` on the unit square, ``u = 0`` on the boundary, with a constant
conductivity ``k`` and a Gaussian source centred at ``(sx, sy)``. The ``n x n`` interior grid
is split into blocks of rows, one per rank of the communicator; each CG iteration exchanges one
halo row with each neighbour (``Sendrecv``) and reduces two dot products (``allreduce``). The
solve stops when the residual norm is at most ``rtol`` times the source's.

Parameters are handled in normalised coordinates ``theta`` in ``[0, 1]^3`` (what the learner
sees) and mapped to physical ones by :func:`physical`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SOURCE_WIDTH = 0.05  # standard deviation of the Gaussian source
SOURCE_RANGE = (0.15, 0.85)  # where the source centre may be, on each axis
LOG10_K_RANGE = (-0.3, 0.3)  # conductivity from 0.5 to 2
SENSOR_FRACTIONS = (0.2, 0.4, 0.6, 0.8)  # a 4 x 4 grid of sensors: the quantity of interest
DIM = 3  # sx, sy, log10 k


@dataclass(frozen=True)
class Solution:
    """A finished solve: the full field on the leader rank (None elsewhere), the sensor readings, the cost."""

    field: np.ndarray | None
    qoi: np.ndarray
    iterations: int
    residual: float
    solve_s: float


def grid_points(field_bytes: int) -> int:
    """Interior points per axis so that the float64 field is close to ``field_bytes`` (at least 8)."""
    return max(8, int(math.sqrt(field_bytes / 8)))


def physical(theta: np.ndarray) -> tuple[float, float, float]:
    """Normalised ``theta`` (3 numbers in [0, 1]) to ``(sx, sy, k)``."""
    t = np.clip(np.asarray(theta, dtype=np.float64), 0.0, 1.0)
    lo, hi = SOURCE_RANGE
    klo, khi = LOG10_K_RANGE
    return lo + (hi - lo) * t[0], lo + (hi - lo) * t[1], 10 ** (klo + (khi - klo) * t[2])


def row_block(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of the interior grid owned by ``rank`` of ``size``."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def sensor_indices(n: int) -> np.ndarray:
    """Flat indices (row-major, interior grid) of the sensors."""
    idx = [min(n - 1, round(f * (n + 1)) - 1) for f in SENSOR_FRACTIONS]
    return np.array([i * n + j for i in idx for j in idx], dtype=np.int64)


class _Laplacian:
    """``k (4u - neighbours) / h^2`` on this rank's rows, with halo exchange over ``comm``."""

    def __init__(self, comm: Any, n: int, k: float) -> None:
        self.comm, self.n = comm, n
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.scale = k * (n + 1) ** 2
        start, stop = row_block(n, self.rank, self.size)
        self.rows = stop - start
        self.padded = np.zeros((self.rows + 2, n + 2))  # halo rows and Dirichlet columns stay zero
        self.up = self.rank - 1 if self.rank > 0 and self.rows else -1
        self.down = self.rank + 1 if self.rank < self.size - 1 else -1

    def apply(self, u: np.ndarray) -> np.ndarray:
        p = self.padded
        p[1:-1, 1:-1] = u
        self._exchange(p)
        centre = p[1:-1, 1:-1]
        out = 4.0 * centre - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]
        return self.scale * out  # type: ignore[no-any-return]

    def _exchange(self, p: np.ndarray) -> None:
        if self.size == 1:
            return
        from mpi4py import MPI

        up = self.up if self.up >= 0 else MPI.PROC_NULL
        down = self.down if self.down >= 0 else MPI.PROC_NULL
        # Send my first row up, receive the lower neighbour's first row into my bottom halo; then the reverse.
        self.comm.Sendrecv(p[1].copy(), dest=up, recvbuf=p[-1], source=down)
        self.comm.Sendrecv(p[-2].copy(), dest=down, recvbuf=p[0], source=up)


def source(n: int, sx: float, sy: float, start: int, stop: int) -> np.ndarray:
    """The Gaussian source on rows ``[start, stop)``."""
    h = 1.0 / (n + 1)
    x = (np.arange(n) + 1) * h
    y = (np.arange(start, stop) + 1) * h
    r2 = (y[:, None] - sy) ** 2 + (x[None, :] - sx) ** 2
    return np.exp(-r2 / (2 * SOURCE_WIDTH**2)) / (2 * math.pi * SOURCE_WIDTH**2)  # type: ignore[no-any-return]


def solve(theta: np.ndarray, n: int, comm: Any, rtol: float = 1e-10, max_iter: int | None = None) -> Solution:
    """Solve for normalised parameters ``theta`` on an ``n x n`` grid over ``comm`` (collective).

    Raises RuntimeError when CG does not reach ``rtol`` within ``max_iter`` (default ``20 n``).
    """
    import time

    t0 = time.perf_counter()
    sx, sy, k = physical(theta)
    op = _Laplacian(comm, n, k)
    start, stop = row_block(n, op.rank, op.size)
    b = source(n, sx, sy, start, stop)
    u = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rr = _dot(comm, r, r)
    target = rtol**2 * rr
    limit = max_iter or 20 * n
    it = 0
    while rr > target:
        if it >= limit:
            raise RuntimeError(f"CG did not reach the relative residual {rtol:g} in {limit} iterations "
                               f"(at {math.sqrt(rr / (target / rtol**2)):.3g})")
        ap = op.apply(p)
        alpha = rr / _dot(comm, p, ap)
        u += alpha * p
        r -= alpha * ap
        rr_new = _dot(comm, r, r)
        p *= rr_new / rr
        p += r
        rr = rr_new
        it += 1
    field = _gather_rows(comm, u, n)
    qoi = field.ravel()[sensor_indices(n)] if field is not None else np.empty(0)
    residual = math.sqrt(rr / (target / rtol**2)) if target > 0 else 0.0
    return Solution(field=field, qoi=qoi, iterations=it, residual=residual, solve_s=time.perf_counter() - t0)


def _dot(comm: Any, a: np.ndarray, b: np.ndarray) -> float:
    local = float(np.vdot(a, b))
    return local if comm.Get_size() == 1 else float(comm.allreduce(local))


def _gather_rows(comm: Any, u: np.ndarray, n: int) -> np.ndarray | None:
    """The whole field on rank 0 of ``comm`` (None on the others)."""
    if comm.Get_size() == 1:
        return u
    counts = [(row_block(n, r, comm.Get_size())[1] - row_block(n, r, comm.Get_size())[0]) * n
              for r in range(comm.Get_size())]
    out = np.empty((n, n)) if comm.Get_rank() == 0 else None
    comm.Gatherv(np.ascontiguousarray(u), [out, counts] if out is not None else None, root=0)
    return out
