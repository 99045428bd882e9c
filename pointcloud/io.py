"""Point-cloud files: read ``.npy/.xyz/.txt/.ply`` points, ``.pt`` torch_geometric ``Data`` (its ``pos``) and
``.obj/.off/.stl/.ply`` meshes, write ``.ply``, render clouds to PNG. Points are ``(N, 3)`` arrays; errors
name the file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from multigen.config import first_line
from multigen.domain import DataError, load_npy

POINT_SUFFIXES = (".npy", ".xyz", ".txt", ".ply", ".pt")
MESH_SUFFIXES = (".obj", ".off", ".stl", ".ply")


class PointCloudError(DataError):
    """A point cloud that cannot be used: unreadable, empty, non-finite or too small."""


def check_points(points: np.ndarray, source: str, need_extent: bool = False) -> np.ndarray:
    """``points`` as ``(N, 3)``; empty, one-point or non-finite clouds are errors naming ``source``, and with
    ``need_extent`` (a whole shape, normalised by its size) so are clouds whose points all coincide."""
    if points.size == 0:
        raise PointCloudError(f"{source} has no points")
    if points.ndim != 2 or points.shape[1] < 3:
        raise PointCloudError(f"{source}: expected points of shape (N, 3), got {points.shape}")
    if points.shape[0] == 3 and points.shape[1] > 9:  # more columns than xyz, a normal and a colour
        raise PointCloudError(f"{source}: shape {points.shape} looks channels-first (3, N), as PVD stores clouds; "
                              f"save its transpose, of shape (N, 3)")
    points = points[:, :3]
    if len(points) == 0:
        raise PointCloudError(f"{source} has no points")
    if not np.isfinite(points).all():
        bad = int(np.flatnonzero(~np.isfinite(points).all(1))[0])
        raise PointCloudError(f"{source}: point {bad} is not finite (NaN or inf)")
    if len(points) < 2:
        raise PointCloudError(f"{source} has only one point; a shape needs at least 2")
    if need_extent and (points == points[0]).all():
        raise PointCloudError(f"{source}: all {len(points)} points coincide; a shape needs some extent")
    return points


def read_points(path: str | Path, num_points: int = 2048, seed: int = 0, need_extent: bool = False,
                ply_as_points: bool = False) -> np.ndarray:
    """Points of a point file, or ``num_points`` area-weighted samples of a mesh's surface (checked by
    :func:`check_points`); with ``ply_as_points`` a ``.ply`` is its vertices also where it has faces (a scan
    stored triangulated)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a point cloud file")
    if not path.is_file():
        raise FileNotFoundError(f"point cloud file {path} not found")
    suffix = path.suffix.lower()
    if suffix not in POINT_SUFFIXES + MESH_SUFFIXES:
        raise PointCloudError(f"{path}: unknown suffix {suffix!r}; use {sorted(set(POINT_SUFFIXES + MESH_SUFFIXES))}")
    try:
        if suffix == ".npy":
            points = load_npy(path, PointCloudError)
        elif suffix in (".xyz", ".txt"):
            with warnings.catch_warnings(), open(path) as f:  # an empty file: check_points says so, naming it
                warnings.filterwarnings("ignore", "loadtxt: input contained no data", UserWarning)
                points = np.loadtxt((line.replace(",", " ") for line in f), ndmin=2)  # spaces, tabs or commas
        elif suffix == ".pt":
            points = _read_torch(path)
        else:
            import trimesh

            geometry = trimesh.load(path, process=False)
            if isinstance(geometry, trimesh.Scene):
                geometry = geometry.to_geometry()
            if isinstance(geometry, trimesh.Trimesh) and len(geometry.faces) and not (ply_as_points
                                                                                    and suffix == ".ply"):
                points, _ = trimesh.sample.sample_surface(geometry, num_points, seed=seed)
            else:
                points = np.asarray(geometry.vertices)
    except PointCloudError:
        raise
    except (OSError, ValueError, IndexError, KeyError, AttributeError, RuntimeError, EOFError) as e:
        raise PointCloudError(f"{path} could not be read: {first_line(e)}") from e
    return check_points(np.asarray(points), str(path), need_extent)


def _read_torch(path: Path) -> np.ndarray:
    """The points of a ``torch.save``d torch_geometric ``Data`` (its ``pos``) or ``(N, 3)`` tensor, loaded with
    ``weights_only=True`` (no arbitrary code runs)."""
    import pickle

    import torch
    from torch_geometric.data import Data
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import EdgeStorage, GlobalStorage, NodeStorage

    try:
        with torch.serialization.safe_globals([Data, DataEdgeAttr, DataTensorAttr, GlobalStorage, NodeStorage,
                                               EdgeStorage]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise PointCloudError(f"{path} holds something other than one torch_geometric Data or a tensor (a Batch? "
                              f"save one cloud: batch.get_example(i)): {first_line(e)}") from None
    if isinstance(obj, Data):
        if obj.pos is None:
            raise PointCloudError(f"{path}: the torch_geometric Data has no `pos` (its points)")
        obj = obj.pos
    if not isinstance(obj, torch.Tensor):
        raise PointCloudError(f"{path} holds a {type(obj).__name__}, not a torch_geometric Data or a tensor")
    return obj.detach().double().cpu().numpy()


def write_ply(path: str | Path, points: np.ndarray) -> Path:
    """Write ``points`` ``(N, 3)`` as a binary little-endian PLY (float32, or float64 if given float64)."""
    path = Path(path)
    points = np.ascontiguousarray(points)
    kind = "double" if points.dtype == np.float64 else "float"
    data = points.astype("<f8" if kind == "double" else "<f4")
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(data)}\n"
              f"property {kind} x\nproperty {kind} y\nproperty {kind} z\nend_header\n")
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(data.tobytes())
    return path


def write_plys(folder: Path, clouds: np.ndarray) -> list[Path]:
    """Clouds ``(n, N, 3)`` as ``folder/sample_000.ply``, ``sample_001.ply``, ... (the folder is made)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_ply(folder / f"sample_{i:03d}.ply", cloud) for i, cloud in enumerate(clouds)]


def render_clouds(clouds: list[np.ndarray], path: str | Path, colors: list[np.ndarray] | None = None,
                  titles: list[str] | None = None, point_size: float = 2.0) -> Path:
    """One 3-D scatter per cloud (y up, same view and limits, centred on the clouds' common bounding box) in a
    PNG; ``colors`` are per-point RGB ``(N, 3)`` or RGBA ``(N, 4)``.

    Without ``colors``, points are shaded by their distance from the viewer (near: dark, far: light) and
    drawn far to near, so that the shape reads in depth.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(clouds)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig = plt.figure(figsize=(3 * cols, 3 * rows), dpi=100)
    everything = np.concatenate(clouds)
    centre = (everything.max(0) + everything.min(0)) / 2
    clouds = [c - centre for c in clouds]
    limit = max(float(np.abs(c).max()) for c in clouds)
    elev, azim = np.radians(20), np.radians(-60)
    towards_viewer = np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])
    for i, cloud in enumerate(clouds):
        ax = fig.add_subplot(rows, cols, i + 1, projection="3d")
        xyz = cloud[:, [0, 2, 1]]  # plotted axes: x, z, y (y up)
        if colors is None:
            depth = xyz @ towards_viewer
            order = np.argsort(depth)
            xyz, c = xyz[order], plt.cm.viridis_r(np.clip((depth[order] + limit) / (2 * limit), 0, 1) * 0.85)
        else:
            c = colors[i]
        ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], s=point_size, c=c, depthshade=False)
        ax.set_xlim(-limit, limit), ax.set_ylim(-limit, limit), ax.set_zlim(-limit, limit)
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=np.degrees(elev), azim=np.degrees(azim))
        ax.set_axis_off()
        if titles:
            ax.set_title(titles[i], fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
