"""Point operations in PyTorch, batched, with no Python loop over points (FPS on CUDA: a Triton kernel).

Conventions: coordinates are ``(B, N, 3)``; features are channels-first ``(B, C, N)``
as the convolutional networks want them; index tensors are ``int64``.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from multigen.precision import float32


@float32
def square_distance(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise squared distances ``(B, N, M)`` between ``a`` ``(B, N, D)`` and ``b`` ``(B, M, D)``, in their dtype
    also under autocast (in bf16 its product would shift Chamfer distances by 10 % and swap neighbours).

    Both are first moved by ``b``'s centroid: ``|a|² + |b|² - 2 a·b`` cancels catastrophically for clouds far from
    the origin (100 units out, a float32 self-Chamfer of 4e-4 and a third of the kNN wrong), and distances do not
    change under a shift."""
    if a.ndim != 3 or b.ndim != 3 or len(a) != len(b) or a.shape[-1] != b.shape[-1]:
        raise ValueError(f"point sets (B, N, D) and (B, M, D), the same B and D, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    centre = b.mean(1, keepdim=True)
    a, b = a - centre, b - centre
    d = (a * a).sum(-1)[:, :, None] + (b * b).sum(-1)[:, None, :] - 2 * a @ b.transpose(1, 2)
    return d.clamp_(min=0)


@functools.cache
def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def check_fps_args(xyz: Tensor, m: int, start: Tensor | None) -> None:
    """Raise a ``ValueError`` naming the bad argument of farthest point sampling."""
    B, N, _ = xyz.shape
    if not 0 < m <= N:
        raise ValueError(f"cannot sample {m} of {N} points")
    if start is not None and start.shape != (B,):
        raise ValueError(f"start must have shape ({B},), one index per cloud, got {tuple(start.shape)}")
    # the Triton kernel would read out of bounds (a host sync, only when a start is given; meta holds no values)
    if start is not None and start.device.type != "meta" and not bool(((start >= 0) & (start < N)).all()):
        raise ValueError(f"start must index the {N} points of each cloud, got {start.tolist()}")


def farthest_point_sample(xyz: Tensor, m: int, start: Tensor | None = None) -> Tensor:
    """Indices ``(B, m)`` of ``m`` points of ``xyz`` ``(B, N, 3)`` chosen by iterative farthest-point sampling.

    Starts at index ``start`` ``(B,)`` (default 0, as PointNet++ does); a tie goes to the lowest index.
    Float32 clouds on CUDA run the Triton kernel of :mod:`pointcloud.fps_triton` when Triton is
    installed (the whole loop in one launch); everything else runs :func:`farthest_point_sample_torch`,
    the reference the kernel is tested equal to.
    """
    if xyz.is_cuda and xyz.dtype == torch.float32 and _triton_available():
        from .fps_triton import farthest_point_sample_triton

        return farthest_point_sample_triton(xyz, m, start)
    return farthest_point_sample_torch(xyz, m, start)


def farthest_point_sample_torch(xyz: Tensor, m: int, start: Tensor | None = None) -> Tensor:
    """:func:`farthest_point_sample` in PyTorch on any device: each step is vectorised over batch and
    points, so the loop runs ``m`` times (a few kernel launches each), not ``N * m``."""
    check_fps_args(xyz, m, start)
    B, N, _ = xyz.shape
    idx = torch.empty(B, m, dtype=torch.long, device=xyz.device)
    nearest = torch.full((B, N), float("inf"), device=xyz.device, dtype=xyz.dtype)
    current = torch.zeros(B, dtype=torch.long, device=xyz.device) if start is None else start.long()
    batch = torch.arange(B, device=xyz.device)
    for i in range(m):
        idx[:, i] = current
        d = ((xyz - xyz[batch, current][:, None]) ** 2).sum(-1)
        nearest = torch.minimum(nearest, d)
        current = nearest.argmax(-1)
    return idx


def gather_points(x: Tensor, idx: Tensor) -> Tensor:
    """Select points: ``x`` ``(B, N, D)`` and ``idx`` ``(B, *S)`` -> ``(B, *S, D)``."""
    B = x.shape[0]
    flat = idx.reshape(B, -1)
    out = torch.gather(x, 1, flat[..., None].expand(-1, -1, x.shape[-1]))
    return out.reshape(*idx.shape, x.shape[-1])


def knn(query: Tensor, ref: Tensor, k: int, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest ``ref`` points of each ``query`` point.

    ``query`` ``(B, M, 3)``, ``ref`` ``(B, N, 3)`` -> squared distances and indices
    ``(B, M, k)``, nearest first. Queries are processed in chunks of ``chunk`` so
    at most ``B * chunk * N`` distances exist at once.
    """
    if not 1 <= k <= ref.shape[1]:
        raise ValueError(f"k = {k}: at least 1 and at most the {ref.shape[1]} reference points")
    if chunk < 1:
        raise ValueError(f"chunk = {chunk}: at least 1 query point a chunk")
    if query.shape[1] <= chunk:
        return square_distance(query, ref).topk(k, dim=-1, largest=False, sorted=True)
    dists, idxs = [], []
    for q in query.split(chunk, dim=1):
        d, i = square_distance(q, ref).topk(k, dim=-1, largest=False, sorted=True)
        dists.append(d)
        idxs.append(i)
    return torch.cat(dists, 1), torch.cat(idxs, 1)


def ball_query(centres: Tensor, xyz: Tensor, radius: float, k: int) -> Tensor:
    """Up to ``k`` points within ``radius`` of each centre, as PointNet++ groups them.

    ``centres`` ``(B, M, 3)``, ``xyz`` ``(B, N, 3)`` -> indices ``(B, M, k)``: the
    in-radius points in index order, padded by repeating the first one; a centre
    with no point in range gets its nearest point (PointNet++'s CUDA kernel would
    use index 0). The j-th in-radius point is found by binary search in the running
    count of in-radius points (no sort or top-k over all ``N``).
    """
    if not radius >= 0 or xyz.shape[1] == 0:
        raise ValueError(f"ball query: a radius >= 0 and at least one point, got radius {radius} and "
                         f"{xyz.shape[1]} points")
    B, M, _ = centres.shape
    N = xyz.shape[1]
    d = square_distance(centres, xyz)
    count = (d <= radius * radius).cumsum(-1, dtype=torch.int32)  # (B, M, N): in-radius points up to each index
    slots = torch.arange(1, k + 1, dtype=torch.int32, device=xyz.device).expand(B, M, k).contiguous()
    first = torch.searchsorted(count, slots)  # (B, M, k): index of the j-th in-radius point, N past the last
    nearest = d.argmin(-1, keepdim=True)
    head = torch.where(first[..., :1] == N, nearest, first[..., :1])
    return torch.where(first == N, head, first)


def group(features: Tensor, idx: Tensor) -> Tensor:
    """Gather features ``(B, C, N)`` at ``idx`` ``(B, M, K)`` -> ``(B, C, M, K)``."""
    B, C, _ = features.shape
    M, K = idx.shape[1:]
    out = torch.gather(features, 2, idx.reshape(B, 1, M * K).expand(-1, C, -1))
    return out.reshape(B, C, M, K)


def normalize_coords(coords: Tensor, resolution: int, eps: float = 0.0) -> Tensor:
    """PVCNN's voxel coordinates: centre each cloud, scale into the grid ``[0, R - 1]``.

    ``coords`` ``(B, 3, N)`` -> ``(B, 3, N)`` float.
    """
    centred = coords - coords.mean(dim=2, keepdim=True)
    scale = centred.norm(dim=1, keepdim=True).amax(dim=2, keepdim=True) * 2.0 + eps
    norm = centred / scale.clamp(min=1e-12) + 0.5
    return (norm * resolution).clamp(0, resolution - 1)


@dataclass(frozen=True)
class Voxelization:
    """Where the points of a batch of clouds fall in an ``R^3`` grid, computed once by :func:`voxelization`
    and reused by every layer that voxelizes the same cloud at the same resolution.

    ``norm`` ``(B, 3, N)``: coordinates in grid units ``[0, R - 1]`` (:func:`normalize_coords`);
    ``flat`` ``(B * N,)``: each point's voxel, flattened over the batch; ``counts`` ``(B * R^3,)``:
    points per voxel, at least 1; ``pos`` ``(B, 1, 1, N, 3)``: the points as ``grid_sample`` takes them.
    """

    resolution: int
    norm: Tensor
    flat: Tensor
    counts: Tensor
    pos: Tensor

    def average(self, features: Tensor) -> Tensor:
        """Mean point features ``(B, C, N)`` per voxel: ``(B, C, R, R, R)`` (axes x, y, z; empty voxels 0)."""
        B, C, N = features.shape
        R = self.resolution
        feats = features.transpose(1, 2).reshape(B * N, C)
        sums = feats.new_zeros(B * R**3, C).index_add_(0, self.flat, feats)
        grid = sums / self.counts.to(sums.dtype)[:, None]
        return grid.reshape(B, R, R, R, C).permute(0, 4, 1, 2, 3).contiguous()

    def interpolate(self, grid: Tensor) -> Tensor:
        """Trilinearly interpolate grid features ``(B, C, R, R, R)`` at the points: ``(B, C, N)``."""
        return _interpolate(grid, self.pos)


def _grid_sample_positions(norm_coords: Tensor, resolution: int) -> Tensor:
    """``(B, 3, N)`` grid coordinates -> ``grid_sample``'s ``(B, 1, 1, N, 3)``: (x, y, z) with x indexing the
    last grid axis, in ``[-1, 1]``."""
    return (norm_coords.flip(1).transpose(1, 2) / (resolution - 1) * 2 - 1)[:, None, None]


def _interpolate(grid: Tensor, pos: Tensor) -> Tensor:
    """Trilinear interpolation of ``grid`` ``(B, C, R, R, R)`` at ``pos`` ``(B, 1, 1, N, 3)``: ``(B, C, N)``."""
    return F.grid_sample(grid, pos, mode="bilinear", padding_mode="border", align_corners=True)[:, :, 0, 0]


def voxelization(coords: Tensor, resolution: int, eps: float = 0.0) -> Voxelization:
    """The :class:`Voxelization` of clouds ``coords`` ``(B, 3, N)`` in an ``R^3`` grid (PVCNN's normalisation)."""
    B, _, N = coords.shape
    R = resolution
    norm = normalize_coords(coords, R, eps)
    vox = norm.round().long()
    flat = (vox[:, 0] * R + vox[:, 1]) * R + vox[:, 2] + torch.arange(B, device=coords.device)[:, None] * R**3
    flat = flat.reshape(-1)
    counts = coords.new_zeros(B * R**3).index_add_(0, flat, coords.new_ones(B * N)).clamp_(min=1)
    return Voxelization(R, norm, flat, counts, _grid_sample_positions(norm, R))


def voxelize(features: Tensor, coords: Tensor, resolution: int, eps: float = 0.0) -> tuple[Tensor, Tensor]:
    """Average point features into a ``R^3`` grid.

    ``features`` ``(B, C, N)``, ``coords`` ``(B, 3, N)`` -> grid ``(B, C, R, R, R)``
    (axes in x, y, z order; empty voxels are 0) and the normalised coordinates
    ``(B, 3, N)`` that :func:`trilinear_devoxelize` takes. Layers that voxelize one
    cloud several times keep its :func:`voxelization` instead.
    """
    vox = voxelization(coords, resolution, eps)
    return vox.average(features), vox.norm


def trilinear_devoxelize(grid: Tensor, norm_coords: Tensor) -> Tensor:
    """Trilinearly interpolate grid features ``(B, C, R, R, R)`` at ``norm_coords`` ``(B, 3, N)`` -> ``(B, C, N)``."""
    return _interpolate(grid, _grid_sample_positions(norm_coords, grid.shape[-1]))


def chamfer_distance(x: Tensor, y: Tensor, chunk: int = 2048) -> Tensor:
    """Chamfer distance as PointFlow defines it: mean squared distance to the nearest neighbour, both ways.

    ``x`` ``(B, N, 3)``, ``y`` ``(B, M, 3)`` -> ``(B,)``. Chunked in both directions
    so that at most ``B * chunk * max(N, M)`` distances exist at once.
    """
    x_to_y = knn(x, y, 1, chunk)[0][..., 0].mean(1)
    y_to_x = knn(y, x, 1, chunk)[0][..., 0].mean(1)
    return x_to_y + y_to_x
