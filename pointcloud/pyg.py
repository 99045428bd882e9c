"""PyTorch Geometric interop: clouds as ``torch_geometric.data.Data`` / ``Batch``.

A cloud is a ``Data`` whose ``pos`` is ``(N, 3)``; several clouds of different sizes are a ``Batch``
(``pos`` ``(sum N_i, 3)`` and the ``batch`` vector naming each point's cloud), as PyG's loaders and
layers take them. Outputs carry a bool ``observed`` ``(sum N_i,)`` marking the points that were given.

Only pure-Python parts of PyG are used (``Data``, ``Batch``, ``to_dense_batch``, transforms): no
compiled add-on (``torch_cluster``, ``pyg-lib``) is needed.

    from multigen import load_pretrained
    from pointcloud import pyg
    model = load_pretrained("runs/pointcloud/export")
    done = pyg.complete(model, partials)          # partials: a Batch of scans of any sizes
    done.pos[done.batch == 0]                      # the first completion: its scan, then generated points
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.transforms import BaseTransform
from torch_geometric.utils import to_dense_batch

from multigen import Known

from .io import PointCloudError, check_points
from .shapes import normalize


def to_batch(clouds: Tensor, observed: Tensor | None = None) -> Batch:
    """Dense clouds ``(B, N, 3)`` (and an ``observed`` mask ``(B, N)``) as a ``Batch`` of ``B`` clouds."""
    if clouds.ndim != 3 or clouds.shape[-1] != 3:
        raise PointCloudError(f"expected clouds of shape (B, N, 3), got {tuple(clouds.shape)}")
    if observed is not None and tuple(observed.shape) != tuple(clouds.shape[:2]):
        raise PointCloudError(f"observed: a mask (B, N) = {tuple(clouds.shape[:2])} for the clouds, got "
                              f"{tuple(observed.shape)}")
    items = []
    for i, cloud in enumerate(clouds):
        data = Data(pos=cloud)
        if observed is not None:
            data.observed = observed[i]
        items.append(data)
    return Batch.from_data_list(items)


def clouds_of(data: Data | Batch) -> list[Tensor]:
    """The clouds of a ``Data`` (one) or ``Batch`` (one per graph) as ``(N_i, 3)`` tensors; empty or
    non-finite clouds are errors naming the cloud."""
    if getattr(data, "pos", None) is None:
        raise PointCloudError("a torch_geometric cloud needs its points in `pos` (N, 3)")
    clouds = data.to_data_list() if isinstance(data, Batch) else [data]
    for i, cloud in enumerate(clouds):
        check_points(cloud.pos.detach().cpu().numpy(), f"cloud {i} of the torch_geometric input")
    return [cloud.pos for cloud in clouds]


def sample(pretrained: Any, n: int, **settings: Any) -> Batch:
    """``n`` clouds drawn from an exported point-cloud model (:func:`multigen.load_pretrained`) as a ``Batch``;
    ``settings`` go to the domain's ``sample`` (``steps``, ``sampler``, ``generator``, a class-conditional model's
    ``condition``, ...)."""
    with torch.no_grad():
        clouds = pretrained.domain.sample(pretrained.model, n, **settings)
    return to_batch(clouds)


def complete(pretrained: Any, partials: Data | Batch, **settings: Any) -> Batch:
    """Complete each partial cloud of ``partials`` (in the model's frame) to the model's ``data.points``.

    Partial ``i`` of ``P_i < data.points`` points is kept exactly (same values and order; float32 and float64
    partials keep their dtype, others become the float type that holds them: see :func:`float_holding`) and
    followed by ``data.points - P_i`` generated points; all partials are completed in one sampling run.
    Returns a ``Batch`` with ``pos`` ``(B * data.points, 3)``, ``batch`` and ``observed``.
    """
    domain, model = pretrained.domain, pretrained.model
    N = domain.cfg.data.points
    clouds = clouds_of(partials)
    too_big = [(i, len(c)) for i, c in enumerate(clouds) if len(c) >= N]
    if too_big:
        i, size = too_big[0]
        raise PointCloudError(f"partial {i} has {size} points; the model completes clouds of {N}, so a partial "
                              f"must have fewer (subsample it, e.g. with pointcloud.ops.farthest_point_sample)")
    device = next(model.parameters()).device
    pos = torch.cat(clouds)
    batch = torch.repeat_interleave(torch.arange(len(clouds)), torch.tensor([len(c) for c in clouds]))
    values, mask = to_dense_batch(pos.to(device), batch.to(device), max_num_nodes=N, batch_size=len(clouds))
    with torch.no_grad():
        done = domain.sample(model, len(clouds), known=Known(mask, values.float()), **settings)
    out = []
    for i, cloud in enumerate(clouds):
        dtype = float_holding(cloud.dtype)  # an integer partial must not round what is generated
        generated = done[i, len(cloud):].to(device=cloud.device, dtype=dtype)
        observed = torch.arange(N, device=cloud.device) < len(cloud)
        out.append(Data(pos=torch.cat([cloud.to(dtype), generated]), observed=observed))
    return Batch.from_data_list(out)


def float_holding(dtype: torch.dtype) -> torch.dtype:
    """The floating dtype that holds the values of ``dtype`` exactly: float32 and float64 themselves, float32 for
    half precision and integers of up to 16 bits, float64 for wider integers (int64 ones up to 2**53)."""
    if dtype in (torch.float32, torch.float64):
        return dtype
    return torch.float32 if dtype.is_floating_point or dtype.itemsize <= 2 else torch.float64


class NormalizeUnitSphere(BaseTransform):
    """The normalisation the procedural shapes and ``data.normalization=shape`` use, as a PyG transform:
    centre ``pos`` at its bounding-box centre and scale its farthest point onto the unit sphere.

    (PyG's ``NormalizeScale`` centres at the mean and scales by the largest coordinate: another frame.)
    """

    def forward(self, data: Data) -> Data:
        points = check_points(data.pos.detach().double().cpu().numpy(), "the transformed Data's pos", need_extent=True)
        dtype = data.pos.dtype if data.pos.is_floating_point() else float_holding(data.pos.dtype)  # (ints: all 0)
        data.pos = torch.from_numpy(normalize(points)).to(data.pos.device, dtype)
        return data
