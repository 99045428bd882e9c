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


def attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """Softmax attention ``softmax(q k^T / sqrt(d) + bias) v``.

    Shapes: ``q`` ``(..., H, Lq, D)``, ``k``/``v`` ``(..., H, Lk, D)``, ``bias``
    broadcastable to ``(..., H, Lq, Lk)`` (additive; ``-inf`` masks a key). Any number of
    leading batch dimensions; a bias that broadcasts over them is never materialised
    on the SDPA path.
    Uses ``xformers.ops.memory_efficient_attention`` for CUDA tensors when xformers
    is installed, otherwise ``torch.nn.functional.scaled_dot_product_attention``.
    """
    if _XFORMERS and q.is_cuda:
        import xformers.ops as xops

        lead = q.shape[:-3]
        q, k, v = (t.reshape(-1, *t.shape[-3:]) for t in (q, k, v))
        B, H, Lq, _ = q.shape
        attn_bias = None
        if bias is not None:
            # xformers wants a materialised bias whose last dim is 8-aligned in memory.
            Lk = k.shape[2]
            full = torch.zeros(B, H, Lq, Lk + (-Lk) % 8, device=q.device, dtype=q.dtype)
            attn_bias = full[..., :Lk].copy_(bias.expand(*lead, H, Lq, Lk).reshape(B, H, Lq, Lk))
        out = xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=attn_bias
        )
        return out.transpose(1, 2).reshape(*lead, H, Lq, -1)
    if bias is not None:
        bias = bias.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


class Attention(nn.Module):
    """Multi-head self-attention over sequences ``(..., L, dim)`` -> ``(..., L, dim)``.

    ``bias`` (e.g. a relative-position bias) is added to the logits, shape
    broadcastable to ``(..., heads, L, L)``.
    """

    def __init__(self, dim: int, heads: int = 4, head_dim: int | None = None) -> None:
        super().__init__()
        head_dim = head_dim or dim // heads
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.out = nn.Linear(heads * head_dim, dim)

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        *lead, L, _ = x.shape
        qkv = self.qkv(x).view(*lead, L, 3, self.heads, self.head_dim)
        q, k, v = qkv.movedim(-3, 0).transpose(-2, -3)  # each (..., heads, L, head_dim)
        out = attention(q, k, v, bias)
        return self.out(out.transpose(-2, -3).reshape(*lead, L, self.heads * self.head_dim))
