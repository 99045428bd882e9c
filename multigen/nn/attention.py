"""Multi-head attention that dispatches to xformers on CUDA when installed, else to PyTorch SDPA."""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def xformers_available() -> bool:
    """True when ``xformers`` can be imported."""
    return importlib.util.find_spec("xformers") is not None


_XFORMERS = xformers_available()


def attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, fold_bias: bool = False) -> Tensor:
    """Softmax attention ``softmax(q k^T / sqrt(D) + bias) v``.

    Shapes: ``q`` ``(..., H, Lq, D)``, ``k``/``v`` ``(..., H, Lk, D)``, ``bias``
    broadcastable to ``(..., H, Lq, Lk)`` (additive; ``-inf`` masks a key). Any number of
    leading batch dimensions: without a bias they are flattened into one, as SDPA's fused
    (flash, memory-efficient) kernels want 4-D tensors; a bias that broadcasts over them is never
    materialised on the SDPA path (which then runs its math kernel for more than 4 dimensions).

    ``fold_bias`` (a finite bias only: ``-inf`` would give NaN) appends ``Lq`` channels to each head,
    ``q_i -> [q_i, e_i]`` and ``k_j -> [k_j, sqrt(D) bias[:, j]]``, so that ``q' k'^T / sqrt(D)`` is
    ``q k^T / sqrt(D) + bias``: the same attention as one bias-free call on 4-D tensors, which SDPA can
    run with its flash kernel (it takes no bias). Worth it for short sequences with many batch
    entries (attention across frames); it copies q, k, v with ``Lq`` (rounded up to 8) more channels.

    Uses ``xformers.ops.memory_efficient_attention`` for CUDA tensors when xformers
    is installed, otherwise ``torch.nn.functional.scaled_dot_product_attention``.
    """
    value_dim, scale = v.shape[-1], q.shape[-1] ** -0.5
    if bias is not None and fold_bias:
        q, k, v = _fold_bias(q, k, v, bias, scale)
        bias = None
    lead = q.shape[:-3]
    if bias is None:
        q, k, v = (t.reshape(-1, *t.shape[-3:]) for t in (q, k, v))
    if _XFORMERS and q.is_cuda:
        import xformers.ops as xops

        q, k, v = (t.reshape(-1, *t.shape[-3:]) for t in (q, k, v))
        B, H, Lq, _ = q.shape
        attn_bias = None
        if bias is not None:
            # xformers wants a materialised bias whose last dim is 8-aligned in memory.
            Lk = k.shape[2]
            full = torch.zeros(B, H, Lq, Lk + (-Lk) % 8, device=q.device, dtype=q.dtype)
            attn_bias = full[..., :Lk].copy_(bias.expand(*lead, H, Lq, Lk).reshape(B, H, Lq, Lk))
        out = xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=attn_bias, scale=scale
        ).transpose(1, 2)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype),
                                             scale=scale)
    return out.reshape(*lead, *out.shape[-3:])[..., :value_dim]


def rotary_tables(positions: Tensor, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """Cosines and sines ``(*P, head_dim // 2)`` of rotary position embeddings (Su et al., 2021) for ``positions``
    ``(*P)`` (integer or not): position ``p`` turns channel pair ``j`` by the angle
    ``p * base ** (-2 j / head_dim)``."""
    if head_dim % 2:
        raise ValueError(f"rotary positions need an even head size, got {head_dim}")
    freqs = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * freqs
    return angles.cos(), angles.sin()


def rotate(x: Tensor, tables: tuple[Tensor, Tensor]) -> Tensor:
    """``x`` ``(..., L, D)`` with each channel pair ``(x[2j], x[2j+1])`` of position ``i`` turned by the angle of
    :func:`rotary_tables` (broadcastable to ``(..., L, D // 2)``): ``<rotate(q)_i, rotate(k)_j>`` then depends on the
    positions' difference alone."""
    cos, sin = (t.to(x.dtype) for t in tables)
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def _fold_bias(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """``q``, ``k``, ``v`` with ``bias`` folded into extra head channels (see :func:`attention`), each
    ``(*batch, L, D + Lq + pad)`` with ``batch`` the broadcast of their and the bias's leading dims."""
    (Lq, D), Lk = q.shape[-2:], k.shape[-2]
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], bias.shape[:-2])
    pad = -(D + Lq) % 8  # fused kernels want head sizes in multiples of 8

    def widen(x: Tensor, extra: Tensor) -> Tensor:
        L = x.shape[-2]
        zeros = x.new_zeros(()).expand(*batch, L, pad)
        return torch.cat([x.expand(*batch, L, D), extra.expand(*batch, L, Lq), zeros], dim=-1)

    eye = torch.eye(Lq, device=q.device, dtype=q.dtype)
    keys = (bias / scale).to(k.dtype).transpose(-1, -2)  # (..., Lk, Lq): row j holds sqrt(D) bias[:, j]
    return widen(q, eye), widen(k, keys), F.pad(v.expand(*batch, Lk, v.shape[-1]), (0, D + Lq + pad - v.shape[-1]))


class Attention(nn.Module):
    """Multi-head self-attention over sequences ``(..., L, dim)`` -> ``(..., L, dim)``.

    ``bias`` (e.g. a relative-position bias) is added to the logits, shape
    broadcastable to ``(..., heads, L, L)``; ``fold_bias`` folds it into the heads (see :func:`attention`).
    ``rotary`` (the tables of :func:`rotary_tables`) turns queries and keys by their positions.
    """

    def __init__(self, dim: int, heads: int = 4, head_dim: int | None = None) -> None:
        super().__init__()
        head_dim = head_dim or dim // heads
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.out = nn.Linear(heads * head_dim, dim)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys, values of ``x`` ``(..., L, dim)``, each ``(..., heads, L, head_dim)`` (one fused matmul)."""
        *lead, L, _ = x.shape
        qkv = self.qkv(x).view(*lead, L, 3, self.heads, self.head_dim)
        q, k, v = qkv.movedim(-3, 0).transpose(-2, -3)
        return q, k, v

    def merge(self, out: Tensor) -> Tensor:
        """Heads ``(..., heads, L, head_dim)`` back to ``(..., L, dim)`` through the output projection."""
        return self.out(out.transpose(-2, -3).flatten(-2))

    def forward(self, x: Tensor, bias: Tensor | None = None, fold_bias: bool = False,
                rotary: tuple[Tensor, Tensor] | None = None) -> Tensor:
        q, k, v = self.project(x)
        if rotary is not None:
            q, k = rotate(q, rotary), rotate(k, rotary)
        return self.merge(attention(q, k, v, bias, fold_bias))
