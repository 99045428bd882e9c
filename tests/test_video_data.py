"""Video data and I/O: decord reads what PyAV writes, corrupt files fail clearly, moving digits, metrics."""

import math
import warnings

import numpy as np
import pytest
import torch

from video.data import MovingDigits, VideoFolder, frames_to_clip
from video.io import VideoReadError, count_frames, from_uint8, read_video, save_clip_grid, to_uint8, write_video
from video.metrics import best_and_mean, copy_last_frame, linear_blend, psnr, ssim


def gradient_video(frames=20, h=40, w=48):
    """A bright square moving over a smooth gradient, uint8 (T, H, W, 3)."""
    y, x = np.mgrid[0:h, 0:w]
    out = np.zeros((frames, h, w, 3), np.uint8)
    for t in range(frames):
        out[t, ..., 0] = (x * 4 + t * 3) % 256
        out[t, ..., 1] = y * 5
        out[t, 10:20, 2 * t : 2 * t + 10, 2] = 250
    return out


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    path = tmp_path_factory.mktemp("videos") / "clip.mp4"
    write_video(path, gradient_video(), fps=10)
    return path


def test_decord_reads_an_mp4_written_with_pyav(mp4):
    frames = read_video(mp4)
    assert frames.shape == (20, 40, 48, 3) and frames.dtype == np.uint8
    assert count_frames(mp4) == 20
    assert np.abs(frames.astype(int) - gradient_video().astype(int)).mean() < 10
    assert read_video(mp4, [0, 5]).shape == (2, 40, 48, 3)


def test_corrupt_missing_and_bad_files_fail_naming_the_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(VideoReadError, match="broken.mp4"):
        read_video(bad)
    with pytest.raises(FileNotFoundError, match="nothere.mp4"):
        read_video(tmp_path / "nothere.mp4")
    wrong = tmp_path / "floats.npy"
    np.save(wrong, np.zeros((3, 4, 4, 3), np.float32))
    with pytest.raises(VideoReadError, match="floats.npy.*uint8"):
        read_video(wrong)
    with pytest.raises(ValueError, match=".webp"):
        write_video(tmp_path / "x.webp", gradient_video(2))


def test_video_folder_clips_corrupt_and_short_files_and_cache(tmp_path, mp4, monkeypatch):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.mp4").write_bytes(mp4.read_bytes())
    np.save(root / "b.npy", gradient_video(9, 32, 32))
    ds = VideoFolder(root, frames=4, size=16, channels=1, stride=2)
    # a.mp4: 20 frames, span 7 -> starts 0, 7; b.npy: 9 frames -> start 0
    assert len(ds) == 3
    clip = ds[0]
    assert clip.shape == (4, 1, 16, 16) and clip.min() >= -1 and clip.max() <= 1

    (root / "zbroken.mp4").write_bytes(b"\x00" * 3000)
    with pytest.raises(VideoReadError, match="zbroken.mp4"):
        VideoFolder(root, frames=4, size=16, stride=2)
    np.save(root / "short.npy", gradient_video(3, 8, 8))
    with pytest.warns(UserWarning) as record:
        ds = VideoFolder(root, frames=4, size=16, stride=2, skip_corrupt=True)
    messages = " ".join(str(w.message) for w in record)
    assert "zbroken.mp4" in messages and "short.npy" in messages and len(ds) == 3

    calls = []
    monkeypatch.setattr("video.data.count_frames", lambda p: calls.append(p) or 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        VideoFolder(root, frames=4, size=16, stride=2, skip_corrupt=True)
        assert calls == [], "the cached index is reused"
        np.save(root / "b.npy", gradient_video(12, 32, 32))
        VideoFolder(root, frames=4, size=16, stride=2, skip_corrupt=True)
    assert [p.name for p in calls] == ["b.npy"], "a changed file is re-indexed"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no videos in"):
        VideoFolder(empty)


def test_frames_to_clip_resizes_crops_and_converts_exactly_at_model_size():
    frames = gradient_video(3, 40, 48)
    clip = frames_to_clip(frames, 32, 3)
    assert clip.shape == (3, 3, 32, 32)
    same = frames_to_clip(gradient_video(3, 32, 32), 32, 3)
    assert np.array_equal(to_uint8(same), gradient_video(3, 32, 32))
    assert frames_to_clip(frames, 16, 1).shape == (3, 1, 16, 16)


def test_write_read_round_trips(tmp_path):
    frames = gradient_video(5, 32, 32)
    write_video(tmp_path / "v.npy", frames)
    assert np.array_equal(read_video(tmp_path / "v.npy"), frames)
    write_video(tmp_path / "v.gif", frames)
    from PIL import Image

    with Image.open(tmp_path / "v.gif") as im:
        assert im.n_frames == 5 and im.size == (32, 32)
    clip = from_uint8(frames)
    assert np.array_equal(to_uint8(clip), frames)
    png = save_clip_grid(torch.stack([clip, clip.flip(0)]), tmp_path / "grid")
    with Image.open(png) as im:
        assert im.size == (5 * 32 + 4 * 2, 2 * 32 + 2)
    assert (tmp_path / "grid.gif").is_file()


def test_moving_digits_deterministic_moving_and_in_range():
    a = MovingDigits(10, frames=8, size=32, seed=0, digit_split="train")
    b = MovingDigits(10, frames=8, size=32, seed=0, digit_split="train")
    c = MovingDigits(10, frames=8, size=32, seed=1, digit_split="train")
    assert torch.equal(a[3], b[3]) and not torch.equal(a[3], c[3])
    clip = a[3]
    assert clip.shape == (8, 1, 32, 32) and clip.min() == -1 and clip.max() <= 1
    assert not torch.equal(clip[0], clip[-1]), "digits move"
    ink = (clip > -0.5).flatten(1).sum(1)
    assert (ink > 10).all(), "the digits stay in the frame"
    assert MovingDigits(2, channels=3)[0].shape == (8, 3, 32, 32)
    with pytest.raises(IndexError):
        a[10]


def test_metrics_and_baselines():
    x = torch.rand(2, 3, 1, 16, 16) * 2 - 1
    assert torch.isinf(psnr(x, x)).all()
    y = x + 0.1
    torch.testing.assert_close(psnr(x, y), torch.full((2, 3), 10 * math.log10(4 / 0.01)))
    torch.testing.assert_close(ssim(x, x), torch.ones(2, 3))
    assert (ssim(x, -x) < 0.5).all()
    target = torch.zeros(1, 4, 1, 16, 16)
    samples = torch.stack([target + 0.5, target + 0.1])
    gen = torch.tensor([False, True, True, True])
    scores = best_and_mean(samples, target, gen)
    assert scores["psnr_best"] == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-5)
    assert scores["psnr_mean"] < scores["psnr_best"]
    clip = torch.arange(5.0).view(1, 5, 1, 1, 1)
    assert copy_last_frame(clip, 2).flatten().tolist() == [0, 1, 1, 1, 1]
    blend = linear_blend(clip * 2, torch.tensor([True, False, False, False, True]))
    assert blend.flatten().tolist() == [0, 2, 4, 6, 8]
    outside = linear_blend(clip * 2, torch.tensor([False, True, False, True, False]))
    assert outside.flatten().tolist() == [2, 2, 4, 6, 6]  # beyond the observed range: the nearest observed frame
