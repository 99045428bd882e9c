"""Video datasets: built-in moving handwritten digits, and folders of real videos.

Items are float clips ``(T, C, H, W)`` in ``[-1, 1]``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from multigen.domain import spread

from .io import (IMAGE_SUFFIXES, READ_SUFFIXES, READABLE, VideoReadError, count_frames, frame_files, from_uint8,
                 read_video, videos_in)


def frames_to_clip(frames: np.ndarray, size: int, channels: int) -> Tensor:
    """uint8 ``(T, H, W, C)`` -> ``(T, channels, size, size)`` in ``[-1, 1]``.

    The shorter side is resized to ``size`` (antialiased bilinear), then the centre is
    cropped; frames already ``size x size`` are not resampled, so they convert exactly.
    RGB becomes grey by ITU-R 601 luma; grey becomes RGB by repetition.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    clip = from_uint8(frames)
    h, w = clip.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        clip = F.interpolate(clip, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        clip = clip[:, :, top : top + size, left : left + size].clamp(-1, 1)
    return to_channels(clip, channels).contiguous()


def to_channels(images: Tensor, channels: int) -> Tensor:
    """``(..., C, H, W)`` -> ``(..., channels, H, W)``: RGB to grey by ITU-R 601 luma, grey to RGB by repetition (a
    view); other counts unchanged."""
    c = images.shape[-3]
    if c == 3 and channels == 1:
        return (images * images.new_tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(-3, keepdim=True)
    if c == 1 and channels == 3:
        return images.expand(*images.shape[:-3], 3, -1, -1)
    return images


@lru_cache(maxsize=1)
def _digit_images() -> Tensor:
    """scikit-learn's 1 797 bundled 8x8 handwritten digits, ``(N, 8, 8)`` in ``[0, 1]``."""
    from sklearn.datasets import load_digits

    return torch.from_numpy(load_digits().images).float() / 16.0


def _bounce(start: Tensor, velocity: Tensor, steps: Tensor, limit: float) -> Tensor:
    """Positions ``start + velocity * t`` reflected into ``[0, limit]``, for all ``t`` at once."""
    u = (start + velocity * steps) % (2 * limit)
    return torch.where(u <= limit, u, 2 * limit - u)


def item_generator(i: int, length: int, seed: int) -> torch.Generator:
    """The generator that makes item ``i`` of a synthetic set of ``length`` clips: seeded by ``seed`` and ``i``
    alone, so an item is the same however the set is read (``IndexError`` outside ``[0, length)``)."""
    if not 0 <= i < length:
        raise IndexError(i)
    return torch.Generator().manual_seed(seed * 1_000_003 + i)


class MovingDigits(Dataset):
    """Bouncing handwritten digits (scikit-learn's bundled digits; nothing is downloaded).

    Item ``i`` is generated from ``(seed, i)`` alone, so the dataset costs no memory and
    repeats exactly. ``digit_split`` picks a fixed 80 % (``"train"``) or 20 % (``"val"``)
    of the handwriting, so validation clips show unseen digits.
    """

    def __init__(
        self,
        length: int,
        frames: int = 8,
        size: int = 32,
        channels: int = 1,
        num_digits: tuple[int, int] = (1, 2),
        seed: int = 0,
        digit_split: str = "all",
    ) -> None:
        if digit_split not in ("train", "val", "all"):
            raise ValueError(f"digit_split must be 'train', 'val' or 'all', got {digit_split!r}")
        if not 1 <= num_digits[0] <= num_digits[1]:
            raise ValueError(f"num_digits must be (min, max) with 1 <= min <= max, got {num_digits}")
        self.length, self.frames, self.size, self.channels = length, frames, size, channels
        self.num_digits, self.seed = num_digits, seed
        images = _digit_images()
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        cut = int(0.8 * len(images))
        chosen = {"train": order[:cut], "val": order[cut:], "all": order}[digit_split]
        self.digit = max(4, round(size * 0.45))
        self.images = F.interpolate(images[chosen, None], size=(self.digit, self.digit), mode="bilinear",
                                    align_corners=False).clamp(0, 1)[:, 0]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Tensor:
        g = item_generator(i, self.length, self.seed)
        lo, hi = self.num_digits
        n = int(torch.randint(lo, hi + 1, (1,), generator=g))
        T, S, d = self.frames, self.size, self.digit
        limit = float(S - d)
        canvas = torch.zeros(T, S, S)
        steps = torch.arange(T, dtype=torch.float32)[:, None]
        rows, cols = torch.arange(d), torch.arange(d)
        t_idx = torch.arange(T)[:, None, None]
        for _ in range(n):
            img = self.images[int(torch.randint(len(self.images), (1,), generator=g))]
            start = torch.rand(2, generator=g) * limit
            angle = torch.rand(1, generator=g) * 2 * torch.pi
            speed = 1.0 + 2.0 * torch.rand(1, generator=g)
            velocity = torch.cat([torch.sin(angle), torch.cos(angle)]) * speed
            pos = _bounce(start, velocity, steps, limit).round().long()  # (T, 2): row, col of the corner
            r = (pos[:, :1] + rows)[:, :, None]
            c = (pos[:, 1:] + cols)[:, None, :]
            canvas[t_idx, r, c] = torch.maximum(canvas[t_idx, r, c], img)
        clip = canvas[:, None] * 2 - 1
        return clip.expand(-1, self.channels, -1, -1).contiguous()


def _videos_under(root: Path) -> list[Path]:
    """Every video file under ``root`` and every folder (``root`` too) directly holding frame images, sorted;
    hidden files and folders (such as a cache) are skipped; linked folders are followed, each folder once."""
    videos: set[Path] = set()
    seen: set[str] = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        dirs[:] = [] if real in seen else [d for d in dirs if not d.startswith(".")]
        if real in seen:
            continue
        seen.add(real)
        for name in names:
            path, suffix = Path(folder, name), Path(name).suffix.lower()
            if name.startswith(".") or not path.is_file():  # a dangling link is no video
                continue
            if suffix in READ_SUFFIXES:
                videos.add(path)
            elif suffix in IMAGE_SUFFIXES:
                videos.add(Path(folder))
    return sorted(videos)


def _signature(video: Path) -> tuple[int | str, float]:
    """Size and modification time of a video file; of a frame folder, its frames' names and total size, and
    their latest modification (an added, removed, renamed or rewritten frame changes it; the folder's own time,
    which a cache written into it changes too, is not part of it)."""
    if not video.is_dir():
        st = video.stat()
        return st.st_size, st.st_mtime
    files = frame_files(video)
    stats = [p.stat() for p in files]
    names = hashlib.sha1("\n".join(p.name for p in files).encode()).hexdigest()[:16]
    return f"{len(files)} frames, {sum(st.st_size for st in stats)} bytes, names {names}", max(
        (st.st_mtime for st in stats), default=0.0)


def _split(items: list[int], split: str) -> list[int]:
    """``items`` for ``split="all"``; their last tenth (at least one, of two or more) for ``"val"``; the rest for
    ``"train"``."""
    held_out = math.ceil(len(items) / 10) if len(items) > 1 else 0
    return {"all": items, "train": items[: len(items) - held_out], "val": items[len(items) - held_out:]}[split]


class VideoFolder(Dataset):
    """Clips from every video under ``root`` (recursive): the files :func:`video.io.read_video` reads, and
    every folder that directly holds frame images, which is one video (its frames in natural order of name).

    Each video gives all its non-overlapping clips of ``frames`` frames taken every
    ``stride`` frames. ``split="all"`` keeps them all; ``"val"`` keeps the last tenth (at least
    one) of each video's clips in time, from videos of two or more clips, and ``"train"`` the
    rest, so one folder gives disjoint training and held-out frames; of a ``.npy`` of several
    videos ``(N, T, H, W, C)`` with N >= 2, the last tenth of its videos (at least one) is held out
    whole. Frame counts are cached in ``cache_path`` (default ``<root>/.multigen_index.json``), keyed
    by size and modification time (a frame folder's: its frames' names, sizes and times). A video that
    cannot be decoded, is empty or is too short raises :class:`VideoReadError` naming it, or with
    ``skip_corrupt=True`` is skipped with a warning.
    """

    def __init__(
        self,
        root: str | Path,
        frames: int = 8,
        size: int = 32,
        channels: int = 3,
        stride: int = 1,
        skip_corrupt: bool = False,
        cache_path: str | Path | None = None,
        split: str = "all",
    ) -> None:
        if split not in ("all", "train", "val"):
            raise ValueError(f"unknown split {split!r}; use 'all', 'train' or 'val'")
        self.root = Path(root)
        if self.root.is_file():
            raise NotADirectoryError(f"video folder {self.root} is a file: give the folder that holds the videos")
        if not self.root.is_dir():
            raise FileNotFoundError(f"video folder not found: {self.root}")
        self.frames, self.size, self.channels, self.stride = frames, size, channels, stride
        files = _videos_under(self.root)
        if not files:
            raise FileNotFoundError(f"no videos in {self.root} (searched recursively for {READABLE})")
        counts = self._index(files, Path(cache_path) if cache_path else self.root / ".multigen_index.json")
        span = (frames - 1) * stride + 1
        self.clips: list[tuple[Path, int | None, int]] = []  # (file, its video in a .npy of several, first frame)
        skipped = 0
        for path in files:
            count = counts[str(path.relative_to(self.root))]
            videos, n = (None, 0) if isinstance(count, str) else count
            kind = " (a folder of frame images, read as one video)" if path.is_dir() else ""
            problem = (f"cannot be read ({count})" if isinstance(count, str)
                       else f"has {n} frames{kind}, fewer than the {span} a clip needs" if n < span else None)
            if problem:
                if not skip_corrupt:
                    raise VideoReadError(f"{path} {problem} (set data.skip_corrupt=true to skip such files)")
                warnings.warn(f"skipping {path}: it {problem}", stacklevel=2)
                skipped += 1
                continue
            starts = list(range(0, n - span + 1, span))
            if videos is None or videos == 1:  # one video: its last clips are held out
                self.clips.extend((path, None if videos is None else 0, s) for s in _split(starts, split))
            else:  # several videos in one .npy: whole videos are held out
                self.clips.extend((path, v, s) for v in _split(list(range(videos)), split) for s in starts)
        if not self.clips:
            which = {"all": "", "train": "training ", "val": "held-out (each video's last tenth, from videos of 2 "
                     "or more clips, or files of 2 or more videos) "}[split]
            unusable = f" ({skipped} of its {len(files)} videos skipped as unreadable or too short)" if skipped else ""
            raise VideoReadError(f"no usable {which}clips of {frames} frames (stride {stride}) in {self.root}"
                                 f"{unusable}")

    def _index(self, files: list[Path], cache: Path) -> dict[str, tuple[int | None, int] | str]:
        """Videos and frames a video per file (for one that cannot be read, why), reusing the cache where size and
        mtime match (a frame folder's: its frames' total size and latest modification)."""
        try:
            cached = json.loads(cache.read_text()) if cache.is_file() else {}
        except (OSError, ValueError):
            cached = {}
        fresh: dict[str, dict] = {}
        stale = []
        for path in files:
            key, (size, mtime) = str(path.relative_to(self.root)), _signature(path)
            entry = cached.get(key)
            if not (entry and entry["size"] == size and entry["mtime"] == mtime and "videos" in entry):
                entry = {"size": size, "mtime": mtime}  # read below
                stale.append((path, entry))
            fresh[key] = entry
        # a bar for many files to read, on the first process of each machine (every process indexes)
        quiet = len(stale) < 50 or int(os.environ.get("LOCAL_RANK", "0")) > 0
        for path, entry in tqdm(stale, desc="indexing videos", disable=quiet):
            videos, frames, error = None, None, None
            try:
                videos = videos_in(path)  # None: one video
                frames = count_frames(path, None if videos is None else 0)  # the videos of a .npy share it
            except VideoReadError as e:
                error = str(e).removeprefix(f"{path}: ")
            entry.update(videos=videos, frames=frames, error=error)
        out = {key: (e["videos"], e["frames"]) if e["error"] is None else e["error"] for key, e in fresh.items()}
        if fresh != cached:
            tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")  # the processes of a run index at once
            try:
                tmp.write_text(json.dumps(fresh))
                tmp.replace(cache)
            except OSError as e:
                warnings.warn(f"could not write the video index cache {cache}: {e}", stacklevel=3)
        return out

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> Tensor:
        return frames_to_clip(self.frames_of(i), self.size, self.channels)

    def frames_of(self, i: int) -> np.ndarray:
        """Clip ``i``'s frames as read, uint8 ``(T, H, W, C)`` (before resizing and the channel conversion)."""
        path, video, start = self.clips[i]
        return read_video(path, list(range(start, start + (self.frames - 1) * self.stride + 1, self.stride)), video)

    def in_colour(self, clips: int = 8) -> bool:
        """Whether the channels of any of ``clips`` clips spread evenly over the set differ (by more than 12 of 255
        levels anywhere): colour videos, not grey ones decoded as RGB (whose chroma rounding moves a channel a level
        or two). More than the first clip: a video may open on black."""
        for i in spread(len(self), clips):
            frames = self.frames_of(i).astype(np.int16)
            if frames.shape[-1] == 3 and (frames.max(-1) - frames.min(-1)).max() > 12:
                return True
        return False
