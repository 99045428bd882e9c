"""Classifier-free guidance (Ho & Salimans, 2022) as a wrapper around any conditional denoiser."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .diffusion import Denoiser

ConditionalDenoiser = Callable[[Tensor, Tensor, Any], Tensor]
"""``denoiser(x_t, t, cond) -> x0_hat``; ``cond`` is a tensor with a leading batch dimension."""


def drop_condition(cond: Tensor, null: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Training-time conditioning dropout: replace each sample's ``cond`` by ``null`` with probability ``p``.

    ``cond`` is ``(B, ...)``; ``null`` broadcasts to one sample's shape.
    """
    if p <= 0:
        return cond
    drop = torch.rand(cond.shape[0], device=cond.device, generator=generator) < p
    drop = drop.reshape((-1,) + (1,) * (cond.ndim - 1))
    return torch.where(drop, null.to(cond).expand_as(cond), cond)


def classifier_free_guidance(denoiser: ConditionalDenoiser, cond: Tensor, null: Tensor, scale: float) -> Denoiser:
    """Guided denoiser ``D_null + scale * (D_cond - D_null)`` for the samplers.

    ``scale = 1`` is the conditional model itself (and costs one evaluation);
    ``scale = 0`` is the unconditional one. Both branches run as one batch.
    """
    if scale == 1.0:
        return lambda x, t: denoiser(x, t, cond)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        both = denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null.to(cond).expand_as(cond)]))
        d_cond, d_null = both.chunk(2)
        return d_null + scale * (d_cond - d_null)

    return guided
