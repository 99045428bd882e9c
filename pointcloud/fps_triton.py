"""Farthest point sampling as one Triton kernel: one program per cloud, the whole loop over picks inside it.

:func:`pointcloud.ops.farthest_point_sample` dispatches here for float32 clouds on CUDA when Triton is
importable; the PyTorch loop :func:`~pointcloud.ops.farthest_point_sample_torch` stays the reference this
kernel is tested equal to (under ``TRITON_INTERPRET=1`` on a CPU, and on CUDA when present).

Exactness: each distance is computed as the reference computes ``((xyz - p) ** 2).sum(-1)`` in float32 on
the CPU, ``(dx * dx + dy * dy) + dz * dz`` with no fused multiply-add (``enable_fp_fusion=False``), and the
running minimum is taken the same way, so the distances are bit-identical and so are the picks. A tie goes
to the lowest index, as ``torch.argmax`` does: the arg-max is one integer max over keys made of the
distance's bits (order-preserving for non-negative floats) above the complemented index.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .ops import check_fps_args

MAX_BLOCK = 8192
"""Largest cloud whose coordinates and running distances stay in registers (16 per thread at 16 warps, about
110 registers each: 512 threads fit an SM's 64 K; at 16 384 they would spill); larger clouds loop over tiles
of this size, keeping the distances in a global scratch buffer."""


@triton.jit
def _fps(xyz_ptr, start_ptr, out_ptr, scratch_ptr, N, m, BLOCK: tl.constexpr, TILES: tl.constexpr):
    """Program ``b`` writes the ``m`` picks of cloud ``b`` (``xyz`` ``(B, N, 3)`` contiguous float32)."""
    b = tl.program_id(0).to(tl.int64)
    cloud = xyz_ptr + b * N * 3
    offs = tl.arange(0, BLOCK)
    cur = tl.load(start_ptr + b).to(tl.int32)
    if TILES == 1:
        valid = offs < N
        x = tl.load(cloud + offs * 3, mask=valid, other=0.0)
        y = tl.load(cloud + offs * 3 + 1, mask=valid, other=0.0)
        z = tl.load(cloud + offs * 3 + 2, mask=valid, other=0.0)
        nearest = tl.where(valid, float("inf"), -1.0)  # padding never wins (distances are >= 0)
        for i in range(m):
            tl.store(out_ptr + b * m + i, cur.to(tl.int64))
            dx = x - tl.load(cloud + cur * 3)
            dy = y - tl.load(cloud + cur * 3 + 1)
            dz = z - tl.load(cloud + cur * 3 + 2)
            nearest = tl.minimum(nearest, (dx * dx + dy * dy) + dz * dz)
            # key: distance bits (monotone for floats >= 0, negative for the padding) over BLOCK - 1 - index
            key = (nearest.to(tl.int32, bitcast=True).to(tl.int64) << 32) | (BLOCK - 1 - offs).to(tl.int64)
            cur = BLOCK - 1 - tl.max(key, 0).to(tl.int32)  # the low 32 bits
    else:
        scratch = scratch_ptr + b * N  # running distances, +inf at launch
        for i in range(m):
            tl.store(out_ptr + b * m + i, cur.to(tl.int64))
            px = tl.load(cloud + cur * 3)
            py = tl.load(cloud + cur * 3 + 1)
            pz = tl.load(cloud + cur * 3 + 2)
            best = tl.full([], -1, tl.int64)
            for t in range(TILES):
                idx = t * BLOCK + offs
                valid = idx < N
                dx = tl.load(cloud + idx * 3, mask=valid, other=0.0) - px
                dy = tl.load(cloud + idx * 3 + 1, mask=valid, other=0.0) - py
                dz = tl.load(cloud + idx * 3 + 2, mask=valid, other=0.0) - pz
                near = tl.minimum(tl.load(scratch + idx, mask=valid, other=-1.0), (dx * dx + dy * dy) + dz * dz)
                tl.store(scratch + idx, near, mask=valid)
                key = (near.to(tl.int32, bitcast=True).to(tl.int64) << 32) | (N - 1 - idx).to(tl.int64)
                key = tl.where(valid, key, -1)
                best = tl.maximum(best, tl.max(key, 0))
            cur = N - 1 - best.to(tl.int32)


def farthest_point_sample_triton(xyz: Tensor, m: int, start: Tensor | None = None,
                                 max_block: int = MAX_BLOCK) -> Tensor:
    """Indices ``(B, m)`` (int64) of farthest point sampling of float32 ``xyz`` ``(B, N, 3)`` from ``start``
    ``(B,)`` (default 0), equal to :func:`pointcloud.ops.farthest_point_sample_torch`.

    Runs on CUDA, or on CPU tensors when ``TRITON_INTERPRET=1`` was set before Triton was imported. Clouds
    of more than ``max_block`` points (a power of two) are swept in tiles of that size, their running
    distances in global memory.
    """
    check_fps_args(xyz, m, start)
    B, N, _ = xyz.shape
    if xyz.dtype != torch.float32:
        raise TypeError(f"the Triton farthest point sampling takes float32 clouds, got {xyz.dtype}")
    if N >= 2**31:
        raise ValueError(f"the Triton farthest point sampling takes clouds of fewer than 2**31 points, got {N}")
    xyz = xyz.contiguous()
    start = torch.zeros(B, dtype=torch.long, device=xyz.device) if start is None else start.to(torch.long)
    out = torch.empty(B, m, dtype=torch.long, device=xyz.device)
    block = min(triton.next_power_of_2(N), max_block)
    tiles = triton.cdiv(N, block)
    scratch = torch.full((B, N), float("inf"), dtype=xyz.dtype, device=xyz.device) if tiles > 1 else xyz  # unused
    num_warps = 4 if block <= 1024 else 8 if block <= 4096 else 16
    _fps[(B,)](
        xyz, start.contiguous(), out, scratch, N, m, BLOCK=block, TILES=tiles, num_warps=num_warps,
        enable_fp_fusion=False,
    )
    return out
