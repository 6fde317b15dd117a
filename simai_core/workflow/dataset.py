"""The trainer's in-memory training set, grown incrementally from staged snapshots (imports torch).

Only snapshots of new sync steps are fetched (the reference re-fetched the whole
history on every update); an optional window keeps the newest N steps. Every trainer
rank runs the same number of mini-batches per epoch (DDP all-reduces per batch, so a
rank with fewer batches would hang the others): the count follows from the largest
per-trainer share and the largest window of any trainer rank (passed to ``epoch``),
capped at ``epoch_batches`` (a random draw from the window once it holds more), and
ranks with less data wrap around their shuffled samples. A streamed step may miss some
of the owned ranks' snapshots (discarded in async mode, or not arrived yet).

GNN training items are graph patches: each rank's graph split into slabs of consecutive
nodes (grid order) with the edges inside the slab, so one optimiser step on a large mesh
costs what it costs on a small one.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor


class SnapshotWindow:
    """Snapshots ``(n_points, 2 n_in)`` of the owned simulation ranks, by sync step."""

    def __init__(self, owned: tuple[int, ...], n_in: int, window: int | None) -> None:
        self.owned = owned
        self.n_in = n_in
        self.window = window
        self.steps: deque[int] = deque()  # ascending
        self.arrays: dict[tuple[int, int], np.ndarray] = {}
        self.newest_evicted = -1
        self.version = 0  # bumped on every change, so cached tensors know when to rebuild

    def __len__(self) -> int:
        return len(self.steps)

    def add_step(self, step: int, arrays: dict[int, np.ndarray]) -> list[int]:
        """Add snapshots of one sync step (some or all owned ranks'); returns evicted steps.

        A snapshot that arrives after its step left the window is dropped: taking it back would
        evict a newer step in its place.
        """
        if step <= self.newest_evicted:
            return []
        if step not in self.steps:
            bisect.insort(self.steps, step)  # a late step goes where it belongs, not at the newest end
        for rank, array in arrays.items():
            self.arrays[(rank, step)] = array
        evicted = []
        while self.window is not None and len(self.steps) > self.window:
            old = self.newest_evicted = self.steps.popleft()
            evicted.append(old)
            for rank in self.owned:
                self.arrays.pop((rank, old), None)
        self.version += 1
        return evicted

    def samples(self) -> list[tuple[int, np.ndarray]]:
        """(simulation rank, snapshot) pairs, oldest step first."""
        return [(rank, self.arrays[(rank, step)]) for step in self.steps for rank in self.owned
                if (rank, step) in self.arrays]


class PointBatches:
    """Mini-batches of points for the MLP: shuffled rows of all owned snapshots."""

    def __init__(self, window: SnapshotWindow, batch: int, max_owned: int, device: torch.device, seed: int,
                 epoch_batches: int | None = None) -> None:
        self.window, self.batch, self.max_owned, self.device = window, batch, max_owned, device
        self.epoch_batches = epoch_batches
        self.gen = torch.Generator().manual_seed(seed)
        self._version = -1
        self.x = self.y = torch.empty(0)

    def _refresh(self) -> None:
        if self._version == self.window.version:
            return
        data = np.concatenate([a for _, a in self.window.samples()], axis=0)
        table = torch.tensor(data, dtype=torch.float32)
        self.x = table[:, : self.window.n_in].contiguous().to(self.device)
        self.y = table[:, self.window.n_in :].contiguous().to(self.device)
        self._version = self.window.version

    def n_batches(self, steps: int) -> int:
        """Batches per epoch over ``steps`` steps: equal on every trainer rank given the same ``steps``."""
        per_snapshot = len(self.x) // max(1, len(self.window.arrays))
        return _capped(math.ceil(self.max_owned * steps * per_snapshot / self.batch), self.epoch_batches)

    def epoch(self, steps: int) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Yield ``(x, edge_index, pos, y)`` per mini-batch (the graph tensors are empty)."""
        self._refresh()
        n = len(self.x)
        count = self.n_batches(steps)
        order = torch.randperm(n, generator=self.gen).repeat(math.ceil(count * self.batch / n))
        empty_e = torch.empty((2, 0), dtype=torch.long, device=self.device)
        empty_p = torch.empty((0, 1), device=self.device)
        for b in range(count):
            idx = order[b * self.batch : (b + 1) * self.batch].to(self.device)
            yield self.x[idx], empty_e, empty_p, self.y[idx]


class GraphBatches:
    """Mini-batches of graph patches for the GNN, joined as disjoint unions."""

    def __init__(self, window: SnapshotWindow, graphs: dict[int, tuple[np.ndarray, np.ndarray]], batch: int,
                 max_owned: int, device: torch.device, seed: int, epoch_batches: int | None = None,
                 patches: int = 1) -> None:
        self.window, self.batch, self.max_owned, self.device = window, batch, max_owned, device
        self.epoch_batches, self.n_patches = epoch_batches, patches
        self.gen = torch.Generator().manual_seed(seed)
        # (rank, patch) -> (first node, end node, edges relabelled into the patch, positions)
        self.patches: dict[tuple[int, int], tuple[int, int, Tensor, Tensor]] = {}
        for rank, (pos, edges) in graphs.items():
            for i, patch in enumerate(split_graph(pos, edges, patches)):
                a, b, e, p = patch
                # torch.tensor copies: staged arrays may be read-only views of the transfer buffer.
                self.patches[(rank, i)] = (a, b, torch.tensor(e, dtype=torch.long, device=device),
                                           torch.tensor(p, dtype=torch.float32, device=device))
        self._version = -1
        self._items: list[tuple[tuple[int, int], Tensor, Tensor]] = []

    def _refresh(self) -> None:
        if self._version == self.window.version:
            return
        n_in = self.window.n_in
        self._items = []
        for rank, array in self.window.samples():
            table = torch.tensor(array, dtype=torch.float32, device=self.device)
            for i in range(self.n_patches):
                a, b, _, _ = self.patches[(rank, i)]
                self._items.append(((rank, i), table[a:b, :n_in].contiguous(), table[a:b, n_in:].contiguous()))
        self._version = self.window.version

    def n_batches(self, steps: int) -> int:
        """Batches per epoch over ``steps`` steps: equal on every trainer rank given the same ``steps``."""
        return _capped(math.ceil(self.max_owned * steps * self.n_patches / self.batch), self.epoch_batches)

    def epoch(self, steps: int) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Yield ``(x, edge_index, pos, y)`` per mini-batch of ``batch`` graph patches."""
        self._refresh()
        count = self.n_batches(steps)
        order = torch.randperm(len(self._items), generator=self.gen)
        order = order.repeat(math.ceil(count * self.batch / len(order)))
        for b in range(count):
            chosen = [self._items[i] for i in order[b * self.batch : (b + 1) * self.batch].tolist()]
            yield self._join(chosen)

    def _join(self, chosen: list[tuple[tuple[int, int], Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if len(chosen) == 1:
            key, x, y = chosen[0]
            return x, self.patches[key][2], self.patches[key][3], y
        offsets = np.cumsum([0] + [len(x) for _, x, _ in chosen[:-1]])
        edges = torch.cat([self.patches[k][2] + int(o) for (k, _, _), o in zip(chosen, offsets, strict=True)], dim=1)
        return (torch.cat([x for _, x, _ in chosen]), edges, torch.cat([self.patches[k][3] for k, _, _ in chosen]),
                torch.cat([y for _, _, y in chosen]))


def split_graph(pos: np.ndarray, edges: np.ndarray, parts: int) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """``parts`` slabs of consecutive nodes: ``(first, end, edges inside relabelled from 0, positions)``."""
    n = len(pos)
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    out = []
    for a, b in itertools.pairwise(bounds):
        inside = (edges[0] >= a) & (edges[0] < b) & (edges[1] >= a) & (edges[1] < b)
        out.append((int(a), int(b), edges[:, inside] - a, pos[a:b]))
    return out


def _capped(count: int, cap: int | None) -> int:
    return count if cap is None else min(count, cap)
