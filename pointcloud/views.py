"""Partial scans made on the fly: the points of a cloud that a depth sensor at a viewpoint would see.

Visibility is hidden-point removal (Katz, Tal and Basri, 2007): spherically flip the
cloud about the viewpoint and keep the points on the convex hull of the flipped
cloud and the viewpoint. It needs no mesh and no image resolution, which suits
clouds sampled from surfaces.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import ConvexHull, QhullError
from torch import Tensor

from .io import PointCloudError
from .shapes import unit_sphere_frame


def visible_points(points: np.ndarray, viewpoint: np.ndarray, gamma: float = 2.0) -> np.ndarray:
    """Boolean ``(N,)``: which of ``points`` ``(N, 3)`` are visible from ``viewpoint`` ``(3,)``.

    ``gamma`` sets the flipping radius ``R = 10**gamma * max |p - viewpoint|``; larger
    values mark more points visible, hidden ones among them once it is large.
    """
    v = points - viewpoint
    norm = np.linalg.norm(v, axis=1, keepdims=True).clip(min=1e-12)
    radius = norm.max() * 10**gamma
    flipped = v + 2 * (radius - norm) * v / norm
    try:
        hull = ConvexHull(np.vstack([flipped, np.zeros((1, 3))]))
    except QhullError:  # fewer than 4 points, or all on one line or plane with the viewpoint
        raise PointCloudError(f"cannot find the points visible from {np.round(viewpoint, 4).tolist()}: with it, the "
                              f"{len(points)} points span no volume (they are too few, coincide, or lie on a line or "
                              f"plane)") from None
    mask = np.zeros(len(points), dtype=bool)
    mask[hull.vertices[hull.vertices < len(points)]] = True
    return mask


def random_viewpoint(rng: np.random.Generator, distance: float = 2.5) -> np.ndarray:
    """A point uniformly on the sphere of radius ``distance`` (clouds are normalised into the unit sphere)."""
    d = rng.normal(size=3)
    return distance * d / np.linalg.norm(d)


def viewpoint_towards(points: np.ndarray, direction: np.ndarray, distance: float = 2.5) -> np.ndarray:
    """The viewpoint ``(3,)`` in ``direction`` from the bounding-box centre of ``points`` ``(N, 3)``, at
    ``distance`` times the cloud's radius (as :func:`random_viewpoint` for clouds in the unit sphere)."""
    direction = np.asarray(direction, dtype=np.float64)
    if direction.shape != (3,) or not np.linalg.norm(direction) > 0:
        raise ValueError(f"a view direction needs 3 numbers, not all zero; got {direction.tolist()}")
    centre, radius = unit_sphere_frame(points)
    return centre + distance * radius * direction / np.linalg.norm(direction)


def partial_mask(points: np.ndarray, num_partial: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean ``(N,)`` with exactly ``num_partial`` True: a random subset of the points visible from a
    random viewpoint; if fewer are visible, the non-visible points nearest the viewpoint fill up."""
    if not 0 < num_partial < len(points):
        raise ValueError(f"num_partial must be between 1 and {len(points) - 1}, got {num_partial}")
    eye = random_viewpoint(rng)
    visible = np.flatnonzero(visible_points(points, eye))
    if len(visible) >= num_partial:
        chosen = rng.choice(visible, num_partial, replace=False)
    else:
        hidden = np.setdiff1d(np.arange(len(points)), visible)
        nearest = hidden[np.argsort(np.linalg.norm(points[hidden] - eye, axis=1))]
        chosen = np.concatenate([visible, nearest[: num_partial - len(visible)]])
    mask = np.zeros(len(points), dtype=bool)
    mask[chosen] = True
    return mask


def partial_masks(clouds: Tensor, num_partial: int, seed: int | None = None) -> Tensor:
    """Partial-view masks ``(B, N)`` for clouds ``(B, N, 3)`` (one random viewpoint each).

    ``seed`` makes them deterministic (evaluation); ``None`` draws from torch's RNG (training).
    """
    seed = int(torch.randint(0, 2**31 - 1, ())) if seed is None else seed
    rng = np.random.default_rng(seed)
    pts = clouds.detach().double().cpu().numpy()
    return torch.from_numpy(np.stack([partial_mask(p, num_partial, rng) for p in pts]))
