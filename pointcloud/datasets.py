"""Point-cloud datasets from files: PointFlow's ShapeNetCore.v2.PC15k layout and folders of meshes/points.

Both return raw clouds ``(points, 3)`` float64 in the files' units (float32 would round away a shape that lies far
from the origin, a scan in map coordinates, before it is normalised); :class:`Normalizer` maps them into the model's
frame (the unit ball, float32) and back. A cloud is a fixed,
seeded subset of its file's points (or surface samples of its mesh), so an epoch is
the same at every resume; :class:`Resampled` draws training clouds afresh from larger ones.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from multigen.config import first_line
from multigen.domain import load_npy, spread

from .io import MESH_SUFFIXES, POINT_SUFFIXES, PointCloudError, check_points, read_points
from .shapes import normalize

# ShapeNetCore.v2 synset ids of the common categories (others can be given by id).
SHAPENET_SYNSETS = {
    "airplane": "02691156", "bench": "02828884", "bottle": "02876657", "bus": "02924116", "cabinet": "02933112",
    "car": "02958343", "chair": "03001627", "display": "03211117", "guitar": "03467517", "lamp": "03636649",
    "laptop": "03642806", "loudspeaker": "03691459", "motorcycle": "03790512", "mug": "03797390",
    "rifle": "04090263", "sofa": "04256520", "table": "04379243", "telephone": "04401088", "vessel": "04530566",
}


def _subsample(points: np.ndarray, n: int, seed: int, source: str, least: int | None = None) -> np.ndarray:
    """``n`` of ``points`` without replacement, the same subset for the same ``seed``; with ``least``, a file of
    fewer than ``n`` (but at least ``least``) points gives all of them (a training pool, :class:`Resampled`)."""
    need = n if least is None else least
    if len(points) < need:
        raise PointCloudError(f"{source} has {len(points)} points; the model takes {need}")
    n = min(n, len(points))
    idx = np.random.default_rng(seed).choice(len(points), n, replace=False)
    return points[np.sort(idx)].astype(np.float64)


def _seed_of(path: Path, seed: int) -> int:
    return int.from_bytes(hashlib.sha1(f"{path.name}:{seed}".encode()).digest()[:4], "little")


class ShapeNetPC15k(Dataset):
    """``<root>/<synset>/<split>/*.npy`` (15 000 points each), ``categories`` by name or synset id.

    ``split`` is ``train``, ``val`` or ``test``; ``val`` falls back to ``test`` when a category has no
    ``val`` folder (PointFlow ships train/val/test). With ``least``, files of fewer than ``points`` points (at
    least ``least``) give all of theirs.
    """

    def __init__(self, root: str | Path, categories: list[str], split: str, points: int, seed: int = 0,
                 least: int | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"ShapeNet PC15k root {root} not found (expected <root>/<synset>/<split>/*.npy)")
        if not categories:
            raise ValueError("data.categories is empty: name at least one category (e.g. chair) or synset id")
        self.files: list[Path] = []
        self.labels: list[int] = []  # each file's index into categories
        for label, category in enumerate(categories):
            synset = SHAPENET_SYNSETS.get(category, category)
            folder = root / synset
            if not folder.is_dir():
                known = ", ".join(sorted(SHAPENET_SYNSETS))
                raise FileNotFoundError(f"category {category!r}: {folder} not found (names: {known}; or a synset id)")
            split_dir = folder / split
            if split == "val" and not split_dir.is_dir():
                split_dir = folder / "test"
            files = sorted(split_dir.glob("*.npy"))
            if not files:
                raise FileNotFoundError(f"category {category!r}: no .npy clouds in {split_dir}")
            self.files += files
            self.labels += [label] * len(files)
        self.points, self.seed, self.least = points, seed, least

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        path = self.files[i]
        cloud = check_points(np.asarray(load_npy(path, PointCloudError), dtype=np.float64), str(path),
                             need_extent=True)
        return torch.from_numpy(_subsample(cloud, self.points, _seed_of(path, self.seed), str(path), self.least))


class ShapeFolder(Dataset):
    """Every mesh (``.obj/.off/.stl/.ply``) and point file (``.npy/.pt/.xyz/.txt/.ply``) under ``root``,
    recursively. Meshes are sampled to ``points`` surface points (area-weighted) once and cached as
    ``.npy`` under ``cache_dir`` (default ``<root>/.multigen_cache``), keyed by path, size, mtime,
    ``points``, the seed and ``least``. Files and folders whose names start with a dot (caches, Jupyter's
    checkpoints, macOS's ``._`` files) are not shapes. Folders named ``train`` and ``val`` (or, with no ``val``,
    ``test``: ModelNet's ``<class>/train``, ``<class>/test``) anywhere under ``root`` are the splits when both
    kinds exist; otherwise every tenth file (sorted) is validation, or the last of 2 to 9 files. With ``least``,
    point files of fewer than ``points`` points (at least ``least``) give all of theirs.
    """

    def __init__(self, root: str | Path, split: str, points: int, seed: int = 0, cache_dir: str | Path = "",
                 least: int | None = None) -> None:
        root = Path(root)
        if root.is_file():
            raise NotADirectoryError(f"shape folder {root} is a file: give the folder that holds the shapes")
        if not root.is_dir():
            raise FileNotFoundError(f"shape folder {root} not found")
        if split not in ("train", "val"):
            raise ValueError(f"unknown split {split!r}; use 'train' or 'val'")
        suffixes = set(POINT_SUFFIXES + MESH_SUFFIXES)
        cache = Path(cache_dir) if cache_dir else root / ".multigen_cache"
        # never shapes: this cache (given absolute beside a relative root, or the reverse), nor the default one that an
        # earlier run with another cache_dir may have filled
        caches = {cache.resolve(), (root / ".multigen_cache").resolve()}

        every = sorted(p for p in root.rglob("*") if p.suffix.lower() in suffixes
                       and not any(part.startswith(".") for part in p.relative_to(root).parts)
                       and not any(p.resolve().is_relative_to(c) for c in caches))
        folders = {p: {"train", "val", "test"} & set(p.relative_to(root).parts[:-1]) for p in every}
        named = set().union(*folders.values())
        held_out = "val" if "val" in named else "test"
        if "train" in named and held_out in named:  # split folders: shapes outside them are in neither split
            self.files = [p for p in every if ("train" if split == "train" else held_out) in folders[p]]
        else:
            val = set(range(9, len(every), 10)) or ({len(every) - 1} if len(every) > 1 else set())
            self.files = [p for i, p in enumerate(every) if (i in val) == (split == "val")]
        if not self.files:
            raise FileNotFoundError(f"no {split} shapes ({', '.join(sorted(suffixes))}) under {root}")
        self.points, self.seed, self.cache, self.least = points, seed, cache, least

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        path = self.files[i]
        stat = path.stat()
        least = "" if self.least is None else f":{self.least}"  # a pool's entry (fixed clouds keep their keys)
        key = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{self.points}:{self.seed}{least}"
                           ":float64".encode())  # (float32 caches rounded far-off shapes: made anew)
        cached = self.cache / f"{key.hexdigest()}.npy"
        if cached.is_file():
            try:
                array = np.load(cached)
            except (ValueError, EOFError, OSError) as e:  # cut short (a killed run, a full disk): made anew below
                warnings.warn(f"{cached}, the cache of {path}, is damaged ({first_line(e)}): reading {path} again")
            else:  # checked again: a cache an older multigen wrote may hold what it let through
                return torch.from_numpy(check_points(array, f"{path} (cached as {cached})", need_extent=True))
        seed = _seed_of(path, self.seed)
        points = read_points(path, num_points=self.points, seed=seed, need_extent=True)
        cloud = _subsample(points, self.points, seed, str(path), self.least)
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp.npy")  # the processes of a run fill one cache at once
        np.save(tmp, cloud)
        tmp.replace(cached)
        return torch.from_numpy(cloud)


class Normalizer:
    """Raw clouds to the model's frame and back.

    * ``shape``: each cloud centred on its bounding box and scaled into the unit sphere (PointFlow's
      per-shape normalisation; the units of a generated shape are lost);
    * ``global``: one ``centre`` (3,) and ``scale`` for the whole dataset (training clouds' mean, and the
      largest distance from it), stored in the config so outputs return to the data's units;
    * ``none``: clouds are used as they are (they should lie in the unit ball).
    """

    def __init__(self, mode: str, centre: list[float] | None = None, scale: float = 0.0) -> None:
        if mode not in ("shape", "global", "none"):
            raise ValueError(f"unknown normalization {mode!r}; choose 'shape', 'global' or 'none'")
        if mode == "global" and not scale > 0:
            raise ValueError("global normalization needs its statistics: use Normalizer.fit on the training clouds")
        self.mode, self.scale = mode, scale
        self.centre = torch.tensor(centre or [0.0, 0.0, 0.0], dtype=torch.float64)

    @classmethod
    def fit(cls, clouds: Dataset, max_shapes: int = 2000, centre: list[float] | None = None) -> Normalizer:
        """Global statistics from (up to ``max_shapes`` evenly spread) training clouds: their mean (unless
        ``centre`` is given) and the largest distance from it."""
        points = torch.cat([clouds[i].double() for i in spread(len(clouds), max_shapes)])  # type: ignore[arg-type]
        centre = points.mean(0) if not centre else torch.tensor(centre, dtype=torch.float64)
        scale = float((points - centre).norm(dim=1).max())
        return cls("global", centre.tolist(), scale)

    def __call__(self, cloud: Tensor) -> Tensor:
        """A raw cloud ``(N, 3)`` (float64 from the datasets) in the model's frame, float32."""
        if self.mode == "shape":
            return torch.from_numpy(normalize(cloud.double().numpy()).astype(np.float32))
        if self.mode == "global":
            return ((cloud.double() - self.centre) / self.scale).float()
        return cloud.float()

    def invert(self, cloud: Tensor) -> Tensor:
        """Model-frame clouds ``(..., 3)`` back in the data's units (``shape``: unit-sphere frame)."""
        return cloud * self.scale + self.centre.to(cloud) if self.mode == "global" else cloud


class Resampled(Dataset):
    """``points`` of each of ``pools``' clouds ``(P, 3)``, a fresh random subset at every access (PointFlow's
    training draw from 15 000 points per shape): the model sees many samplings of a shape instead of learning one.
    The subsets come from the global torch RNG, whose state the trainer checkpoints, so a resumed run (data loader
    in the main process) draws what an uninterrupted one would."""

    def __init__(self, pools: Dataset, points: int) -> None:
        self.pools, self.points = pools, points

    def __len__(self) -> int:
        return len(self.pools)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Tensor:
        pool = self.pools[i]
        if len(pool) < self.points:
            raise PointCloudError(f"shape {i} has {len(pool)} points; {self.points} are drawn from it")
        return pool[torch.randperm(len(pool))[: self.points]]


class NormalizedClouds(Dataset):
    """``clouds`` mapped by ``normalizer``."""

    def __init__(self, clouds: Dataset, normalizer: Normalizer) -> None:
        self.clouds, self.normalizer = clouds, normalizer

    def __len__(self) -> int:
        return len(self.clouds)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Tensor:
        return self.normalizer(self.clouds[i])


class Labelled(Dataset):
    """``(cloud, label)`` pairs: each of ``clouds`` with its class index from ``labels`` ``(len(clouds),)``."""

    def __init__(self, clouds: Dataset, labels: Tensor) -> None:
        if len(labels) != len(clouds):  # type: ignore[arg-type]
            raise ValueError(f"{len(labels)} labels for {len(clouds)} clouds")  # type: ignore[arg-type]
        self.clouds, self.labels = clouds, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.clouds[i], self.labels[i]
