"""Label maps for categorical diffusion: int64 grids ``(size, size)`` of class ids in ``[0, classes)``.

* :func:`read_label_maps` reads a folder of label images (PNG, BMP, TIFF; palette images give their palette
  indices, grey ones, 8- or 16-bit, their values), one label image, or a ``.npy`` integer array ``(N, H, W)``;
  :func:`infer_classes` counts their classes;
* :class:`LabelMaps` resizes them (nearest neighbour) so their short side is ``size`` and cuts a square: a random
  one in training, the centred one for held-out maps;
* :class:`SceneMaps` are the built-in data: procedural street scenes (:data:`SCENE_CLASSES`) in perspective, a
  road to a vanishing point, buildings on the horizon, trees and cars that shrink with distance and hide what is
  behind them; a fresh scene for every index, so nothing is downloaded and the held-out scenes are never trained on;
* :func:`boundary_rate` and :func:`class_distance` compare samples with held-out maps;
* :func:`colour` draws label maps in a fixed palette (class 0 black, as in Pascal VOC's).
"""

from __future__ import annotations

import os
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from multigen.domain import load_npy, natural_key

from .data import TokenError

SCENE_CLASSES = ("sky", "grass", "road", "building", "tree", "car")
LABEL_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
_ID_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B")  # Pillow modes whose pixel values are ids
_ID_FORMATS = ("PNG", "BMP", "TIFF")  # lossless: the ids read back as written
MAX_CLASSES = 65536  # what a 16-bit label image holds


def read_label_image(path: Path) -> Tensor:
    """One label image as int64 ``(H, W)``: a palette image's indices, a grey image's values (8 or 16 bits).
    Colour and float images are refused (their pixels are not class ids), and so are lossy ones (JPEG)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            kind, mode, ids, pages = img.format, img.mode, np.asarray(img), getattr(img, "n_frames", 1)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise TokenError(f"{path} is not a readable label image: {e}") from e
    if kind not in _ID_FORMATS:
        raise TokenError(f"{path} is a {kind} image; label images are {', '.join(_ID_FORMATS)}"
                         + " (JPEG's compression changes the ids)" * (kind == "JPEG"))
    if pages > 1:
        raise TokenError(f"{path} holds {pages} images; a label image holds one map (save each page as a file)")
    if mode not in _ID_MODES:
        raise TokenError(f"{path} is a {mode} image; a label map holds one class id a pixel: save it as a palette "
                         f"(P) or grey (8- or 16-bit) image, or choose the id images with data.pattern (e.g. "
                         f"'*_labelIds.png' of Cityscapes)")
    return torch.from_numpy(ids.astype(np.int64))


def label_files(folder: Path, pattern: str = "*", exclude: Path | None = None) -> list[Path]:
    """The label images under ``folder`` (any depth) whose names match ``pattern``, in natural order of their paths
    (``m2`` before ``m10``); hidden files and folders, and the file or folder ``exclude`` (held-out maps inside the
    training folder), are skipped."""
    found = []
    skip = exclude.resolve() if exclude is not None else None
    if skip == folder.resolve():
        raise TokenError(f"{folder}: the held-out maps are the training maps themselves")
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (Path(root) / d).resolve() != skip)
        found += [Path(root) / n for n in names if not n.startswith(".") and n.lower().endswith(LABEL_SUFFIXES)
                  and fnmatch(n, pattern) and (Path(root) / n).resolve() != skip]
    return sorted(found, key=natural_key)


def read_label_maps(path: str | Path, pattern: str = "*", exclude: str | Path | None = None
                    ) -> tuple[list[Tensor], list[str]]:
    """Every label map of ``path`` (a folder of label images, less the folder ``exclude`` if inside it; one label
    image; or a ``.npy`` integer array ``(N, H, W)``) as int64 ``(H, W)`` tensors, with the name of each (its file,
    or ``path[i]``) for errors."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"label maps {path} not found")
    if path.is_dir():
        files = label_files(path, pattern, Path(exclude) if exclude else None)
        if not files:
            raise TokenError(f"{path} holds no label images matching {pattern!r} (suffixes {', '.join(LABEL_SUFFIXES)};"
                             f" JPEG is not one: its compression changes the ids)")
        return [read_label_image(f) for f in files], [str(f) for f in files]
    if path.suffix.lower() in LABEL_SUFFIXES:
        return [read_label_image(path)], [str(path)]
    if path.suffix.lower() != ".npy":
        raise TokenError(f"{path}: label maps are a folder of label images ({', '.join(LABEL_SUFFIXES)}), one of "
                         f"them, or a .npy array (N, H, W)")
    arr = load_npy(path, TokenError)
    if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.integer) or 0 in arr.shape:
        raise TokenError(f"{path} must hold label maps as a non-empty integer array (N, H, W), not {arr.dtype} "
                         f"{arr.shape}")
    if arr.max() >= MAX_CLASSES:  # also before int64 could wrap a large uint64
        raise TokenError(f"{path}: class id {arr.max()}; a label map's ids are below {MAX_CLASSES}")
    maps = torch.from_numpy(arr.astype(np.int64))
    return list(maps), [f"{path}[{i}]" for i in range(len(maps))]


def check_ids(maps: list[Tensor], names: list[str], classes: int) -> None:
    """Every id must be in ``[0, classes)``; the first map that breaks it is named."""
    for m, name in zip(maps, names):
        bad = (m < 0) | (m >= classes)
        if bad.any():
            value = int(m[bad][0])
            hint = " (255 is the 'ignore' value of Pascal VOC and Cityscapes: map it to a class first)" * (value == 255)
            raise TokenError(f"{name}: class id {value} is outside [0, {classes}) (data.vocab_size){hint}")


def infer_classes(maps: list[Tensor], names: list[str]) -> int:
    """The number of classes of ``maps``: their largest id + 1, which must be 2 to :data:`MAX_CLASSES`. A negative id
    is an error naming its map, and so is a largest id of 255 among few others (Pascal VOC's and Cityscapes'
    'ignore' value would become a class of its own and make 256)."""
    lows, highs = [int(m.min()) for m in maps], [int(m.max()) for m in maps]
    if min(lows) < 0:
        raise TokenError(f"{names[lows.index(min(lows))]}: class id {min(lows)} is negative")
    top = max(highs)
    where = names[highs.index(top)]
    if top + 1 < 2:
        raise TokenError(f"the label maps hold one class id ({top}); a model needs at least two classes")
    if top >= MAX_CLASSES:
        raise TokenError(f"{where}: class id {top}; a label map's ids are below {MAX_CLASSES}")
    used = torch.cat([m.flatten().unique() for m in maps]).unique()
    if top == 255 and len(used) < 128:
        raise TokenError(f"{where}: class id 255 among {len(used) - 1} others is likely the 'ignore' value of Pascal "
                         f"VOC and Cityscapes: map it to a class, or give data.vocab_size=256 to keep it as one")
    return top + 1


def short_side_to(m: Tensor, size: int) -> Tensor:
    """``m`` ``(H, W)`` resized by nearest neighbour so that its short side is ``size`` (the aspect kept)."""
    h, w = m.shape
    scale = size / min(h, w)
    H, W = (size, round(w * scale)) if h <= w else (round(h * scale), size)
    rows = ((torch.arange(H) + 0.5) * h / H).long().clamp(max=h - 1)
    cols = ((torch.arange(W) + 0.5) * w / W).long().clamp(max=w - 1)
    return m[rows[:, None], cols[None, :]]


class LabelMaps(Dataset):
    """Label maps cut to int64 ``(size, size)``: each resized so its short side is ``size``, then a random square
    of it (``random_crop``; drawn from torch's global generator) or the centred one."""

    def __init__(self, maps: list[Tensor], size: int, random_crop: bool) -> None:
        self.maps = [short_side_to(m, size).to(torch.int32) for m in maps]
        self.size, self.random_crop = size, random_crop

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, i: int) -> Tensor:
        m, s = self.maps[i], self.size
        h, w = m.shape
        if self.random_crop:
            top, left = (int(torch.randint(0, n - s + 1, ())) for n in (h, w))
        else:
            top, left = (h - s) // 2, (w - s) // 2
        return m[top : top + s, left : left + s].long()


def boundary_rate(maps: Tensor) -> float:
    """The share of neighbouring pixel pairs (side by side or one above the other) of ``maps`` ``(N, H, W)`` whose
    classes differ: how much edge a map has. Stray pixels inside a region raise it; smooth maps have little."""
    across = (maps[..., :, 1:] != maps[..., :, :-1]).float()
    down = (maps[..., 1:, :] != maps[..., :-1, :]).float()
    return ((across.sum() + down.sum()) / (across.numel() + down.numel())).item()


def class_distance(a: Tensor, b: Tensor, classes: int) -> float:
    """Total variation distance between the class frequencies of the maps ``a`` and ``b``: 0 for the same mix of
    classes, 1 for no class in common."""
    fa, fb = (torch.bincount(m.flatten(), minlength=classes).double() / m.numel() for m in (a, b))
    return 0.5 * (fa - fb).abs().sum().item()


def scene_map(size: int, seed: int) -> Tensor:
    """One procedural street scene, int64 ``(size, size)`` with ids of :data:`SCENE_CLASSES` (rows top to bottom).

    Sky above a horizon at 30-55 % of the height, grass below it; up to three buildings standing on the horizon; a
    road from a vanishing point on the horizon widening to the bottom edge; up to three trees beside the road and two
    cars on it, each the larger the nearer (lower) its base, drawn far to near so the nearer hides the farther."""
    rng = np.random.default_rng(seed)
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size  # pixel centres in (0, 1)
    horizon = rng.uniform(0.3, 0.55)
    m = np.where(y < horizon, 0, 1)
    for _ in range(rng.integers(0, 4)):
        left, width, height = rng.uniform(-0.1, 0.9), rng.uniform(0.1, 0.3), rng.uniform(0.08, horizon)
        m[(x >= left) & (x < left + width) & (y >= horizon - height) & (y < horizon)] = 3
    vanish, half = rng.uniform(0.3, 0.7), rng.uniform(0.25, 0.5)  # half the road's width at the bottom edge
    near = np.clip((y - horizon) / (1 - horizon), 0, 1)  # 0 on the horizon, 1 at the bottom edge
    m[(y >= horizon) & (np.abs(x - vanish) < half * near)] = 2
    objects = [("tree", rng.uniform(horizon + 0.05, 1.05)) for _ in range(rng.integers(0, 4))]
    objects += [("car", rng.uniform(horizon + 0.1, 1.05)) for _ in range(rng.integers(0, 3))]
    for kind, base in sorted(objects, key=lambda o: o[1]):
        depth = (base - horizon) / (1 - horizon)
        if kind == "tree":
            r = 0.03 + 0.1 * depth
            cx = vanish + rng.choice([-1, 1]) * (half * depth + r + rng.uniform(0, 0.15))
            trunk = (np.abs(x - cx) < 0.3 * r) & (y < base) & (y >= base - 2 * r)
            crown = (x - cx) ** 2 + (y - (base - 2.2 * r)) ** 2 < r**2
            m[trunk | crown] = 4
        else:
            w = 0.06 + 0.25 * depth
            cx = vanish + rng.uniform(-0.7, 0.7) * half * depth
            m[(np.abs(x - cx) < w / 2) & (y < base) & (y >= base - 0.55 * w)] = 5
    return torch.from_numpy(m.astype(np.int64))


class SceneMaps(Dataset):
    """``num`` procedural street scenes ``(size, size)`` (:func:`scene_map`), scene ``i`` drawn from seed
    ``first + i``: the training split starts at 0, the held-out one at 10**9."""

    def __init__(self, num: int, size: int, split: str = "train") -> None:
        self.num, self.size, self.first = num, size, 0 if split == "train" else 10**9

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, i: int) -> Tensor:
        if not 0 <= i < self.num:
            raise IndexError(f"scene {i} of {self.num}")
        return scene_map(self.size, self.first + i)


def palette(classes: int) -> Tensor:
    """uint8 ``(classes, 3)`` colours: Pascal VOC's bit-interleaved palette (class 0 black), distinct for 256."""
    ids = torch.arange(classes)
    rgb = torch.zeros(classes, 3, dtype=torch.long)
    for bit in range(8):
        for c in range(3):
            rgb[:, c] |= ((ids >> (3 * bit + c)) & 1) << (7 - bit)
    return rgb.to(torch.uint8)


def colour(maps: Tensor, classes: int) -> Tensor:
    """Label maps ``(..., H, W)`` as uint8 RGB ``(..., H, W, 3)`` in :func:`palette`'s colours."""
    return palette(classes)[maps.clamp(0, classes - 1)]


def write_label_image(m: Tensor, path: Path, classes: int) -> Path:
    """``m`` ``(H, W)`` as a label image :func:`read_label_image` reads back exactly: a palette PNG in
    :func:`palette`'s colours for up to 256 classes, else a 16-bit grey PNG (up to 65 536)."""
    from PIL import Image

    if classes > MAX_CLASSES:
        raise ValueError(f"{classes} classes: a PNG label image holds at most {MAX_CLASSES}")
    ids = m.cpu().numpy()
    if classes <= 256:
        img = Image.fromarray(ids.astype(np.uint8))
        img.putpalette(palette(classes).flatten().tolist())  # an L image becomes P, its values the indices
    else:
        img = Image.fromarray(ids.astype(np.uint16))
    img.save(path)
    return path
