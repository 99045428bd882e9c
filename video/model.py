"""Factorised space-time U-Net for masked video diffusion.

Shapes: clips are ``(B, T, C, H, W)``; ``t`` is the diffusion time in ``[0, 1]``, ``(B,)`` (one level per clip)
or ``(B, T)`` (one per frame: diffusion forcing, observed frames at 0);
``cond`` packs the conditioning as ``(B, T, C + 1, H, W)`` = ``[mask * x0, mask]``
(observed clean frames and a per-frame observed flag; all zeros = unconditional), or
``(B, T, 2C + 1, H, W)`` with the residual's reference frames appended (``reference_input``);
``frame_index`` ``(B, T)`` holds the frames' actual positions in the video, so the
temporal attention sees real distances between frames (keyframes far apart, a
sliding window) rather than slot numbers.

Every spatial layer (convolutions, GroupNorm, spatial attention, resampling) works
on each frame separately; frames only exchange information through temporal
attention, which runs at every resolution with a relative-position bias that is a
function of frame-index differences only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from multigen.nn import (Attention, ResBlock, TimestepEmbedding, attention, group_norm, rotary_tables, rotate,
                         run_block)

RotaryTables = dict[int, tuple[Tensor, Tensor]]  # head size -> cosines and sines (B, 1, 1, T, head size // 2)


def frame_distances(frame_index: Tensor) -> Tensor:
    """Signed log distances ``sign(d) log(1 + |d|)`` of ``d = j - i``: ``(B, T)`` -> ``(B, T, T, 1)``."""
    d = (frame_index[:, None, :] - frame_index[:, :, None]).float()
    return (torch.sign(d) * torch.log1p(d.abs()))[..., None]


class RelativeFrameBias(nn.Module):
    """Attention bias per head from frame distances (see :func:`frame_distances`).

    An MLP of the signed log distance, so that distances never seen in training
    (keyframes far apart) still get a sensible, smoothly extrapolated bias.
    ``(B, T, T, 1)`` -> ``(B, heads, T, T)``.
    """

    def __init__(self, heads: int, hidden: int = 32) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, heads))

    def forward(self, distances: Tensor) -> Tensor:
        return self.mlp(distances.to(self.mlp[0].weight.dtype)).permute(0, 3, 1, 2)


class SpatialAttention(nn.Module):
    """Self-attention over the ``H * W`` positions of each frame: ``(N, C, H, W) -> (N, C, H, W)``."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.attn = Attention(channels, heads)
        nn.init.zeros_(self.attn.out.weight)
        nn.init.zeros_(self.attn.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w = x.shape
        seq = rearrange(self.norm(x), "n c h w -> n (h w) c")
        return x + rearrange(self.attn(seq), "n (h w) c -> n c h w", h=h, w=w)


class TemporalAttention(nn.Module):
    """Self-attention across the frames at every spatial position, with its own relative frame bias.

    ``x`` is ``(B * T, C, H, W)``; ``distances`` ``(B, T, T, 1)`` the frames' :func:`frame_distances` and
    ``tables`` None or the rotary tables of their positions by head size (each ``(B, 1, 1, T, head_size // 2)``;
    both computed once per network call, see :meth:`SpaceTimeUNet.frame_encodings`); ``independent`` bool
    ``(B,)`` or None: True makes a clip's frames attend only to themselves, whose attention is then exactly each
    frame's own value (no mask is built: SDPA keeps its fused kernels). ``fold_bias`` runs the biased attention as
    one bias-free 4-D call (see :func:`multigen.nn.attention`). Given ``tables``, queries and keys are also turned
    by the frames' positions (rotary embeddings, beside the bias).
    """

    def __init__(self, channels: int, heads: int, fold_bias: bool = False) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.attn = Attention(channels, heads)
        self.bias = RelativeFrameBias(heads)
        self.fold_bias = fold_bias
        nn.init.zeros_(self.attn.out.weight)
        nn.init.zeros_(self.attn.out.bias)

    def forward(self, x: Tensor, distances: Tensor, tables: RotaryTables | None,
                independent: Tensor | None) -> Tensor:
        b = distances.shape[0]
        h, w = x.shape[-2:]
        seq = rearrange(self.norm(x), "(b t) c h w -> b (h w) t c", b=b)
        q, k, v = self.attn.project(seq)  # each (b, h*w, heads, t, head_dim)
        if tables is not None:
            q, k = rotate(q, tables[q.shape[-1]]), rotate(k, tables[q.shape[-1]])
        bias = self.bias(distances).to(x.dtype)[:, None]  # (b, 1, heads, t, t): broadcast over positions
        out = attention(q, k, v, bias, self.fold_bias)
        if independent is not None:
            out = torch.where(independent.view(b, 1, 1, 1, 1), v, out)
        return x + rearrange(self.attn.merge(out), "b (h w) t c -> (b t) c h w", h=h, w=w)


class Level(nn.Module):
    """ResBlocks at one resolution, each followed by optional spatial and temporal attention. With
    ``checkpointing``, each block's activations are recomputed in the backward pass (:func:`multigen.nn.run_block`)."""

    def __init__(
        self, in_ch: int, out_ch: int, emb_dim: int, blocks: int, spatial: bool, temporal: bool, head_channels: int,
        dropout: float, fold_bias: bool = False, checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.checkpointing = checkpointing
        heads = max(1, out_ch // head_channels)
        self.res = nn.ModuleList(
            ResBlock(in_ch if i == 0 else out_ch, out_ch, emb_dim, dims=2, dropout=dropout) for i in range(blocks)
        )
        self.spatial = nn.ModuleList(SpatialAttention(out_ch, heads) if spatial else nn.Identity()
                                     for _ in range(blocks))
        self.temporal = (nn.ModuleList(TemporalAttention(out_ch, heads, fold_bias) for _ in range(blocks))
                         if temporal else None)

    def forward(self, x: Tensor, emb: Tensor, distances: Tensor, tables: RotaryTables | None,
                independent: Tensor | None) -> Tensor:
        for i in range(len(self.res)):
            x = run_block(self.block, i, x, emb, distances, tables, independent, checkpointed=self.checkpointing)
        return x

    def block(self, i: int, x: Tensor, emb: Tensor, distances: Tensor, tables: RotaryTables | None,
              independent: Tensor | None) -> Tensor:
        """The ``i``-th ResBlock and its attention layers."""
        x = self.spatial[i](self.res[i](x, emb))
        return x if self.temporal is None else self.temporal[i](x, distances, tables, independent)


class SpaceTimeUNet(nn.Module):
    """U-Net over clips: 2-D layers per frame, attention across frames at every resolution.

    Args:
        channels: image channels ``C`` of the clips.
        base: channels of the first level; level ``i`` has ``base * mults[i]``.
        mults: channel multipliers, one per resolution (each after the first halves H and W).
        blocks: ResBlocks per level (the decoder uses one more, for the skip connection).
        attn_levels: indices of the levels with spatial self-attention (low resolutions).
        head_channels: channels per attention head (a level of C channels has C // head_channels heads).
        temporal_attention: False gives a per-frame image model (for ablations and tests).
        channels_last: run the per-frame layers on channels-last activations (NHWC in memory: the
            fast layout of bf16 convolutions on GPUs; the spatial attention's reshapes become views).
            Same weights and state dict; outputs equal up to floating-point rounding.
        fold_frame_bias: run the temporal attention as one bias-free 4-D call, its relative frame
            bias folded into the heads, so SDPA can use its flash kernel (see :func:`multigen.nn.attention`).
            Same weights; equal up to rounding.
        gradient_checkpointing: recompute each block's activations in the backward pass instead of keeping
            them (see :class:`Level`): less memory in training, the same weights and gradients.
        reference_input: ``cond`` also carries the reference frames a residual model's output is added to
            (``C`` more input channels).
        self_condition: the network also sees an earlier estimate of its clean target (``previous``,
            ``C`` more input channels; self-conditioning, Chen et al., 2023).
        rotary: the temporal attention also turns queries and keys by the frames' positions (rotary
            embeddings, beside the relative frame bias).
        residual, reference, residual_scale: how a sampler reads the output (``model.residual`` and the rest
            of its config: the residual to a reference of the observed frames, scaled), kept here so that
            :func:`video.sampling.generate` takes them from the network; ``forward`` does not use them.
    """

    def __init__(
        self,
        channels: int = 1,
        base: int = 64,
        mults: tuple[int, ...] = (1, 2, 2),
        blocks: int = 1,
        attn_levels: tuple[int, ...] = (2,),
        head_channels: int = 32,
        dropout: float = 0.0,
        temporal_attention: bool = True,
        channels_last: bool = False,
        fold_frame_bias: bool = False,
        gradient_checkpointing: bool = False,
        reference_input: bool = False,
        self_condition: bool = False,
        rotary: bool = False,
        residual: bool = False,
        reference: str = "nearest",
        residual_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.channels, self.channels_last, self.self_condition = channels, channels_last, self_condition
        self.reference_input, self.residual, self.reference, self.residual_scale = (reference_input, residual,
                                                                                    reference, residual_scale)
        self.cond_channels = (2 if reference_input else 1) * channels + 1
        emb_dim = base * 4
        self.time_embed = TimestepEmbedding(emb_dim)
        self.inp = nn.Conv2d((2 if self_condition else 1) * channels + self.cond_channels, base, 3, padding=1)
        widths = [base * m for m in mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        ch = base
        for i, w in enumerate(widths):
            self.down.append(Level(ch, w, emb_dim, blocks, i in attn_levels, temporal_attention, head_channels, dropout,
                                   fold_frame_bias, gradient_checkpointing))
            ch = w
            last = i == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(w, w, 3, stride=2, padding=1))
        self.mid = Level(ch, ch, emb_dim, 2, True, temporal_attention, head_channels, dropout, fold_frame_bias,
                         gradient_checkpointing)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            self.up.append(Level(ch + w, w, emb_dim, blocks + 1, i in attn_levels, temporal_attention, head_channels,
                                 dropout, fold_frame_bias, gradient_checkpointing))
            ch = w
            self.upsample.append(nn.Identity() if i == 0 else nn.Conv2d(w, w, 3, padding=1))
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.rotary_sizes = sorted({m.attn.head_dim for m in self.modules() if isinstance(m, TemporalAttention)}
                                   if rotary else ())

    def frame_encodings(self, frame_index: Tensor) -> tuple[Tensor, RotaryTables | None]:
        """What every temporal attention layer needs of the frames' positions ``(B, T)``, computed once per call:
        their :func:`frame_distances` ``(B, T, T, 1)`` and, with ``rotary``, the rotary tables of every head size
        used, each ``(B, 1, 1, T, head_size // 2)`` (None without)."""
        tables = {d: tuple(t[:, None, None] for t in rotary_tables(frame_index, d)) for d in self.rotary_sizes}
        return frame_distances(frame_index), tables or None

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        cond: Tensor | None = None,
        frame_index: Tensor | None = None,
        independent_frames: Tensor | None = None,
        previous: Tensor | None = None,
    ) -> Tensor:
        """Predict the diffusion target for every frame.

        Args:
            x: noisy clips ``(B, T, C, H, W)``.
            t: diffusion time in ``[0, 1]``: ``(B,)``, or ``(B, T)`` for a level per frame.
            cond: ``(B, T, C + 1, H, W)`` = ``[mask * x0, mask]``, with ``reference_input``
                ``(B, T, 2C + 1, H, W)`` = ``[mask * x0, mask, reference]``; None = unconditional.
            frame_index: ``(B, T)`` frame positions; None = ``0..T-1``.
            independent_frames: ``(B,)`` bool; True makes that clip a batch of
                independent images (temporal attention sees only the frame itself).
            previous: with ``self_condition``, an earlier x0 estimate ``(B, T, C, H, W)`` of the clean target
                (None: none yet, zeros).

        Returns:
            ``(B, T, C, H, W)``.
        """
        B, T, C, H, W = x.shape
        if cond is None:
            cond = x.new_zeros(B, T, self.cond_channels, H, W)
        if frame_index is None:
            frame_index = torch.arange(T, device=x.device).expand(B, T)
        frames = self.frame_encodings(frame_index)
        emb = self.time_embed(t.reshape(-1)) if t.ndim == 2 else self.time_embed(t).repeat_interleave(T, dim=0)
        parts = [x, cond.to(x.dtype)]
        if self.self_condition:
            parts.append(torch.zeros_like(x) if previous is None else previous.to(x.dtype))
        elif previous is not None:
            raise ValueError("an earlier estimate (previous) is shown only to a network built with self_condition")

        h = rearrange(torch.cat(parts, dim=2), "b t c h w -> (b t) c h w")
        h = self.inp(h.contiguous(memory_format=torch.channels_last) if self.channels_last else h)
        skips = []
        for level, down in zip(self.down, self.downsample):
            h = level(h, emb, *frames, independent_frames)
            skips.append(h)
            h = down(h)
        h = self.mid(h, emb, *frames, independent_frames)
        for level, up in zip(self.up, self.upsample):
            h = level(torch.cat([h, skips.pop()], dim=1), emb, *frames, independent_frames)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return rearrange(self.out(h), "(b t) c h w -> b t c h w", b=B)
