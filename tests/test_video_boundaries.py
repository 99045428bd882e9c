"""Video files and clips at their boundaries: reading and writing, how a folder of videos is cut into clips, and the
natural photographs' scale (each test was written against a one-line change the rest of the suite let through)."""

import os

import numpy as np
import pytest

from video.data import VideoFolder, frames_to_clip
from video.io import VideoReadError, count_frames, read_video, writable, write_video
from video.natural import NaturalVideo


def test_an_npy_video_without_frames_is_refused(tmp_path):
    np.save(tmp_path / "none.npy", np.zeros((0, 8, 8, 1), np.uint8))
    for read in (read_video, count_frames):
        with pytest.raises(VideoReadError, match="none.npy: the video has no frames"):
            read(tmp_path / "none.npy")


def test_an_npy_video_of_empty_frames_or_four_channels_is_named(tmp_path):
    """Frames 0 pixels high were a ZeroDivisionError deep in the resizing; RGBA frames were told the Moving MNIST
    layout's fix."""
    np.save(tmp_path / "flat.npy", np.zeros((3, 0, 16, 3), np.uint8))
    for read in (read_video, count_frames):
        with pytest.raises(VideoReadError, match=r"flat.npy: its frames are empty, 0x16 pixels"):
            read(tmp_path / "flat.npy")
    np.save(tmp_path / "rgba.npy", np.zeros((3, 8, 8, 4), np.uint8))
    with pytest.raises(VideoReadError, match=r"for RGBA frames, save their colour channels a\[\.\.\., :3\]$"):
        read_video(tmp_path / "rgba.npy")


@pytest.mark.parametrize("suffix", [".npy", ".mp4"])
def test_frame_indices_outside_a_video_are_named_in_every_format(tmp_path, suffix):
    """A .npy took -1 as the last frame and raised NumPy's IndexError past the end; an .mp4 failed in decord."""
    path = write_video(tmp_path / f"v{suffix}", np.zeros((4, 16, 16, 3), np.uint8))
    for indices in ([-1], [4], [0, 9]):
        with pytest.raises(VideoReadError, match=rf"v\{suffix}: frame indices .* outside its 4 frames"):
            read_video(path, indices)
    with pytest.raises(ValueError, match="no frame indices given"):
        read_video(path, [])
    assert read_video(path, [3, 0]).shape == (2, 16, 16, 3)


def test_an_output_that_is_a_folder_is_refused(tmp_path):
    (tmp_path / "out.npy").mkdir()
    with pytest.raises(ValueError, match="out.npy: it is a folder"):
        writable(tmp_path / "out.npy")


@pytest.mark.parametrize("h, w", [(15, 16), (16, 15)])
def test_an_mp4_of_odd_height_or_width_is_padded_on_that_side(tmp_path, h, w):
    frames = np.random.default_rng(0).integers(0, 256, (3, h, w, 3), dtype=np.uint8)
    path = write_video(tmp_path / "odd.mp4", frames)
    assert read_video(path).shape == (3, 16, 16, 3)


def test_frames_to_clip_crops_the_centre():
    frames = np.zeros((2, 16, 48, 1), np.uint8)
    frames[:, :, 16:32] = 255  # a white middle third between black thirds
    clip = frames_to_clip(frames, 16, 1)
    assert clip.shape == (2, 1, 16, 16) and clip.min() > 0.9


def test_a_video_of_exactly_whole_clips_gives_every_one(tmp_path):
    """frames=4 at stride 2 span 7 frames: a 7-frame video is one clip, a 14-frame one two."""
    y = np.arange(8, dtype=np.uint8)
    np.save(tmp_path / "a.npy", np.broadcast_to(y[None, :, None, None], (7, 8, 8, 1)).copy())
    np.save(tmp_path / "b.npy", np.broadcast_to(y[None, :, None, None], (14, 8, 8, 1)).copy())
    ds = VideoFolder(tmp_path, frames=4, size=8, channels=1, stride=2)
    assert [(p.name, s) for p, _, s in ds.clips] == [("a.npy", 0), ("b.npy", 0), ("b.npy", 7)]


def test_the_index_cache_notices_a_rewritten_file_of_the_same_size(tmp_path):
    """A file rewritten with the same byte size but another frame count is re-indexed (its mtime changed)."""

    path = tmp_path / "v.npy"
    np.save(path, np.zeros((4, 16, 16, 3), np.uint8))
    size, mtime = path.stat().st_size, path.stat().st_mtime_ns
    assert len(VideoFolder(tmp_path, frames=2, size=16, channels=1)) == 2
    np.save(path, np.zeros((12, 16, 16, 1), np.uint8))  # 3 072 bytes of frames either way
    assert path.stat().st_size == size
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))  # a later modification time, even on a coarse clock
    assert len(VideoFolder(tmp_path, frames=2, size=16, channels=1)) == 6


def test_the_indexing_bar_counts_the_files_read_and_shows_on_the_first_process_of_a_machine(tmp_path, monkeypatch):
    """55 videos: a bar the first time; none once the index is cached (nothing to read), nor on a second process."""
    import video.data

    bars = []
    monkeypatch.setattr(video.data, "tqdm", lambda items, **kw: bars.append((len(items), kw["disable"])) or items)
    for i in range(55):
        np.save(tmp_path / f"v{i:02d}.npy", np.zeros((2, 16, 16, 1), np.uint8))
    VideoFolder(tmp_path, frames=2, size=16, channels=1)
    VideoFolder(tmp_path, frames=2, size=16, channels=1)
    assert bars == [(55, False), (0, True)]
    for i in range(55):  # all to read again, on the machine's second process
        os.utime(tmp_path / f"v{i:02d}.npy", ns=(2, 2))
    monkeypatch.setenv("LOCAL_RANK", "1")
    VideoFolder(tmp_path, frames=2, size=16, channels=1)
    assert bars[2:] == [(55, True)]


def test_natural_video_caches_photos_with_the_shorter_side_three_sizes():
    ds = NaturalVideo(4, size=16, split="val")
    assert all(min(p.shape[1:]) == 48 and max(p.shape[1:]) >= 48 for p in ds.photos)
    assert any(max(p.shape[1:]) > 48 for p in ds.photos)
