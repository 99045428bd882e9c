"""Classifier-free guidance (Ho & Salimans, 2022) as a wrapper around any conditional denoiser."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .diffusion import Denoiser, expand_like

ConditionalDenoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``denoiser(x_t, t, cond) -> x0_hat``; ``cond`` is a tensor with a leading batch dimension."""


def drop_condition(cond: Tensor, null: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Training-time conditioning dropout: replace each sample's ``cond`` by ``null`` with probability ``p``.

    ``cond`` is ``(B, ...)``; ``null`` broadcasts to one sample's shape.
    """
    if not 0 <= p <= 1:
        raise ValueError(f"drop_condition: p is a probability in [0, 1], got {p}")
    if p == 0:
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
    interval: tuple[float, float] = (0.0, 1.0),
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

    ``interval = (lo, hi)`` guides only at times ``lo <= t <= hi`` and takes the conditional model alone at the
    others (guidance limited to an interval of noise levels, Kynkaanniemi et al., 2024: at high noise it pulls
    samples toward the condition's mode, at low noise it barely acts); a call whose times all lie outside costs
    one evaluation.
    """
    lo, hi = interval
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"guidance interval {interval}: need 0 <= lo <= hi <= 1")

    def check_batch(x: Tensor) -> None:
        if cond.shape[0] != x.shape[0]:
            raise ValueError(f"classifier-free guidance: cond holds {cond.shape[0]} conditions for a batch of "
                             f"{x.shape[0]} samples (one a sample, along its leading dimension)")

    if scale == 1.0:
        def conditional(x: Tensor, t: Tensor) -> Tensor:
            check_batch(x)
            return denoiser(x, t, cond)
        return conditional
    if null_offset is not None and alpha is None:
        raise ValueError("a null_offset needs the schedule's alpha(t) to move x_t into the null branch's frame")
    limited = (lo, hi) != (0.0, 1.0)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        check_batch(x)
        inside = (t >= lo) & (t <= hi) if limited else None
        # one host sync a step, only for a limited interval (meta tensors have no values to test: both branches run)
        if inside is not None and not inside.is_meta and not bool(inside.any()):
            return denoiser(x, t, cond)
        x_null = x if null_offset is None else x + expand_like(alpha(t), x) * null_offset
        both = denoiser(torch.cat([x, x_null]), torch.cat([t, t]), torch.cat([cond, null.to(cond).expand_as(cond)]))
        d_cond, d_null = both.chunk(2)
        if null_offset is not None:
            d_null = d_null - null_offset
        if inside is not None:  # scale 1 (the conditional estimate) for the samples whose time is outside
            return d_null + expand_like(torch.where(inside, scale, 1.0), d_cond) * (d_cond - d_null)
        return d_null + scale * (d_cond - d_null)

    return guided
