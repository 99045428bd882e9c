"""Exact denoisers of Gaussian-mixture data, for testing and benchmarking samplers.

For ``x0 ~ sum_k w_k N(mu_k, S_k)`` and ``x_t = alpha x0 + sigma eps``, the posterior
mean ``E[x0 | x_t]`` is analytic: component responsibilities come from
``N(x_t; alpha mu_k, alpha^2 S_k + sigma^2 I)`` and each component contributes
``mu_k + alpha S_k (alpha^2 S_k + sigma^2 I)^{-1} (x_t - alpha mu_k)``.
A sampler driven by this denoiser should reproduce the mixture exactly, up to
its discretisation error.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .diffusion import Denoiser
from .schedules import NoiseSchedule


def gaussian_mixture_denoiser(weights: Tensor, means: Tensor, covs: Tensor, schedule: NoiseSchedule) -> Denoiser:
    """``D(x_t, t) = E[x0 | x_t]`` for a mixture: ``weights`` ``(K,)``, ``means`` ``(K, D)``, ``covs`` ``(K, D, D)``.

    ``x_t`` is ``(B, D)`` (any float dtype and device; computed in float64), ``t`` the
    float time ``(B,)``, mapped to the schedule's discrete step ``round(t * T)``.
    Covariances must be positive definite. Each ``S_k = U_k diag(lam_k) U_k^T`` is
    diagonalised once, so ``alpha^2 S_k + sigma^2 I`` is inverted in its eigenbasis.
    """
    lam, U = torch.linalg.eigh(covs.double())  # (K, D), (K, D, D)
    log_w, mu = weights.double().log(), means.double()

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        dev = x_t.device
        abar = schedule.alpha_bar(torch.round(t.double() * schedule.timesteps).long().to(dev))
        a, s2 = abar.sqrt()[:, None, None], (1 - abar)[:, None, None]  # (B, 1, 1)
        diff = x_t.double()[:, None, :] - a * mu.to(dev)  # (B, K, D)
        z = torch.einsum("kdj,bkd->bkj", U.to(dev), diff)  # diff in each component's eigenbasis
        var = a**2 * lam.to(dev) + s2  # eigenvalues of alpha^2 S_k + sigma^2 I, (B, K, D)
        log_resp = log_w.to(dev) - 0.5 * (z**2 / var + var.log()).sum(-1)
        resp = torch.softmax(log_resp, dim=1)[..., None]  # (B, K, 1)
        shift = torch.einsum("kdj,bkj->bkd", U.to(dev), lam.to(dev) * z / var)  # S_k (..)^{-1} diff
        return (resp * (mu.to(dev) + a * shift)).sum(1).to(x_t.dtype)

    return denoise


def sample_gaussian_mixture(
    weights: Tensor, means: Tensor, covs: Tensor, n: int, generator: torch.Generator | None = None
) -> Tensor:
    """``n`` float64 draws ``(n, D)`` from the mixture, on the generator's device (CPU by default)."""
    dev = generator.device if generator is not None else torch.device("cpu")
    k = torch.multinomial(weights.double().to(dev), n, replacement=True, generator=generator)
    chol = torch.linalg.cholesky(covs.double().to(dev))[k]
    z = torch.randn(n, means.shape[1], 1, generator=generator, dtype=torch.float64, device=dev)
    return means.double().to(dev)[k] + (chol @ z)[..., 0]
