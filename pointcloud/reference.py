"""Plain-loop references for :mod:`pointcloud.ops`: the definitions, one point at a time.

The tests check the vectorised ops against these, and ``benchmarks/pointcloud.py``
times both. Shapes follow :mod:`pointcloud.ops` (points ``(B, N, 3)``, features
``(B, C, N)``); everything here is slow on purpose.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fps_loop(xyz: Tensor, m: int) -> Tensor:
    """Farthest point sampling from point 0: ``(B, m)`` indices."""
    out = []
    for cloud in xyz:
        chosen = [0]
        for _ in range(m - 1):
            d = torch.stack([((cloud - cloud[c]) ** 2).sum(-1) for c in chosen]).min(0).values
            chosen.append(int(d.argmax()))
        out.append(chosen)
    return torch.tensor(out)


def knn_loop(query: Tensor, ref: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Squared distances and indices of the ``k`` nearest ``ref`` points of each query point."""
    dists, idx = [], []
    for q, r in zip(query, ref):
        rows = [((r - p) ** 2).sum(-1).sort() for p in q]
        dists.append(torch.stack([d.values[:k] for d in rows]))
        idx.append(torch.stack([d.indices[:k] for d in rows]))
    return torch.stack(dists), torch.stack(idx)


def ball_query_loop(centres: Tensor, xyz: Tensor, radius: float, k: int) -> Tensor:
    """The first ``k`` points (by index) within ``radius`` of each centre, padded with the first one;
    the nearest point when none is inside. ``(B, M, k)``."""
    out = []
    for c, cloud in zip(centres, xyz):
        rows = []
        for centre in c:
            d = ((cloud - centre) ** 2).sum(-1)
            inside = [j for j in range(len(cloud)) if d[j] <= radius**2][:k] or [int(d.argmin())]
            rows.append(inside + [inside[0]] * (k - len(inside)))
        out.append(rows)
    return torch.tensor(out)


def voxelize_loop(features: Tensor, voxel_coords: Tensor, resolution: int) -> Tensor:
    """Mean of ``features`` ``(B, C, N)`` per voxel of integer ``voxel_coords`` ``(B, 3, N)``: ``(B, C, R, R, R)``."""
    B, C, N = features.shape
    grid = torch.zeros(B, C, resolution, resolution, resolution, dtype=features.dtype)
    count = torch.zeros(B, resolution, resolution, resolution, dtype=features.dtype)
    for b in range(B):
        for n in range(N):
            x, y, z = voxel_coords[b, :, n].tolist()
            grid[b, :, x, y, z] += features[b, :, n]
            count[b, x, y, z] += 1
    return grid / count.clamp(min=1)[:, None]


def chamfer_dense(x: Tensor, y: Tensor) -> Tensor:
    """Chamfer distance (squared, PointFlow) with the whole ``(B, N, M)`` distance matrix in memory."""
    d = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)
    return d.min(2).values.mean(1) + d.min(1).values.mean(1)
