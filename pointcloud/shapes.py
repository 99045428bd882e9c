"""Built-in procedural shapes: parametric families of meshes sampled to point clouds (no download).

Each family draws its proportions at random (deterministically from a seed) and
assembles trimesh primitives; the cloud is an area-weighted sample of the union
of their surfaces, centred at its bounding-box centre and scaled so that the
farthest point lies on the unit sphere (per-shape normalisation, as PointFlow's
``normalize_per_shape``). Clouds are float32 ``(N, 3)``, y up.
"""

from __future__ import annotations

import numpy as np
import torch
import trimesh
from torch import Tensor
from torch.utils.data import Dataset

FAMILIES = ("chair", "table", "airplane", "torus", "vase")


def _box(extents, centre) -> trimesh.Trimesh:
    return trimesh.creation.box(extents=extents, transform=trimesh.transformations.translation_matrix(centre))


def _cylinder(radius, height, centre, axis="y") -> trimesh.Trimesh:
    rot = {"y": trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]),
           "x": trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]),
           "z": np.eye(4)}[axis]
    return trimesh.creation.cylinder(radius=radius, height=height,
                                     transform=trimesh.transformations.translation_matrix(centre) @ rot, sections=24)


def _legs(rng, width, depth, height, thickness) -> list[trimesh.Trimesh]:
    xs, zs = (width / 2 - thickness, -(width / 2 - thickness)), (depth / 2 - thickness, -(depth / 2 - thickness))
    round_legs = rng.random() < 0.5
    return [_cylinder(thickness, height, (x, height / 2, z)) if round_legs
            else _box((2 * thickness, height, 2 * thickness), (x, height / 2, z)) for x in xs for z in zs]


def chair(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    w, d, h = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.1)
    t, seat, back = rng.uniform(0.04, 0.08), rng.uniform(0.06, 0.12), rng.uniform(0.8, 1.4)
    parts = _legs(rng, w, d, h, t)
    parts.append(_box((w, seat, d), (0, h + seat / 2, 0)))
    parts.append(_box((w, back, seat), (0, h + seat + back / 2, -d / 2 + seat / 2)))
    return parts


def table(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    w, d, h = rng.uniform(1.2, 2.2), rng.uniform(0.7, 1.2), rng.uniform(0.6, 1.0)
    t, top = rng.uniform(0.04, 0.08), rng.uniform(0.05, 0.1)
    return [*_legs(rng, w, d, h, t), _box((w, top, d), (0, h + top / 2, 0))]


def airplane(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    length, r = rng.uniform(2.0, 3.0), rng.uniform(0.12, 0.22)
    span, chord = rng.uniform(1.8, 3.0), rng.uniform(0.3, 0.6)
    wing_z = rng.uniform(-0.2, 0.2) * length
    tail = rng.uniform(0.4, 0.8)
    return [
        _cylinder(r, length, (0, 0, 0), axis="z"),
        _box((span, 0.05, chord), (0, 0, wing_z)),
        _box((tail * 1.5, 0.04, chord * 0.6), (0, 0, -length / 2 + chord * 0.3)),
        _box((0.04, tail, chord * 0.6), (0, tail / 2, -length / 2 + chord * 0.3)),
    ]


def torus(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    major = 1.0
    minor = rng.uniform(0.15, 0.5)
    return [trimesh.creation.torus(major_radius=major, minor_radius=minor, major_sections=48, minor_sections=16)]


def vase(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    """A surface of revolution of a random smooth profile (radius against height)."""
    height = rng.uniform(1.5, 2.5)
    y = np.linspace(0, height, 24)
    coeffs = rng.uniform(-0.25, 0.25, size=3)
    r = 0.45 + sum(c * np.sin((k + 1) * np.pi * y / height + k) for k, c in enumerate(coeffs))
    profile = np.stack([np.clip(r, 0.08, None), y], 1)  # (radius, height) in the xz-plane convention of revolve
    mesh = trimesh.creation.revolve(profile, sections=32)
    mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # revolve's axis z -> y
    return [mesh]


BUILDERS = {"chair": chair, "table": table, "airplane": airplane, "torus": torus, "vase": vase}


def unit_sphere_frame(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bounding-box centre of ``points`` and the distance of the farthest point from it."""
    centre = (points.min(0) + points.max(0)) / 2
    return centre, np.linalg.norm(points - centre, axis=1).max()


def normalize(points: np.ndarray) -> np.ndarray:
    """Centre at the bounding-box centre and scale the farthest point onto the unit sphere."""
    centre, scale = unit_sphere_frame(points)
    return (points - centre) / scale


def _mesh_and_cloud(family: str, points: int, seed: int) -> tuple[trimesh.Trimesh, np.ndarray]:
    if family not in BUILDERS:
        raise ValueError(f"unknown shape family {family!r}; choose from {FAMILIES}")
    rng = np.random.default_rng(seed)
    mesh = trimesh.util.concatenate(BUILDERS[family](rng))
    cloud, _ = trimesh.sample.sample_surface(mesh, points, seed=rng)
    return mesh, np.asarray(cloud)


def make_shape(family: str, points: int, seed: int) -> np.ndarray:
    """One shape of ``family`` as a float32 ``(points, 3)`` cloud, deterministic by ``seed``."""
    return normalize(_mesh_and_cloud(family, points, seed)[1]).astype(np.float32)


def make_surface(family: str, points: int, seed: int, dense: int = 20_000) -> np.ndarray:
    """``dense`` points of the surface behind ``make_shape(family, points, seed)``, in that cloud's
    frame: float32 ``(dense, 3)``, for distances to the true surface rather than to a sparse sampling."""
    mesh, cloud = _mesh_and_cloud(family, points, seed)
    centre, scale = unit_sphere_frame(cloud)
    surface, _ = trimesh.sample.sample_surface(mesh, dense, seed=seed + 1)
    return ((np.asarray(surface) - centre) / scale).astype(np.float32)


class ProceduralShapes(Dataset):
    """``num_shapes`` clouds ``(points, 3)`` cycling through ``families``; ``split`` picks a disjoint seed stream.

    Shapes are built on first access and kept in memory (a few ms each).
    """

    def __init__(self, families=FAMILIES, num_shapes: int = 1000, points: int = 2048, seed: int = 0,
                 split: str = "train") -> None:
        if split not in ("train", "val"):
            raise ValueError(f"unknown split {split!r}; use 'train' or 'val'")
        unknown = sorted(set(families) - set(BUILDERS))
        if unknown or not families:
            raise ValueError(f"unknown shape families {unknown}; choose from {FAMILIES}" if unknown else
                             f"no shape families given; choose one or more of {FAMILIES}")
        self.families, self.num_shapes, self.points = list(families), num_shapes, points
        self.base = (seed * 2 + (split == "val")) * 1_000_003
        self.cache: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return self.num_shapes

    def family(self, i: int) -> str:
        return self.families[i % len(self.families)]

    @property
    def labels(self) -> Tensor:
        """Each shape's family (:meth:`family`) as an index into ``families``, ``(num_shapes,)`` long."""
        return torch.arange(self.num_shapes) % len(self.families)

    def surface(self, i: int, dense: int = 20_000) -> Tensor:
        """A dense sampling ``(dense, 3)`` of shape ``i``'s surface in the frame of ``self[i]``."""
        return torch.from_numpy(make_surface(self.family(i), self.points, self.base + i, dense))

    def __getitem__(self, i: int) -> Tensor:
        if i not in self.cache:
            self.cache[i] = torch.from_numpy(make_shape(self.family(i), self.points, self.base + i))
        return self.cache[i]
