"""Classifier-free guidance (Ho & Salimans, 2022) as a wrapper around any conditional denoiser."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .diffusion import Denoiser, expand_like

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


def classifier_free_guidance(
    denoiser: ConditionalDenoiser,
    cond: Tensor,
    null: Tensor,
    scale: float,
    null_offset: Tensor | None = None,
    alpha: Callable[[Tensor], Tensor] | None = None,
) -> Denoiser:
    """Guided denoiser ``D_null + scale * (D_cond - D_null)`` for the samplers.

    ``scale = 1`` is the conditional model itself (and costs one evaluation);
    ``scale = 0`` is the unconditional one. Both branches run as one batch.

    ``null_offset`` (shaped like ``x_t``) is for a model whose unconditional branch learnt the data moved by it,
    ``x0 + null_offset``, where the conditional branch learnt ``x0`` (a residual video model: residuals to reference
    frames when conditioned, whole frames when not, so the offset is the reference). That branch then runs at
    ``x_t + alpha(t) * null_offset``, the same noise level in its own frame, and the offset is taken off its
    estimate: exact for any scale. ``denoiser`` must then return x0 estimates, and ``alpha`` is the schedule's
    signal scale ``alpha(t)`` ``(B,)``.
    """
    if scale == 1.0:
        return lambda x, t: denoiser(x, t, cond)
    if null_offset is not None and alpha is None:
        raise ValueError("a null_offset needs the schedule's alpha(t) to move x_t into the null branch's frame")

    def guided(x: Tensor, t: Tensor) -> Tensor:
        x_null = x if null_offset is None else x + expand_like(alpha(t), x) * null_offset
        both = denoiser(torch.cat([x, x_null]), torch.cat([t, t]), torch.cat([cond, null.to(cond).expand_as(cond)]))
        d_cond, d_null = both.chunk(2)
        if null_offset is not None:
            d_null = d_null - null_offset
        return d_null + scale * (d_cond - d_null)

    return guided
