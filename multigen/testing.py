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

    ``x_t`` is ``(B, D)`` (any float dtype; computed in float64), ``t`` the float time
    ``(B,)``, mapped to the schedule's discrete step ``round(t * T)``.
    """
    w, mu, cov = weights.double(), means.double(), covs.double()
    eye = torch.eye(mu.shape[1], dtype=torch.float64)

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        abar = schedule.alpha_bar(torch.round(t.double() * schedule.timesteps).long().cpu())
        a, s2 = abar.sqrt()[:, None, None, None], (1 - abar)[:, None, None, None]  # (B, 1, 1, 1)
        x = x_t.double().cpu()
        marg = a**2 * cov + s2 * eye  # (B, K, D, D)
        diff = x[:, None, :] - a[..., 0] * mu  # (B, K, D)
        sol = torch.linalg.solve(marg, diff[..., None])[..., 0]  # marg^{-1} (x_t - a mu)
        logdet = torch.linalg.slogdet(marg).logabsdet
        log_resp = torch.log(w) - 0.5 * (diff * sol).sum(-1) - 0.5 * logdet
        resp = torch.softmax(log_resp, dim=1)  # (B, K)
        comp = mu + a[..., 0] * (cov @ sol[..., None])[..., 0]  # (B, K, D)
        return (resp[..., None] * comp).sum(1).to(device=x_t.device, dtype=x_t.dtype)

    return denoise


def sample_gaussian_mixture(
    weights: Tensor, means: Tensor, covs: Tensor, n: int, generator: torch.Generator | None = None
) -> Tensor:
    """``n`` float64 draws ``(n, D)`` from the mixture."""
    k = torch.multinomial(weights.double(), n, replacement=True, generator=generator)
    chol = torch.linalg.cholesky(covs.double())[k]
    z = torch.randn(n, means.shape[1], 1, generator=generator, dtype=torch.float64)
    return means.double()[k] + (chol @ z)[..., 0]
