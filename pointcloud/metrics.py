"""Point-cloud metrics: per-pair distances (Chamfer, EMD, F-score) and set metrics (MMD, COV, 1-NNA).

Clouds are ``(B, N, 3)``. Set metrics follow PointFlow's protocol: a generated set
``S`` ``(n, N, 3)`` is compared with a reference set ``R`` ``(m, N, 3)`` through the
matrix of pairwise distances; normalising both sets the same way is the caller's job.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from tqdm.auto import tqdm

from multigen.metrics import one_nna

from .ops import chamfer_distance, knn, square_distance


def check_pair(x: Tensor, y: Tensor, equal_size: bool = False) -> None:
    """Refuse what a per-pair metric would silently misread: clouds whose points are not 3-D (channels-first
    ``(B, 3, N)`` clouds would be read as 3 points of N coordinates), empty clouds, and with ``equal_size`` (EMD)
    clouds of unequal shapes. :func:`~pointcloud.ops.square_distance` checks the rest (``(B, N, 3)``, the same B)."""
    for name, c in (("x", x), ("y", y)):
        if c.ndim < 2 or c.shape[-1] != 3 or c.shape[-2] == 0:
            raise ValueError(f"{name}: clouds are (B, N, 3) with N >= 1, got {tuple(c.shape)}")
    if equal_size and x.shape != y.shape:
        raise ValueError(f"EMD needs clouds of equal size, got {tuple(x.shape)} and {tuple(y.shape)}")


def chamfer(x: Tensor, y: Tensor) -> Tensor:
    """PointFlow's Chamfer distance (mean squared nearest-neighbour distance, both ways): ``(B,)``."""
    check_pair(x, y)
    return chamfer_distance(x, y)


def emd_exact(x: Tensor, y: Tensor) -> Tensor:
    """Exact earth mover's distance between equal-size clouds: the mean Euclidean distance of the
    optimal one-to-one matching (Hungarian algorithm on the CPU; for small N). ``(B,)``."""
    check_pair(x, y, equal_size=True)
    dist = square_distance(x.detach().double(), y.detach().double()).clamp_min(0).sqrt().cpu().numpy()
    out = [d[linear_sum_assignment(d)].mean() for d in dist]
    return torch.tensor(np.array(out), dtype=x.dtype, device=x.device)


def emd_approx(x: Tensor, y: Tensor, epsilon: float = 3e-3, scaling: float = 0.5, overrelax: float = 1.8,
               tol: float | None = 1e-2, max_iterations: int = 500, check_every: int = 10) -> Tensor:
    """Approximate EMD by entropic optimal transport (log-domain Sinkhorn in float32, uniform weights),
    batched on any device: the transport cost under the Sinkhorn plan, ``(B,)``.

    ``epsilon`` is the entropic blur relative to the clouds' root-mean-square pair distance. The blur is
    annealed (epsilon-scaling) from that distance down to the target by factors of ``scaling``, one
    iteration per level, then iterated at the target with over-relaxation ``overrelax`` (1 is plain
    Sinkhorn; in (1, 2) it converges in far fewer iterations) until the plan's row marginals are within
    ``tol`` of uniform in L1 (0 to 2), read every ``check_every`` iterations (one host read each), or
    ``max_iterations`` in all. ``tol=None`` never reads the device (a fixed ``max_iterations``, as on ``meta``).
    The measured gap to :func:`emd_exact` is in ``benchmarks/RESULTS.md`` and bounded in the tests."""
    check_pair(x, y, equal_size=True)
    if not (0 < epsilon <= 1 and 0 < scaling < 1 and 0 < overrelax < 2):
        raise ValueError(f"need 0 < epsilon <= 1, 0 < scaling < 1 and 0 < overrelax < 2, got epsilon={epsilon}, "
                         f"scaling={scaling}, overrelax={overrelax}")
    cost = square_distance(x.float(), y.float()).clamp_min(0).sqrt()  # (B, N, N)
    N = x.shape[1]
    # (B, 1, 1); kept above 0 for two clouds of one coincident point each, whose cost is 0 (not 0 / 0)
    target = (epsilon * cost.pow(2).mean((1, 2), keepdim=True).sqrt()).clamp_min(1e-12)
    log_w = -math.log(N)

    # With c = cost / eps precomputed per blur level, an update is one (B, N, N) pass and a logsumexp.
    def f_update(g: Tensor, eps: Tensor, c: Tensor) -> Tensor:  # rows of the plan sum to 1/N
        return -eps[..., 0] * (torch.logsumexp(g[:, None, :] / eps - c, dim=2) + log_w)

    def g_update(f: Tensor, eps: Tensor, c: Tensor) -> Tensor:  # columns sum to 1/N
        return -eps[..., 0] * (torch.logsumexp(f[:, :, None] / eps - c, dim=1) + log_w)

    f = cost.new_zeros(cost.shape[:2])
    g = torch.zeros_like(f)
    levels = max(1, math.ceil(math.log(epsilon) / math.log(scaling)))
    for k in range(levels):  # the blur from the rms distance down to just above the target
        eps = target / epsilon * scaling**k
        c = cost / eps
        f = f_update(g, eps, c)
        g = g_update(f, eps, c)
    c = cost / target
    for i in range(max_iterations - levels):
        f_new = f_update(g, target, c)
        if tol is not None and i % check_every == 0:
            row_error = (torch.exp((f - f_new) / target[..., 0]) - 1).abs().mean(1).amax()  # max over the batch
            if row_error.item() < tol:
                f = f_new
                break
        f = f + overrelax * (f_new - f)
        g = g + overrelax * (g_update(f, target, c) - g)
    else:  # no break: not converged, or no check asked for
        if tol is not None:
            warnings.warn(f"Sinkhorn EMD did not reach tol={tol} in {max_iterations} iterations", stacklevel=2)
    g = g_update(f, target, c)  # the plan's columns sum to 1/N exactly
    plan = torch.exp((f[:, :, None] + g[:, None, :]) / target - c + 2 * log_w)
    return (plan * cost).sum((1, 2)).to(x.dtype)


def fscore(x: Tensor, y: Tensor, threshold: float = 0.01) -> Tensor:
    """F-score at ``threshold`` (Tatarchenko et al. 2019): harmonic mean of the fraction of ``x``
    within ``threshold`` of ``y`` (precision) and of ``y`` within it of ``x`` (recall). ``(B,)``."""
    check_pair(x, y)
    precision = (knn(x, y, 1)[0][..., 0] <= threshold**2).double().mean(1)
    recall = (knn(y, x, 1)[0][..., 0] <= threshold**2).double().mean(1)
    return (2 * precision * recall / (precision + recall).clamp_min(1e-12)).to(x.dtype)


def pairwise(a: Tensor, b: Tensor, metric: str = "cd", batch: int = 64, progress: bool = False) -> Tensor:
    """Distances between every cloud of ``a`` ``(n, N, 3)`` and of ``b`` ``(m, N, 3)``: ``(n, m)``.

    EMD is exact on the CPU (the assignment solver is measured faster there than Sinkhorn: 2.8 s
    against 109 s for 4 pairs of 2 048 points) and Sinkhorn on GPUs."""
    fn = {"cd": chamfer, "emd": emd_exact if a.device.type == "cpu" else emd_approx}.get(metric)
    if fn is None:
        raise ValueError(f"unknown metric {metric!r}; choose 'cd' or 'emd'")
    n, m = len(a), len(b)
    ia, ib = torch.meshgrid(torch.arange(n), torch.arange(m), indexing="ij")
    ia, ib = ia.flatten(), ib.flatten()
    out = torch.empty(n * m, dtype=torch.float64)
    for start in tqdm(range(0, n * m, batch), desc=f"pairwise {metric}", disable=not progress, leave=False):
        sl = slice(start, start + batch)
        out[sl] = fn(a[ia[sl]], b[ib[sl]]).double().cpu()
    return out.reshape(n, m)


def mmd(d_sr: Tensor) -> float:
    """Minimum matching distance: mean over references of the distance to the closest sample (``d_sr`` ``(n, m)``)."""
    return d_sr.min(0).values.mean().item()


def coverage(d_sr: Tensor) -> float:
    """Fraction of references that are the nearest reference of at least one sample."""
    return d_sr.argmin(1).unique().numel() / d_sr.shape[1]


def coverage_by_group(d_sr: Tensor, groups: list[str]) -> dict[str, float]:
    """Coverage inside each group of references (``groups[j]`` names reference j's, e.g. its shape family):
    the fraction of a group's references that are the nearest reference of at least one sample (all samples
    compete over all references, so a family that no sample resembles scores 0)."""
    covered = torch.zeros(d_sr.shape[1], dtype=torch.bool)
    covered[d_sr.argmin(1)] = True
    return {g: covered[[j for j, h in enumerate(groups) if h == g]].double().mean().item()
            for g in dict.fromkeys(groups)}


def share_by_group(d_sr: Tensor, groups: list[str]) -> dict[str, float]:
    """The share of samples whose nearest reference is in each group (``groups[j]`` names reference j's):
    with as many samples as references, a generator that keeps the groups' proportions scores each group's
    share of the references; a group it under-produces scores less (mode dropping), whatever its coverage."""
    nearest = d_sr.argmin(1).tolist()
    return {g: sum(groups[j] == g for j in nearest) / len(nearest) for g in dict.fromkeys(groups)}


def set_metrics(samples: Tensor, refs: Tensor, metrics: tuple[str, ...] = ("cd",), progress: bool = False,
                groups: list[str] | None = None) -> dict[str, float]:
    """``MMD-X``, ``COV-X`` and ``1-NNA-X`` for each metric X in ``metrics`` (``cd``, ``emd``); with ``groups``
    (one name per reference), also ``COV-X/<group>`` (:func:`coverage_by_group`) and ``SHARE-X/<group>``
    (:func:`share_by_group`)."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    if not (len(samples) and len(refs)):  # before any distance is computed (EMD takes minutes on many clouds)
        raise ValueError(f"set metrics compare two sets of clouds, got {len(samples)} samples and {len(refs)} "
                         f"references")
    if groups is not None and len(groups) != len(refs):
        raise ValueError(f"groups: one name per reference cloud, got {len(groups)} for {len(refs)}")
    out: dict[str, float] = {}
    for metric in metrics:
        d_sr = pairwise(samples, refs, metric, progress=progress)
        d_ss = pairwise(samples, samples, metric, progress=progress)
        d_rr = pairwise(refs, refs, metric, progress=progress)
        name = metric.upper()
        out[f"MMD-{name}"] = mmd(d_sr)
        out[f"COV-{name}"] = coverage(d_sr)
        out[f"1-NNA-{name}"] = one_nna(d_ss, d_rr, d_sr)
        if groups is not None:
            out.update({f"COV-{name}/{g}": v for g, v in coverage_by_group(d_sr, groups).items()})
            out.update({f"SHARE-{name}/{g}": v for g, v in share_by_group(d_sr, groups).items()})
    return out
