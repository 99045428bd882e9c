"""Reading and writing videos.

On disk and in numpy a video is uint8 ``(T, H, W, C)``; inside multigen a clip is a float tensor
``(T, C, H, W)`` in ``[-1, 1]``. A video to read is a video file (decoded with decord, PyAV where
decord cannot), a ``.gif``, a ``.npy`` holding the uint8 array exactly (or several videos,
``(N, T, H, W, C)``), or a folder of frame images (``.png``, ``.jpg``, ...; in natural order of
their names, so ``frame_2`` comes before ``frame_10``). Videos are written as ``.mp4`` with PyAV,
``.gif`` with Pillow, or ``.npy``.
"""

from __future__ import annotations

import struct
import warnings
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from multigen.config import first_line
from multigen.domain import DataError, load_npy, natural_key

VIDEO_SUFFIXES = (".mp4", ".m4v", ".avi", ".webm", ".mov", ".mkv")
READ_SUFFIXES = VIDEO_SUFFIXES + (".gif", ".npy")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
WRITE_SUFFIXES = (".mp4", ".gif", ".npy")
READABLE = f"{', '.join(READ_SUFFIXES)}, or a folder of frame images ({', '.join(IMAGE_SUFFIXES)})"


class VideoReadError(DataError):
    """A video file could not be decoded, is empty, or has the wrong layout; the message names it."""


def frame_files(folder: Path) -> list[Path]:
    """The frame images directly inside ``folder``, in natural order of their names (hidden files skipped);
    remembered until the folder changes (a frame added, removed or renamed changes its modification time)."""
    return list(_listed_frames(folder, folder.stat().st_mtime_ns))


@lru_cache(maxsize=1024)
def _listed_frames(folder: Path, mtime_ns: int) -> tuple[Path, ...]:
    images = [p for p in folder.iterdir()
              if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")]
    return tuple(sorted(images, key=natural_key))


def _frames_of_folder(folder: Path) -> list[Path]:
    """:func:`frame_files`, or an error naming a folder that holds none."""
    files = frame_files(folder)
    if not files:
        raise VideoReadError(f"{folder}: a folder given as a video holds no frame images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _check(path: Path, video: int | None = None) -> None:
    if video is not None and (path.is_dir() or path.suffix.lower() != ".npy"):
        raise VideoReadError(f"{path}: holds one video, not several (only a .npy holds several)")
    if path.is_dir():
        return
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    if path.suffix.lower() not in READ_SUFFIXES:
        raise VideoReadError(f"{path}: unsupported video type {path.suffix!r}; supported: {READABLE}")


def _load_npy(path: Path, video: int | None = None) -> np.ndarray:
    """The memory-mapped uint8 ``(T, H, W, C)`` video of a ``.npy``; of a ``.npy`` of several videos
    ``(N, T, H, W, C)``, the one at index ``video``."""
    arr = load_npy(path, VideoReadError, mmap_mode="r")
    if arr.dtype != np.uint8 or arr.ndim not in (4, 5) or arr.shape[-1] not in (1, 3):
        hint = ("" if arr.dtype != np.uint8 else
                "; for RGBA frames, save their colour channels a[..., :3]" if arr.shape[-1:] == (4,) else
                "; for grey videos stored (T, N, H, W) as Moving MNIST's mnist_test_seq.npy, save "
                "a.transpose(1, 0, 2, 3)[..., None]" if arr.ndim == 4 else "")
        raise VideoReadError(f"{path}: expected uint8 (T, H, W, C), or (N, T, H, W, C) for N videos, with C in "
                             f"(1, 3), got {arr.dtype} {arr.shape}{hint}")
    if arr.ndim == 5:
        if arr.shape[0] == 0:
            raise VideoReadError(f"{path}: holds no videos (N, T, H, W, C) with N = 0")
        if video is None:
            raise VideoReadError(f"{path}: holds {arr.shape[0]} videos (N, T, H, W, C), not one; take one out "
                                 "(np.load(path)[i]) or train on its folder")
        if not 0 <= video < arr.shape[0]:
            raise VideoReadError(f"{path}: no video {video} among its {arr.shape[0]}")
        arr = arr[video]
    elif video is not None:
        raise VideoReadError(f"{path}: holds one video (T, H, W, C), not several")
    if arr.shape[0] == 0:
        raise VideoReadError(f"{path}: the video has no frames")
    if 0 in arr.shape[1:3]:
        raise VideoReadError(f"{path}: its frames are empty, {arr.shape[1]}x{arr.shape[2]} pixels (T, H, W, C)")
    return arr


def videos_in(path: str | Path) -> int | None:
    """N for a ``.npy`` of several videos ``(N, T, H, W, C)``; None for a source of one video."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() != ".npy":
        return None
    _check(path)
    arr = load_npy(path, VideoReadError, mmap_mode="r")
    return arr.shape[0] if arr.ndim == 5 else None


def _reader(path: Path):
    import decord

    try:
        vr = decord.VideoReader(str(path), num_threads=1)
    except Exception as e:  # decord raises its own DECORDError and RuntimeError
        raise VideoReadError(f"{path}: cannot decode video ({first_line(e, 200)})") from None
    if len(vr) == 0:
        raise VideoReadError(f"{path}: the video has no frames")
    return vr


def _open_image(path: Path, decode: bool = True):
    """The image at ``path`` (with ``decode=False`` only its header is read: format, size and mode)."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        if decode:
            image.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise VideoReadError(f"{path}: cannot read the image ({first_line(e, 200)})") from None
    return image


def _check_sizes(files: list[Path], sizes: list[tuple[int, int]]) -> None:
    """A ``VideoReadError`` naming the first frame whose ``(width, height)`` is not the first frame's."""
    for path, size in zip(files, sizes):
        if size != sizes[0]:
            raise VideoReadError(f"{path}: a frame of {size[0]}x{size[1]} pixels in a video of "
                                 f"{sizes[0][0]}x{sizes[0][1]} ({files[0].name}); a folder's frames share a size")


def _upright_size(image) -> tuple[int, int]:
    """``(width, height)`` of an image as a viewer shows it: swapped where its EXIF orientation turns it a quarter
    (read from the header alone)."""
    from PIL import ExifTags

    turned = image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
    return image.size[::-1] if turned else image.size


def _check_mode(path: Path, image) -> None:
    """A ``VideoReadError`` for a frame image whose pixels are not 8- or 16-bit (read from its header)."""
    if image.mode == "F":
        raise VideoReadError(f"{path}: a floating-point image; frames are 8- or 16-bit images")


def _count_frame_files(folder: Path) -> int:
    """The number of frames in a folder, each image's header read to check that it is an image of the first's size
    (upright, as :func:`_read_frames` reads it)."""
    files = _frames_of_folder(folder)
    sizes = []
    for path in files:
        with _open_image(path, decode=False) as image:
            _check_mode(path, image)
            try:  # (a PNG's EXIF may lie past its pixels: Pillow decodes them to reach it)
                sizes.append(_upright_size(image))
            except (OSError, SyntaxError, ValueError) as e:
                raise VideoReadError(f"{path}: cannot read the image ({first_line(e, 200)})") from None
    _check_sizes(files, sizes)
    return len(files)


GREY_MODES = ("L", "I", "I;16", "I;16L", "I;16B")  # 8-bit grey, and 16-bit grey (Pillow's "I" for some PNGs)


def _to_array(image, grey: bool) -> np.ndarray:
    """uint8 ``(H, W, 1)`` for a grey frame (``grey``; 16-bit values scaled by 255/65535), else ``(H, W, 3)`` RGB."""
    if image.mode != "L" and image.mode in GREY_MODES:
        wide = np.asarray(image).astype(np.float64) * (255 / 65535)
        frame = np.clip(np.rint(wide), 0, 255).astype(np.uint8)[..., None]
        return frame if grey else np.repeat(frame, 3, axis=-1)
    return np.asarray(image.convert("L"))[..., None] if grey else np.asarray(image.convert("RGB"))


def _read_frames(files: list[Path]) -> np.ndarray:
    """The frames of a folder in ``files``: grey ``C = 1`` where all are grey (8- or 16-bit), else RGB."""
    from PIL import ImageOps

    images = [ImageOps.exif_transpose(_open_image(path)) for path in files]  # upright, as a viewer shows them
    for path, image in zip(files, images):
        _check_mode(path, image)
    _check_sizes(files, [image.size for image in images])
    grey = all(im.mode in GREY_MODES for im in images)
    return np.stack([_to_array(im, grey) for im in images])


def _open_gif(path: Path):
    image = _open_image(path)
    if image.format != "GIF":
        raise VideoReadError(f"{path}: not a GIF (Pillow reads it as {image.format})")
    return image


@contextmanager
def _decoding_gif(path: Path):
    """Pillow's errors on a GIF cut short (raised deep inside it, an IndexError among them) as a VideoReadError."""
    try:
        yield
    except (IndexError, EOFError, OSError, ValueError) as e:
        raise VideoReadError(f"{path}: cannot decode the GIF ({first_line(e, 200) or type(e).__name__})") from None


def _read_gif(path: Path, indices: list[int] | None) -> np.ndarray:
    """The frames at ``indices`` (None: all) of a GIF as RGB (Pillow composes each frame over the previous ones),
    from one opening of the file."""
    frames = []
    with _open_gif(path) as image:
        with _decoding_gif(path):
            count = getattr(image, "n_frames", 1)
        wanted = _wanted(path, indices, count)
        with _decoding_gif(path):
            for i in wanted:
                image.seek(i)
                frames.append(_to_array(image, grey=False))
    return np.stack(frames)


def _gif_frames(path: Path) -> int:
    with _open_gif(path) as image, _decoding_gif(path):
        return getattr(image, "n_frames", 1)


def _wanted(path: Path, indices: list[int] | None, count: int) -> list[int]:
    """``indices`` (None: all ``count`` frames), checked to name frames of the video at ``path``."""
    wanted = list(range(count)) if indices is None else indices
    if not wanted:
        raise ValueError(f"{path}: no frame indices given")
    if any(not 0 <= i < count for i in wanted):
        raise VideoReadError(f"{path}: frame indices {min(wanted)}..{max(wanted)} outside its {count} frames")
    return wanted


def count_frames(path: str | Path, video: int | None = None) -> int:
    """Number of frames, without decoding them (``video``: the index of one in a ``.npy`` of several)."""
    path = Path(path)
    _check(path, video)
    if path.is_dir():
        return _count_frame_files(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _load_npy(path, video).shape[0]
    if suffix == ".gif":
        return _gif_frames(path)
    return len(_reader(path))


def read_video(path: str | Path, indices: list[int] | None = None, video: int | None = None) -> np.ndarray:
    """uint8 ``(T, H, W, C)`` frames of a video (all, or those at ``indices``): see the module's docstring.
    ``video`` picks one video of a ``.npy`` of several, ``(N, T, H, W, C)``."""
    path = Path(path)
    _check(path, video)
    suffix = path.suffix.lower()
    if path.is_dir():
        files = _frames_of_folder(path)  # listed, not opened: read on every item
        return _read_frames([files[i] for i in _wanted(path, indices, len(files))])
    if suffix == ".gif":
        return _read_gif(path, indices)
    if suffix == ".npy":
        arr = _load_npy(path, video)
        return np.array(arr if indices is None else arr[_wanted(path, indices, len(arr))])  # a writable copy
    vr = _reader(path)
    wanted = _wanted(path, indices, len(vr))
    try:
        return vr.get_batch(wanted).asnumpy()
    except Exception as e:  # decord 0.6 fails on frame widths that are not 32-aligned
        first_error = first_line(e, 200)
    try:
        return _read_with_pyav(path, wanted)
    except Exception as e:
        raise VideoReadError(f"{path}: decoding failed ({first_error}; PyAV: {e})") from None


def _read_with_pyav(path: Path, indices: list[int]) -> np.ndarray:
    """Decode the frames at ``indices`` with PyAV (the fallback where decord cannot convert a frame, which
    includes every frame a phone stores turned by 90 degrees), upright as decord shows them: turned by the
    container's display rotation (counter-clockwise degrees)."""
    import av

    wanted = set(indices)
    frames = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                turn = round(getattr(frame, "rotation", 0) / 90) % 4  # PyAV < 14.1 does not read the rotation
                frames[i] = np.rot90(frame.to_ndarray(format="rgb24"), k=turn)
            if i >= max(indices):
                break
    return np.stack([frames[i] for i in indices])


def to_uint8(clip: Tensor) -> np.ndarray:
    """Float clip ``(T, C, H, W)`` in ``[-1, 1]`` -> uint8 ``(T, H, W, C)`` (rounded, so it inverts :func:`from_uint8`);
    a clip with NaN or infinite values is a ``ValueError`` (it would be written black)."""
    x = clip.detach().float().cpu()
    if not torch.isfinite(x).all():
        raise ValueError("the frames hold NaN or infinite values: a sample that diverged (a temperature or guidance "
                         "too large?)")
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def from_uint8(frames: np.ndarray) -> Tensor:
    """uint8 ``(T, H, W, C)`` -> float clip ``(T, C, H, W)`` in ``[-1, 1]``."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4:
        raise ValueError(f"from_uint8: frames must be uint8 (T, H, W, C) (grey: C = 1, e.g. frames[..., None]), "
                         f"got {frames.dtype} {tuple(frames.shape)}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def writable(path: str | Path) -> Path:
    """``path`` as a ``Path`` if :func:`write_video` writes its type there (its folder made now), else a
    ``ValueError`` naming it (check an output before the work that fills it). A path without a suffix is a
    folder of PNG frames, which must not hold frame images already (a shorter video would leave stale ones)."""
    path = Path(path)
    frames_folder = path.suffix == ""
    if not frames_folder and path.suffix.lower() not in WRITE_SUFFIXES:
        raise ValueError(f"cannot write {path}: use one of {', '.join(WRITE_SUFFIXES)}, or a folder (no suffix) "
                         "for PNG frames")
    if frames_folder and path.is_file():
        raise ValueError(f"cannot write PNG frames into {path}: it is a file")
    if frames_folder and path.is_dir() and frame_files(path):
        raise ValueError(f"cannot write PNG frames into {path}: it already holds frame images (name a new folder)")
    if not frames_folder and path.is_dir():
        raise ValueError(f"cannot write {path}: it is a folder")
    try:
        (path if frames_folder else path.parent).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot write {path}: cannot make its folder ({e.strerror or e})") from None
    return path


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8) -> Path:
    """Write uint8 ``(T, H, W, C)`` frames as ``.mp4`` (H.264; an odd height or width padded by repeating the last
    row or column: its 4:2:0 colour needs even sizes), ``.gif`` (looping, one palette of 256 colours), ``.npy``
    (exact) or, to a path without a suffix, a folder of PNG frames ``frame_00000.png``... (exact; grey frames as
    grey images)."""
    path = writable(path)
    suffix = path.suffix.lower()
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 (T, H, W, C) frames with C in (1, 3), got {frames.dtype} {frames.shape}")
    if suffix == "":
        from PIL import Image

        for i, frame in enumerate(frames):
            Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame).save(path / f"frame_{i:05d}.png")
        return path
    if suffix == ".npy":
        np.save(path, frames)
        return path
    rgb = np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames
    if suffix == ".gif":
        _write_gif(path, rgb, fps)
        return path
    import av

    # yuv420p needs even sizes: pad by repeating the last row/column
    pad_h, pad_w = rgb.shape[1] % 2, rgb.shape[2] % 2
    rgb = np.pad(rgb, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = rgb.shape[2], rgb.shape[1], "yuv420p"
        stream.options = {"crf": "17"}
        for f in rgb:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        container.mux(stream.encode())
    return path


def _write_gif(path: Path, rgb: np.ndarray, fps: int) -> None:
    """Write RGB frames ``(T, H, W, 3)`` as a looping GIF: every frame kept (Pillow's writer merges a frame equal to
    the one before), in one palette fitted to all of them, with delays in whole hundredths of a second that keep the
    rate ``fps`` on average (8 fps: 12, 13, 12, 13...; Pillow rounds each down, 8 fps played at 8.3)."""
    from PIL import GifImagePlugin, Image

    if fps > 50:
        warnings.warn(f"{path}: a GIF frame lasts at least 1/100 s and players show frames shorter than 2/100 s at "
                      f"about 10 fps: {fps} fps will not play at that rate (write .mp4 instead)", stacklevel=3)
    T, H, W, _ = rgb.shape
    fitted = Image.fromarray(rgb.reshape(T * H, W, 3)).quantize(256, dither=Image.Dither.NONE)
    palette = bytes(fitted.getpalette()[: 3 * 256]).ljust(3 * 256, b"\0")
    out = [b"GIF89a", struct.pack("<HHBBB", W, H, 0xF7, 0, 0), palette,  # screen: a global table of 256 colours
           b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"]  # loop for ever
    for t in range(T):
        delay = int(100 * (t + 1) // fps - 100 * t // fps)
        out.append(b"!\xf9\x04\x00" + struct.pack("<H", delay) + b"\x00\x00")  # graphic control: the delay
        frame = fitted.crop((0, t * H, W, (t + 1) * H))
        out += GifImagePlugin.getdata(frame)  # image descriptor (no local table) and LZW data, by Pillow
    path.write_bytes(b"".join(out) + b";")


def save_clip_grid(clips: Tensor, path: str | Path, fps: int = 8) -> Path:
    """Write clips ``(N, T, C, H, W)`` in ``[-1, 1]`` as ``path.png`` (one row per clip, one column
    per frame) and ``path.gif`` (the clips side by side, animated). Returns the PNG path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    N, T, C, H, W = clips.shape
    if not torch.isfinite(clips).all():  # a preview (the trainer's samples) goes on; the CLI's outputs refuse them
        warnings.warn(f"{path}: the clips hold NaN or infinite values, drawn black (NaN) or clipped", stacklevel=2)
        clips = torch.nan_to_num(clips, nan=-1.0)
    frames = np.stack([to_uint8(c) for c in clips])  # (N, T, H, W, C)
    if C == 1:
        frames = np.repeat(frames, 3, axis=-1)
    gap = 2
    strip = np.full((N * (H + gap) - gap, T * (W + gap) - gap, 3), 255, np.uint8)
    for n in range(N):
        for t in range(T):
            strip[n * (H + gap) : n * (H + gap) + H, t * (W + gap) : t * (W + gap) + W] = frames[n, t]
    png = path.with_suffix(".png")
    Image.fromarray(strip).save(png)
    cols = int(np.ceil(np.sqrt(N)))
    rows = int(np.ceil(N / cols))
    grid = np.full((T, rows * (H + gap) - gap, cols * (W + gap) - gap, 3), 255, np.uint8)
    for n in range(N):
        r, c = divmod(n, cols)
        grid[:, r * (H + gap) : r * (H + gap) + H, c * (W + gap) : c * (W + gap) + W] = frames[n]
    write_video(path.with_suffix(".gif"), grid, fps=fps)
    return png
