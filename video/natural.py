"""Natural video from still photographs: camera pans, zooms and moving crops over the
photographs bundled in scikit-image's ``skimage.data`` (nothing is downloaded).

Items are float clips ``(T, C, H, W)`` in ``[-1, 1]``, like :class:`video.data.MovingDigits`.
Only images shipped inside the scikit-image wheel are used (those ``skimage.data`` would
fetch through pooch on first use are not). Validation clips come from photographs that
training never sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .data import item_generator, to_channels
from .io import from_uint8

try:
    import skimage.data
except ImportError as e:  # pragma: no cover - exercised by a test that hides scikit-image
    raise ImportError(
        "the natural video source (data.source=natural) needs scikit-image: "
        "pip install multigen-diffusion[video]"
    ) from e

# ``skimage.data`` loaders whose images ship in the scikit-image wheel (checked against 0.26 with the
# network unreachable and pooch absent). Synthetic images, scanned text and near-blank microscopy are left out.
TRAIN_PHOTOS = (
    "astronaut", "camera", "rocket", "stereo_motorcycle", "hubble_deep_field",
    "moon", "brick", "grass", "gravel", "immunohistochemistry",
)
VAL_PHOTOS = ("chelsea", "coffee", "coins")  # held out (3 of 13, 23 %): a colour animal, colour indoor, grey objects
KINDS = ("pan", "zoom", "pan_zoom")


@lru_cache(maxsize=None)
def _photo(name: str) -> Tensor:
    """One bundled photograph as a float ``(C, H, W)`` in ``[-1, 1]``, ``C`` 1 (grey) or 3 (RGB)."""
    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity); the left view
        image = image[0]
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    return from_uint8(image[None, ..., :3])[0]


@dataclass
class CameraPath:
    """A square crop window per frame, in pixels of the cached photo (``(T,)``/``(T, 2)`` tensors).

    ``center`` is ``(x, y)`` in continuous pixel coordinates (``0`` is the left/top edge),
    ``side`` the window's side length, ``angle`` its rotation in radians.
    """

    photo: int
    kind: str
    center: Tensor
    side: Tensor
    angle: Tensor


class NaturalVideo(Dataset):
    """Camera motion over bundled photographs: item ``i`` is a clip ``(T, C, S, S)`` in ``[-1, 1]``.

    Item ``i`` is generated from ``(seed, i)`` alone and repeats exactly. Each clip picks a
    photograph of ``split`` (``"train"``, ``"val"`` or ``"all"``) and a camera path:

    - ``pan``: a window of fixed size moving at constant velocity (0.5-2 output pixels per frame);
    - ``zoom``: a fixed centre, the window's side changing geometrically by a factor of
      ``exp(±[0.15, 0.35])`` over the clip (zooming in or out);
    - ``pan_zoom``: both at once, plus a rotation of up to ``rotation`` degrees per frame.

    The window always stays inside the photograph. Photographs are cached once, resized so
    that their shorter side is ``3 * size`` (antialiased), and a window spans 1-1.5 ``size``
    pixels at the start, so frames are resampled (bilinearly, all ``T`` at once) at close to
    their native scale.
    """

    def __init__(
        self,
        length: int,
        frames: int = 8,
        size: int = 32,
        channels: int = 1,
        seed: int = 0,
        split: str = "all",
        rotation: float = 1.0,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        names = {"train": TRAIN_PHOTOS, "val": VAL_PHOTOS, "all": TRAIN_PHOTOS + VAL_PHOTOS}.get(split)
        if names is None:
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        self.length, self.frames, self.size, self.channels = length, frames, size, channels
        self.seed, self.rotation, self.names = seed, rotation, names
        self.photos = [self._prepare(_photo(name)) for name in names]

    def _prepare(self, image: Tensor) -> Tensor:
        """``(C, H, W)`` -> ``(channels, h, w)`` with shorter side ``3 * size`` (antialiased bilinear)."""
        _, h, w = image.shape
        scale = 3 * self.size / min(h, w)
        resized = F.interpolate(image[None], size=(round(h * scale), round(w * scale)), mode="bilinear",
                                antialias=True, align_corners=False)[0].clamp(-1, 1)
        return to_channels(resized, self.channels).contiguous()

    def __len__(self) -> int:
        return self.length

    def camera(self, i: int) -> CameraPath:
        """The photograph and camera path of item ``i`` (what :meth:`__getitem__` renders)."""
        g = item_generator(i, self.length, self.seed)
        rand = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
        photo = int(torch.randint(len(self.photos), (1,), generator=g))
        kind = KINDS[int(torch.randint(len(KINDS), (1,), generator=g))]
        T, S = self.frames, self.size
        _, H, W = self.photos[photo].shape
        t = torch.arange(T, dtype=torch.float32)
        progress = t / max(T - 1, 1)

        side0 = S * (1.0 + 0.5 * rand(1))
        if kind == "pan":
            side = side0.expand(T)
        else:
            sign = 1.0 if rand(1) < 0.5 else -1.0
            side = side0 * torch.exp(sign * (0.15 + 0.2 * rand(1)) * progress)
        if kind == "zoom":
            velocity = torch.zeros(2)
        else:
            direction = 2 * math.pi * rand(1)
            speed = (0.5 + 1.5 * rand(1)) * side0 / S  # output pixels per frame -> photo pixels
            velocity = torch.cat([torch.cos(direction), torch.sin(direction)]) * speed
        spin = math.radians(self.rotation) * (2 * rand(1) - 1) if kind == "pan_zoom" else torch.zeros(1)
        angle = spin * t

        # Half-extent of each (rotated) window along x and y; the path must keep every window inside.
        half = side / 2 * (angle.cos().abs() + angle.sin().abs())  # (T,)
        room = (torch.tensor([W, H], dtype=torch.float32) - 2 * half.max()).clamp(min=0)  # free travel per axis
        travel = velocity.abs() * (T - 1)
        velocity = velocity * torch.clamp(room / travel.clamp(min=1e-6), max=1.0).min()  # keeps the direction
        shift = velocity * t[:, None]  # (T, 2)
        lo = (half[:, None] - shift).amax(0)  # first-frame centres that keep every window inside
        hi = (torch.tensor([W, H]) - half[:, None] - shift).amin(0)
        start = lo + (hi - lo).clamp(min=0) * rand(2)
        return CameraPath(photo, kind, start + shift, side, angle)

    def render(self, path: CameraPath) -> Tensor:
        """Sample the path's ``T`` windows from its photograph: ``(T, C, S, S)`` in ``[-1, 1]``."""
        image = self.photos[path.photo]
        _, H, W = image.shape
        cos, sin = path.angle.cos(), path.angle.sin()
        sx, sy = path.side / W, path.side / H  # window half-size in normalised coordinates (range [-1, 1])
        # affine_grid maps output coordinates in [-1, 1] to input coordinates in [-1, 1] (align_corners=False).
        theta = torch.stack([
            torch.stack([sx * cos, -sx * sin, 2 * path.center[:, 0] / W - 1], -1),
            torch.stack([sy * sin, sy * cos, 2 * path.center[:, 1] / H - 1], -1),
        ], 1)  # (T, 2, 3)
        T, C = len(theta), image.shape[0]
        grid = F.affine_grid(theta, [T, C, self.size, self.size], align_corners=False)
        clip = F.grid_sample(image.expand(T, -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                             align_corners=False)
        return clip.clamp(-1, 1).contiguous()

    def __getitem__(self, i: int) -> Tensor:
        return self.render(self.camera(i))
