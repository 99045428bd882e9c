"""Distances between sets of samples, used by evaluations, tests and benchmarks."""

from __future__ import annotations

import torch
from torch import Tensor


def sliced_wasserstein(x: Tensor, y: Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between point sets ``x`` ``(N, D)`` and ``y`` ``(M, D)``.

    Averages the squared 1-D W2 over ``projections`` random directions (fixed by
    ``seed``) and returns its square root. Sets of unequal size are compared
    through ``min(N, M)`` evenly spaced quantiles.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) point sets, got {tuple(x.shape)} and {tuple(y.shape)}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], projections, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    px = (x.double().cpu() @ dirs).sort(dim=0).values
    py = (y.double().cpu() @ dirs).sort(dim=0).values
    n = min(len(px), len(py))
    if len(px) != n or len(py) != n:
        q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        px, py = torch.quantile(px, q, dim=0), torch.quantile(py, q, dim=0)
    return float(((px - py) ** 2).mean().sqrt())
