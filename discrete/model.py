"""Denoisers for categorical diffusion: ``(x_t tokens, t) -> logits of x_0``.

Both take int64 tokens in ``[0, vocab)`` (the absorbing mask included in ``vocab``) and time ``t``
``(B,)`` in ``(0, timesteps]`` (integer steps; float ones from the continuous-time objective), and
return logits with a trailing ``vocab`` dimension. Built with ``known_flag=True`` (infilling
training), they also take a bool ``known`` of the tokens' shape: a learned vector is added to the
embedding of each known (clean) token, so the model can tell them from noisy ones. Built with
``time_conditioning=False`` they ignore ``t`` (for the absorbing chain, whose exact denoiser depends
on ``x_t`` alone: the masks say how far the chain has gone). Built with ``self_condition=True`` they
also see their own first estimate of ``x_0`` (:class:`SelfCondition`). Built with
``gradient_checkpointing=True`` they recompute each block's activations in the backward pass instead of keeping them
(:func:`multigen.nn.run_block`: less memory in training, the same outputs and gradients).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from multigen.diffusion import host_coin
from multigen.nn import (Attention, FeedForward, GatedFeedForward, ResBlock, TimestepEmbedding, group_norm,
                         rotary_tables, run_block)


class KnownFlag(nn.Module):
    """Adds a learned vector to the embeddings ``(B, *S, dim)`` of known tokens (bool ``(B, *S)``)."""

    def __init__(self, dim: int, enabled: bool) -> None:
        super().__init__()
        self.vector = nn.Parameter(torch.zeros(dim)) if enabled else None

    def forward(self, h: Tensor, known: Tensor | None) -> Tensor:
        if known is None:
            return h
        if self.vector is None:
            raise ValueError("this model was trained without known parts marked (process.infill_rate=0); "
                             "sample it without `known` in the model call")
        return h + known[..., None].to(h.dtype) * self.vector


class SelfCondition(nn.Module):
    """Self-conditioning for a token denoiser (Chen et al., 2023): the network also sees its own estimate of ``x_0``,
    the probabilities ``(B, *S, vocab)`` of a first pass, through a linear map (zero at first) added to the token
    embeddings ``(B, *S, dim)``.

    :meth:`run` takes ``step(previous) -> logits`` (``previous`` those probabilities, or None: none shown). In
    training, half of the calls (a :func:`~multigen.diffusion.host_coin`) first run a pass without gradient and
    show its probabilities to the second; the others show none. In evaluation every call runs both passes, so the
    model stays a function of ``(x_t, t)`` (its bound and samplers are the plain ones) for twice the network calls.
    """

    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.project = nn.Linear(vocab, dim, bias=False)
        nn.init.zeros_(self.project.weight)

    def run(self, step: Callable[[Tensor | None], Tensor]) -> Tensor:
        previous = None
        if not self.training or host_coin(0.5):
            with torch.no_grad():
                previous = step(None).float().softmax(-1)
        return step(previous)

    def forward(self, h: Tensor, previous: Tensor | None) -> Tensor:
        """``h`` plus the projected estimate; with none shown, of zeros (so that the map takes part in every step,
        as distributed training needs: a map left out on some steps stalls DDP's gradient reduction)."""
        if previous is None:
            previous = h.new_zeros(*h.shape[:-1], self.project.in_features)
        return h + self.project(previous.to(h.dtype))


def run_self_conditioned(module: SelfCondition | None, step: Callable[[Tensor | None], Tensor]) -> Tensor:
    """``step(previous) -> logits`` as :meth:`SelfCondition.run` runs it, or once with no estimate for a network built
    without self-conditioning (``module`` None)."""
    return step(None) if module is None else module.run(step)


def embed_time(embedding: TimestepEmbedding | None, t: Tensor, timesteps: int, dim: int) -> Tensor:
    """The ``(B, dim)`` embedding of times ``t`` ``(B,)`` in ``(0, timesteps]`` (integer or float); with no
    ``embedding`` (a model built without time conditioning), zeros whatever ``t``: the layers it feeds then learn
    one scale and shift of their own, from their biases."""
    if embedding is None:
        return t.new_zeros(len(t), dim, dtype=torch.get_default_dtype())
    return embedding(t.float() / timesteps)


class TransformerBlock(nn.Module):
    """Pre-norm bidirectional self-attention + MLP (``mlp``: ``"gelu"`` or ``"swiglu"``), modulated (scale, shift,
    gate) by the time embedding."""

    def __init__(self, dim: int, heads: int, dropout: float, mlp: str = "gelu") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = Attention(dim, heads)
        self.mlp = {"gelu": FeedForward, "swiglu": GatedFeedForward}[mlp](dim, dropout=dropout)
        self.modulation = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, emb: Tensor, bias: Tensor | None,
                rotary: tuple[Tensor, Tensor] | None = None) -> Tensor:
        s1, b1, g1, s2, b2, g2 = self.modulation(emb)[:, None].chunk(6, dim=-1)
        x = x + (1 + g1) * self.dropout(self.attn(self.norm1(x) * (1 + s1) + b1, bias, rotary=rotary))
        return x + (1 + g2) * self.mlp(self.norm2(x) * (1 + s2) + b2)


class SequenceTransformer(nn.Module):
    """Bidirectional transformer over sequences: ``(B, L)`` tokens -> ``(B, L, vocab)`` logits.

    Positions enter twice: learned absolute embeddings, or with ``rotary=True`` (the text default's) each head's
    queries and keys turned by their positions (rotary embeddings); and a learned per-head, per-block attention bias
    for each token offset (T5-style), initialised to favour near neighbours, which makes character-level context
    usable after few steps. ``relative_bias=False`` drops the bias (with rotary positions and no causal mask, SDPA may
    then take its flash kernel). Any ``L <= max_length`` works. ``causal=True`` masks attention to later positions
    (the autoregressive baseline of the same size: position i then sees tokens 0..i only). ``mlp`` is each block's
    MLP: ``"gelu"``, or ``"swiglu"`` (gated, about the same parameters).
    """

    def __init__(self, vocab: int, max_length: int, timesteps: int, dim: int = 256, depth: int = 6,
                 heads: int = 4, dropout: float = 0.0, causal: bool = False, known_flag: bool = False,
                 mlp: str = "gelu", time_conditioning: bool = True, self_condition: bool = False,
                 rotary: bool = False, relative_bias: bool = True, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.timesteps, self.dim, self.causal, self.max_length = timesteps, dim, causal, max_length
        self.checkpointing = gradient_checkpointing
        self.tokens = nn.Embedding(vocab, dim)
        self.known = KnownFlag(dim, known_flag)
        self.positions = None if rotary else nn.Parameter(torch.randn(max_length, dim) * 0.02)
        self.rotary = rotary
        self.time = TimestepEmbedding(dim) if time_conditioning else None
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, dropout, mlp) for _ in range(depth))
        offsets = torch.arange(-(max_length - 1), max_length).abs().float()
        self.relative_bias = (nn.Parameter(-2.0 * offsets.log1p().expand(depth, heads, -1).clone())
                              if relative_bias else None)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.self_condition = SelfCondition(vocab, dim) if self_condition else None  # last: the others' draws stay

    def forward(self, x: Tensor, t: Tensor, known: Tensor | None = None) -> Tensor:
        L = x.shape[1]
        if L > self.max_length:
            raise ValueError(f"sequence of {L} tokens exceeds the model's maximum length {self.max_length}")
        positions = self._positions(L, x.device)  # built once, shared by a self-conditioned model's two passes
        return run_self_conditioned(self.self_condition,
                                    lambda previous: self._logits(x, t, known, previous, positions))

    def _logits(self, x: Tensor, t: Tensor, known: Tensor | None, previous: Tensor | None,
                positions: tuple[tuple[Tensor, Tensor] | None, list[Tensor | None]]) -> Tensor:
        L = x.shape[1]
        h = self.known(self.tokens(x), known)
        if self.positions is not None:
            h = h + self.positions[:L]
        if self.self_condition is not None:
            h = self.self_condition(h, previous)
        emb = embed_time(self.time, t, self.timesteps, self.dim)
        rotary, biases = positions
        for block, bias in zip(self.blocks, biases):
            h = run_block(block, h, emb, bias, rotary, checkpointed=self.checkpointing)
        return self.head(self.norm(h))

    def _positions(self, L: int, device: torch.device) -> tuple[tuple[Tensor, Tensor] | None, list[Tensor | None]]:
        """The positional inputs of attention over ``L`` tokens: the rotary tables (None without rotary positions)
        and each block's attention bias ``(heads, L, L)`` (or ``(L, L)``, or None), its relative-position bias with
        ``-inf`` on keys after their query when causal."""
        idx = torch.arange(L, device=device)
        rotary = rotary_tables(idx, self.blocks[0].attn.head_dim) if self.rotary else None
        later = idx[None, :] > idx[:, None] if self.causal else None  # (L, L): key after query
        if self.relative_bias is None:
            mask = None if later is None else torch.zeros(L, L, device=device).masked_fill(later, float("-inf"))
            return rotary, [mask] * len(self.blocks)
        offset = idx[None, :] - idx[:, None] + self.max_length - 1  # (L, L) into the bias table
        return rotary, [table[:, offset] if later is None else table[:, offset].masked_fill(later, float("-inf"))
                        for table in self.relative_bias]


class GridUNet(nn.Module):
    """Small 2-D U-Net over token grids: ``(B, H, W)`` tokens -> ``(B, H, W, vocab)`` logits.

    Token embeddings are the input channels; one downsampling level (``H``, ``W`` even).
    """

    def __init__(self, vocab: int, timesteps: int, base: int = 64, blocks: int = 2, known_flag: bool = False,
                 time_conditioning: bool = True, self_condition: bool = False,
                 gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.timesteps, self.checkpointing = timesteps, gradient_checkpointing
        emb_dim = self.emb_dim = 4 * base
        self.time = TimestepEmbedding(emb_dim) if time_conditioning else None
        self.tokens = nn.Embedding(vocab, base)
        self.known = KnownFlag(base, known_flag)
        self.down = nn.ModuleList(ResBlock(base, base, emb_dim) for _ in range(blocks))
        self.pool = nn.Conv2d(base, 2 * base, 3, stride=2, padding=1)
        self.mid = nn.ModuleList(ResBlock(2 * base, 2 * base, emb_dim) for _ in range(blocks))
        self.up = nn.ConvTranspose2d(2 * base, base, 2, stride=2)
        self.out_blocks = nn.ModuleList(ResBlock(2 * base if i == 0 else base, base, emb_dim) for i in range(blocks))
        self.head = nn.Sequential(group_norm(base), nn.SiLU(), nn.Conv2d(base, vocab, 1))
        self.self_condition = SelfCondition(vocab, base) if self_condition else None

    def forward(self, x: Tensor, t: Tensor, known: Tensor | None = None) -> Tensor:
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(f"grid {tuple(x.shape[-2:])} must have even height and width")
        return run_self_conditioned(self.self_condition, lambda previous: self._logits(x, t, known, previous))

    def _logits(self, x: Tensor, t: Tensor, known: Tensor | None, previous: Tensor | None) -> Tensor:
        emb = embed_time(self.time, t, self.timesteps, self.emb_dim)
        h = self.known(self.tokens(x), known)
        if self.self_condition is not None:
            h = self.self_condition(h, previous)
        h = h.permute(0, 3, 1, 2)
        for block in self.down:
            h = run_block(block, h, emb, checkpointed=self.checkpointing)
        skip, h = h, self.pool(h)
        for block in self.mid:
            h = run_block(block, h, emb, checkpointed=self.checkpointing)
        h = torch.cat([skip, self.up(h)], dim=1)
        for block in self.out_blocks:
            h = run_block(block, h, emb, checkpointed=self.checkpointing)
        return self.head(h).permute(0, 2, 3, 1)
