"""Distances between sets of samples, used by evaluations, tests and benchmarks."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def gaussian_fit(points: Tensor, shape: tuple[int, ...], seed: int = 0) -> Tensor:
    """A trivial baseline: ``shape`` draws (last size ``D``) from the Gaussian with the mean and covariance of
    ``points`` ``(N, D)``, in their dtype and on their device, the noise drawn on the CPU from ``seed``."""
    chol = torch.linalg.cholesky(torch.atleast_2d(torch.cov(points.T)))  # (D = 1: a 1 x 1 covariance)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=points.dtype)
    return points.mean(0) + noise.to(points.device) @ chol.T


def sliced_wasserstein(x: Tensor, y: Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between point sets ``x`` ``(N, D)`` and ``y`` ``(M, D)``.

    Averages the squared 1-D W2 over ``projections`` random directions (fixed by
    ``seed``) and returns its square root. Each 1-D W2 is exact between the two
    empirical distributions, of equal size or not: their quantile functions are
    compared on every interval of levels where both are constant.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) point sets, got {tuple(x.shape)} and {tuple(y.shape)}")
    if not (len(x) and len(y) and projections >= 1):
        raise ValueError(f"sliced W2 needs two non-empty sets and projections >= 1, got {len(x)} and {len(y)} "
                         f"points, {projections} projections")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], projections, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    px = (x.double().cpu() @ dirs).sort(dim=0).values
    py = (y.double().cpu() @ dirs).sort(dim=0).values
    n, m = len(px), len(py)
    # the levels where either quantile function steps, and on each interval between them each set's sorted index
    levels = torch.cat([torch.arange(k + 1, dtype=torch.float64) / k for k in (n, m)]).unique()
    middle, width = (levels[1:] + levels[:-1]) / 2, levels.diff()
    gap = px[(middle * n).long().clamp_max(n - 1)] - py[(middle * m).long().clamp_max(m - 1)]
    return float((width[:, None] * gap**2).sum(0).mean().sqrt())


def one_nna(d_ss: Tensor, d_rr: Tensor, d_sr: Tensor) -> float:
    """Leave-one-out 1-nearest-neighbour two-sample accuracy (0.5 is ideal: the sets are indistinguishable).

    Any distance will do: ``d_ss`` ``(n, n)`` within the samples, ``d_rr`` ``(m, m)`` within the references and
    ``d_sr`` ``(n, m)`` between them, on the CPU. Each item is classified by its nearest other item; ties go
    to the first (samples before references)."""
    n, m = d_sr.shape
    if not (n and m):
        raise ValueError(f"1-NNA compares two sets, got {n} samples and {m} references")
    if d_ss.shape != (n, n) or d_rr.shape != (m, m):
        raise ValueError(f"1-NNA: d_sr is {n} x {m}, so d_ss must be {n} x {n} and d_rr {m} x {m}; got "
                         f"{tuple(d_ss.shape)} and {tuple(d_rr.shape)}")
    # float64 copies (integer distances, Hamming counts, too): the diagonals are overwritten
    d_ss, d_rr, d_sr = (d.to(torch.float64, copy=True) for d in (d_ss, d_rr, d_sr))
    top = torch.cat([d_ss.fill_diagonal_(math.inf), d_sr], 1)  # samples' distances to everything
    bottom = torch.cat([d_sr.T, d_rr.fill_diagonal_(math.inf)], 1)  # references' distances
    nearest = torch.cat([top, bottom]).argmin(1)
    label = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(m, dtype=torch.bool)])
    return (label[nearest] == label).double().mean().item()
