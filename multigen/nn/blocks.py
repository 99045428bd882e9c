"""Normalisation and residual blocks with timestep conditioning, and activation checkpointing of a block."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def run_block(block: Callable[..., Tensor], *args: Any, checkpointed: bool = False) -> Tensor:
    """``block(*args)``; with ``checkpointed`` and gradients on, its activations are not kept for the backward pass
    but recomputed there (activation checkpointing, non-reentrant: less memory for at most a third more compute; the
    same outputs and gradients, dropout's draws replayed)."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with at most ``groups`` groups that divide ``channels``."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


class ResBlock(nn.Module):
    """``norm -> SiLU -> conv -> norm -> (scale, shift from the time embedding) -> SiLU -> dropout -> conv`` + skip.

    Works on ``(B, C, *spatial)`` for ``dims`` = 1, 2 or 3 spatial dimensions;
    ``emb`` is ``(B, emb_dim)``.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dims: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        self.norm1, self.conv1 = group_norm(in_ch), conv(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2, self.conv2 = group_norm(out_ch), conv(out_ch, out_ch, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.act = nn.SiLU()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = conv(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        scale, shift = self.emb(self.act(emb)).view(emb.shape[0], -1, *([1] * (x.ndim - 2))).chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(self.act(h)))
        return self.skip(x) + h


class FeedForward(nn.Module):
    """Transformer MLP ``(…, dim) -> (…, dim)`` with a GELU hidden layer of ``mult * dim``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, mult * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mult * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class GatedFeedForward(nn.Module):
    """SwiGLU transformer MLP ``(…, dim) -> (…, dim)`` (Shazeer, 2020): ``down(silu(a) * b)``, with ``a`` and ``b``
    from one up-projection of width ``2/3 · mult · dim`` each (rounded to a multiple of 8), which gives it about
    the parameters and FLOPs of :class:`FeedForward` with the same ``mult``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = max(8, round(2 * mult * dim / 3 / 8) * 8)
        self.up, self.down = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.up(x).chunk(2, dim=-1)
        return self.down(self.dropout(F.silu(a) * b))
