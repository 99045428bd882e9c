"""PVCNN-style point-voxel U-Net denoiser (as in Point-Voxel Diffusion), in pure PyTorch.

Shapes: a cloud is ``(B, N, 3)``; inside the network features are channels-first
``(B, C, N)``. ``t`` is the diffusion time ``(B,)`` in ``[0, 1]``. The network
predicts a per-point target ``(B, N, 3)``.

Structure: set-abstraction stages (PVConv blocks on the current points, then
farthest-point centres, ball-query grouping and a shared MLP with max-pooling)
followed by feature-propagation stages (inverse-distance interpolation from the
coarse points, a shared MLP, PVConv blocks) back to every input point. The time
embedding is added to the features of every block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from multigen.nn import Attention, TimestepEmbedding, group_norm, run_block

from .ops import Voxelization, ball_query, farthest_point_sample, gather_points, group, knn, voxelization


class SqueezeExcite3d(nn.Module):
    """Channel re-weighting from the grid's mean features: ``(B, C, R, R, R)`` -> same."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.fc(x.mean(dim=(2, 3, 4)))[:, :, None, None, None]


class SelfAttention(nn.Module):
    """Residual single-head self-attention over the positions of ``(B, C, *S)`` (the voxels of a grid or the points
    of a cloud) -> same shape: PVD's attention block, pre-normalised, its output projection zero at start."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, 8)
        self.attn = Attention(channels, heads=1)
        nn.init.zeros_(self.attn.out.weight)
        nn.init.zeros_(self.attn.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.attn(self.norm(x).flatten(2).transpose(1, 2))  # (B, positions, C)
        return x + h.transpose(1, 2).reshape(x.shape)


class PointLevel:
    """One level of the U-Net's point hierarchy, ``xyz`` ``(B, N, 3)``, with its voxelizations: each is made
    once per forward and shared by every encoder and decoder block on these points at that resolution."""

    def __init__(self, xyz: Tensor) -> None:
        self.xyz = xyz
        self.coords = xyz.transpose(1, 2)  # (B, 3, N)
        self._voxels: dict[int, Voxelization] = {}

    def voxels(self, resolution: int) -> Voxelization:
        """The points' :class:`~pointcloud.ops.Voxelization` at ``resolution``, computed on first use."""
        if resolution not in self._voxels:
            self._voxels[resolution] = voxelization(self.coords, resolution)
        return self._voxels[resolution]


class PVConv(nn.Module):
    """Point-voxel convolution: a voxel branch (voxelize, 2x Conv3d-GroupNorm-Swish, SE,
    trilinear devoxelize) summed with a point branch (shared MLP).

    ``features`` ``(B, C_in, N)`` on the points of ``level``, ``emb`` ``(B, E)`` -> ``(B, C_out, N)``.
    """

    def __init__(self, in_ch: int, out_ch: int, resolution: int, emb_dim: int, attention: bool = False) -> None:
        super().__init__()
        self.resolution = resolution
        self.emb = nn.Linear(emb_dim, in_ch)
        self.voxel = nn.Sequential(
            nn.Conv3d(in_ch, out_ch, 3, padding=1), group_norm(out_ch, 8), nn.SiLU(),
            nn.Conv3d(out_ch, out_ch, 3, padding=1), group_norm(out_ch, 8), nn.SiLU(),
            *([SelfAttention(out_ch)] if attention else []),
            SqueezeExcite3d(out_ch),
        )
        self.point = nn.Sequential(nn.Conv1d(in_ch, out_ch, 1), group_norm(out_ch, 8), nn.SiLU())

    def forward(self, features: Tensor, level: PointLevel, emb: Tensor) -> Tensor:
        features = features + self.emb(emb)[:, :, None]
        voxels = level.voxels(self.resolution)
        return voxels.interpolate(self.voxel(voxels.average(features))) + self.point(features)


def shared_mlp(channels: list[int], dims: int = 1) -> nn.Sequential:
    """1x1 convolutions with GroupNorm and Swish between consecutive widths."""
    conv = nn.Conv1d if dims == 1 else nn.Conv2d
    layers: list[nn.Module] = []
    for a, b in zip(channels[:-1], channels[1:]):
        layers += [conv(a, b, 1), group_norm(b, 8), nn.SiLU()]
    return nn.Sequential(*layers)


@dataclass
class StageSpec:
    """One encoder stage: PVConv blocks, then set abstraction to ``centres`` points."""

    conv_channels: int
    conv_blocks: int
    resolution: int  # voxel resolution of the PVConv blocks (0: no PVConv)
    centres: int
    radius: float
    neighbours: int
    mlp: tuple[int, ...]
    attention: bool = False  # self-attention over the voxels of the first PVConv block


class SetAbstraction(nn.Module):
    """PVConv blocks on the input points, then FPS centres + ball-query grouping + MLP + max-pool. With
    ``checkpointing``, each PVConv block's activations are recomputed in the backward pass
    (:func:`multigen.nn.run_block`)."""

    def __init__(self, in_ch: int, spec: StageSpec, emb_dim: int, checkpointing: bool = False) -> None:
        super().__init__()
        self.spec, self.checkpointing = spec, checkpointing
        self.convs = nn.ModuleList()
        ch = in_ch
        if spec.resolution:
            for i in range(spec.conv_blocks):
                self.convs.append(PVConv(ch, spec.conv_channels, spec.resolution, emb_dim, spec.attention and i == 0))
                ch = spec.conv_channels
        self.emb = nn.Linear(emb_dim, ch)
        self.mlp = shared_mlp([ch + 3, *spec.mlp], dims=2)
        self.out_channels = spec.mlp[-1]

    def forward(self, features: Tensor, level: PointLevel, emb: Tensor) -> tuple[Tensor, PointLevel]:
        """``features`` ``(B, C, N)`` on ``level`` -> ``(B, C_out, centres)`` on the centres' level."""
        for conv in self.convs:
            features = run_block(conv, features, level, emb, checkpointed=self.checkpointing)
        s, xyz = self.spec, level.xyz
        centres = gather_points(xyz, farthest_point_sample(xyz, s.centres))
        idx = ball_query(centres, xyz, s.radius, s.neighbours)
        rel = group(level.coords, idx) - centres.transpose(1, 2)[..., None]
        grouped = torch.cat([rel / s.radius, group(features + self.emb(emb)[:, :, None], idx)], dim=1)
        return self.mlp(grouped).amax(dim=-1), PointLevel(centres)


class FeaturePropagation(nn.Module):
    """Interpolate coarse features to the fine points (3 nearest, inverse distance), concat the skip, MLP, PVConv
    (``checkpointing``: as in :class:`SetAbstraction`)."""

    def __init__(self, coarse_ch: int, skip_ch: int, mlp: tuple[int, ...], conv: tuple[int, int, int], emb_dim: int,
                 checkpointing: bool = False):
        super().__init__()
        self.checkpointing = checkpointing
        self.mlp = shared_mlp([coarse_ch + skip_ch, *mlp])
        ch, blocks, resolution = conv
        self.convs = nn.ModuleList(
            PVConv(mlp[-1] if i == 0 else ch, ch, resolution, emb_dim) for i in range(blocks)
        )
        self.out_channels = ch if blocks else mlp[-1]

    def forward(self, coarse: Tensor, coarse_xyz: Tensor, skip: Tensor, level: PointLevel, emb: Tensor) -> Tensor:
        """``coarse`` ``(B, C, M)`` at ``coarse_xyz`` ``(B, M, 3)``, ``skip`` ``(B, C_skip, N)`` on ``level``
        -> ``(B, C_out, N)``."""
        d, idx = knn(level.xyz, coarse_xyz, min(3, coarse_xyz.shape[1]))
        w = 1.0 / (d + 1e-8)
        w = w / w.sum(-1, keepdim=True)
        interp = (group(coarse, idx) * w[:, None]).sum(-1)
        features = self.mlp(torch.cat([interp, skip], dim=1))
        for conv in self.convs:
            features = run_block(conv, features, level, emb, checkpointed=self.checkpointing)
        return features


@dataclass
class PVCNNSpec:
    """Encoder stages and decoder (mlp, (conv channels, blocks, resolution)) per stage, coarse to fine."""

    stages: list[StageSpec]
    decoder: list[tuple[tuple[int, ...], tuple[int, int, int]]]
    emb_dim: int = 64
    global_attention: bool = False  # self-attention over the coarsest points, between encoder and decoder


def pvd_spec(width: float = 1.0, resolution: float = 1.0, points: int = 2048, attention: bool = False) -> PVCNNSpec:
    """PVD's layout for ``points`` input points, channels scaled by ``width``, voxel resolutions by ``resolution``;
    ``attention`` adds PVD's two attention blocks (over the voxels of the second stage's first block, and over the
    coarsest points).

    ``width = resolution = 1`` is Point-Voxel Diffusion's network (centres 1024/256/64/16
    at radii 0.1/0.2/0.4/0.8 for 2 048 points; voxel resolutions 32/16/8). For other point
    counts the centres scale with ``points`` and the radii with ``sqrt(2048 / points)``, so a
    ball holds about as many points as in PVD (on the procedural shapes at diffusion scale 2:
    5 in the first stage; PVD's radii at 256 points held 1.3, little more than the centre).
    """
    c = lambda n: max(8, int(round(n * width / 8)) * 8)  # noqa: E731
    r = lambda n: max(2, int(round(n * resolution)))  # noqa: E731
    centres = [max(4, points * k // 2048) for k in (1024, 256, 64, 16)]
    # Points on a surface lie ~1/sqrt(N) apart: widen the balls for fewer points.
    radii = [rad * (2048 / points) ** 0.5 for rad in (0.1, 0.2, 0.4, 0.8)]
    stages = [
        StageSpec(c(32), 2, r(32), centres[0], radii[0], 32, (c(32), c(64))),
        StageSpec(c(64), 3, r(16), centres[1], radii[1], 32, (c(64), c(128)), attention),
        StageSpec(c(128), 3, r(8), centres[2], radii[2], 32, (c(128), c(256))),
        StageSpec(0, 0, 0, centres[3], radii[3], 32, (c(256), c(256), c(512))),
    ]
    decoder = [
        ((c(256), c(256)), (c(256), 3, r(8))),
        ((c(256), c(256)), (c(256), 3, r(8))),
        ((c(256), c(128)), (c(128), 2, r(16))),
        ((c(128), c(128), c(64)), (c(64), 2, r(32))),
    ]
    return PVCNNSpec(stages, decoder, emb_dim=c(64), global_attention=attention)


class PVCNNUNet(nn.Module):
    """Point-voxel U-Net: ``(x (B, N, 3), t (B,)) -> (B, N, 3)``.

    ``extra_channels`` per-point input features (e.g. a "this point is observed"
    flag for shape completion) can be passed as ``features`` ``(B, extra, N)``. With ``classes`` the network is
    class-conditional: ``label`` ``(B,)`` long in ``[0, classes]``, where ``classes`` itself (and ``label=None``)
    means no class; its embedding is added to the time embedding (zero at start). ``gradient_checkpointing``
    recomputes each PVConv block's activations in the backward pass instead of keeping them (less memory in
    training; the same weights, outputs and gradients).
    """

    def __init__(self, spec: PVCNNSpec, extra_channels: int = 0, classes: int = 0,
                 gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.extra_channels, self.classes = extra_channels, classes
        self.time = TimestepEmbedding(spec.emb_dim)
        self.label = nn.Embedding(classes + 1, spec.emb_dim) if classes else None
        if self.label is not None:
            nn.init.zeros_(self.label.weight)
        in_ch = 3 + extra_channels
        self.encoder = nn.ModuleList()
        skips = [in_ch]
        ch = in_ch
        for stage in spec.stages:
            sa = SetAbstraction(ch, stage, spec.emb_dim, gradient_checkpointing)
            self.encoder.append(sa)
            ch = sa.out_channels
            skips.append(ch)
        skips.pop()
        self.global_attention = SelfAttention(ch) if spec.global_attention else None
        self.decoder = nn.ModuleList()
        for mlp, conv in spec.decoder:
            fp = FeaturePropagation(ch, skips.pop(), mlp, conv, spec.emb_dim, gradient_checkpointing)
            self.decoder.append(fp)
            ch = fp.out_channels
        self.head = nn.Sequential(nn.Conv1d(ch, ch, 1), group_norm(ch, 8), nn.SiLU(), nn.Conv1d(ch, 3, 1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: Tensor, t: Tensor, features: Tensor | None = None, label: Tensor | None = None) -> Tensor:
        emb = self.time(t)
        if self.label is not None:
            emb = emb + self.label(torch.full_like(t, self.classes, dtype=torch.long) if label is None else label)
        elif label is not None:
            raise ValueError("this network is not class-conditional (it was built without classes)")
        feats = x.transpose(1, 2)
        if self.extra_channels:
            if features is None:
                raise ValueError(f"this network expects {self.extra_channels} extra per-point feature channels")
            feats = torch.cat([feats, features.to(x.dtype)], dim=1)
        levels = [(feats, PointLevel(x))]  # encoder and decoder blocks on the same points share a level
        for sa in self.encoder:
            levels.append(sa(*levels[-1], emb))
        coarse, coarse_level = levels.pop()
        if self.global_attention is not None:
            coarse = self.global_attention(coarse)
        for fp in self.decoder:
            skip, level = levels.pop()
            coarse = fp(coarse, coarse_level.xyz, skip, level, emb)
            coarse_level = level
        return self.head(coarse).transpose(1, 2)
