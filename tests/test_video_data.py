"""Video data and I/O: decord reads what PyAV writes, corrupt files fail clearly, moving digits, metrics."""

import math
import warnings

import numpy as np
import pytest
import torch

from video.data import MovingDigits, VideoFolder, frames_to_clip
from video.io import VideoReadError, count_frames, from_uint8, read_video, save_clip_grid, to_uint8, write_video
from video.metrics import PSNR_CAP, best_and_mean_scores, linear_blend, psnr, ssim


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


@pytest.mark.parametrize("size", [(32, 48), (48, 64)])
@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_videos_stored_turned_are_read_upright(tmp_path, degrees, size):
    """A phone stores portrait video as landscape frames and a display rotation. decord turns the frames itself
    where it decodes them; where it cannot (here: an upright width that is no multiple of 32), PyAV decodes
    them and they are turned the same way. Both sizes take each path for some rotation."""
    import av

    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip("PyAV < 14.1 cannot write (or read) a display rotation")
    h, w = size
    frames = gradient_video(4, h, w)
    path = tmp_path / f"turned{degrees}.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.set_display_rotation(degrees)  # counter-clockwise
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    upright = np.rot90(frames, k=degrees // 90 % 4, axes=(1, 2))
    read = read_video(path, [0, 3])
    assert read.shape == upright[[0, 3]].shape
    assert np.abs(read.astype(int) - upright[[0, 3]].astype(int)).mean() < 10


def test_corrupt_missing_and_bad_files_fail_naming_the_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(VideoReadError, match="broken.mp4"):
        read_video(bad)
    with pytest.raises(FileNotFoundError, match="nothere.mp4"):
        read_video(tmp_path / "nothere.mp4")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(VideoReadError, match="empty.npy: not a readable .npy array"):
        read_video(tmp_path / "empty.npy")
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
    with pytest.raises(NotADirectoryError, match="video folder .*zbroken.mp4 is a file: give the folder"):
        VideoFolder(root / "zbroken.mp4", frames=4, size=16, stride=2)
    (root / "zbroken.mp4").unlink()
    np.save(root / "wide.npy", gradient_video(9, 32, 32).astype(np.uint16))
    with pytest.raises(VideoReadError, match=r"wide.npy cannot be read \(expected uint8 .* got uint16"):
        VideoFolder(root, frames=4, size=16, stride=2)  # the reason is kept, also from the index cache
    with pytest.raises(VideoReadError, match=r"wide.npy cannot be read \(expected uint8"):
        VideoFolder(root, frames=4, size=16, stride=2)
    (root / "wide.npy").unlink()
    (root / "zbroken.mp4").write_bytes(b"\x00" * 3000)
    np.save(root / "short.npy", gradient_video(3, 8, 8))
    with pytest.warns(UserWarning) as record:
        ds = VideoFolder(root, frames=4, size=16, stride=2, skip_corrupt=True)
    messages = " ".join(str(w.message) for w in record)
    assert "zbroken.mp4" in messages and "short.npy" in messages and len(ds) == 3

    calls = []
    monkeypatch.setattr("video.data.count_frames", lambda p, video=None: calls.append(p) or 20)
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


def test_colour_videos_trained_in_grey_are_warned_of_where_they_open_on_black(tmp_path):
    """Clips spread over the set are looked at, not the first alone (a fade from black hid a colour video)."""
    from multigen.config import load_config
    from video.domain import Video, VideoConfig

    video = gradient_video(40, 32, 32)
    video[:8] = 0
    np.save(tmp_path / "fade.npy", video)
    folder = ["data.source=folder", f"data.root={tmp_path}", "data.frames=4", "data.size=16", "data.channels=1",
              "eval.context=3"]
    with pytest.warns(UserWarning, match="are in colour and are trained on in grey"):
        Video(load_config(VideoConfig, overrides=folder)).fit()
    np.save(tmp_path / "fade.npy", video[..., :1].repeat(3, axis=-1))  # grey, stored as RGB
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Video(load_config(VideoConfig, overrides=folder)).fit()


def test_a_video_folder_holds_out_the_last_tenth_of_each_video(tmp_path, mp4):
    """Without ``data.val_root`` the held-out clips are each video's last tenth (at least one, from videos of two or
    more clips) and training takes the rest; with it, all of each folder. Bad sizes and channels are config
    errors; an evaluation context that observes every frame is a warning."""
    from multigen.config import ConfigError, load_config
    from video.domain import Video, VideoConfig

    root = tmp_path / "data"
    root.mkdir()
    (root / "a.mp4").write_bytes(mp4.read_bytes())  # 20 frames, span 7 at stride 2: clips at 0 and 7
    np.save(root / "b.npy", gradient_video(9, 32, 32))  # one clip: training only
    folder = ["data.source=folder", f"data.root={root}", "data.frames=4", "data.size=16", "data.stride=2",
              "eval.context=3"]
    domain = Video(load_config(VideoConfig, overrides=folder))
    train, val = domain.build_dataset("train"), domain.build_dataset("val")
    assert [(p.name, s) for p, _, s in train.clips] == [("a.mp4", 0), ("b.npy", 0)]
    assert [(p.name, s) for p, _, s in val.clips] == [("a.mp4", 7)]
    assert len(VideoFolder(root, frames=4, size=16, stride=2, split="all")) == 3
    one = tmp_path / "one"
    one.mkdir()
    np.save(one / "b.npy", gradient_video(9, 32, 32))
    with pytest.raises(VideoReadError, match=r"no usable held-out .* in \S+one$"):
        VideoFolder(one, frames=4, size=16, stride=2, split="val")  # its one video has one clip
    np.save(one / "c.npy", gradient_video(3, 32, 32))
    with pytest.warns(UserWarning, match="c.npy: it has 3 frames"), pytest.raises(
            VideoReadError, match=r"no usable held-out .* \(1 of its 2 videos skipped as unreadable or too short\)"):
        VideoFolder(one, frames=4, size=16, stride=2, split="val", skip_corrupt=True)
    (held := tmp_path / "held").mkdir()
    np.save(held / "c.npy", gradient_video(9, 32, 32))
    domain = Video(load_config(VideoConfig, overrides=[*folder, f"data.val_root={held}"]))
    assert (len(domain.build_dataset("train")), len(domain.build_dataset("val"))) == (3, 1)
    for inside in (root, root / "val"):  # the held-out videos were trained on too
        with pytest.raises(ConfigError, match="hold each other's videos: the held-out ones would be trained on"):
            Video(load_config(VideoConfig, overrides=[*folder, f"data.val_root={inside}"]))
    with pytest.raises(ConfigError, match="data.root and data.val_root are read with data.source=folder, not with "
                                          "data.source=moving_digits"):  # it trained on the digits, silently
        Video(load_config(VideoConfig, overrides=[f"data.root={root}"]))
    with pytest.raises(ConfigError, match="data.frames: must be >= 3"):  # interpolation of 2 frames scored NaN
        Video(load_config(VideoConfig, overrides=["data.frames=2"]))
    with pytest.raises(ConfigError, match="data.channels: 1 .* got 2"):
        Video(load_config(VideoConfig, overrides=["data.channels=2"]))
    with pytest.raises(ConfigError, match="data.size=18: .* a multiple of 4"):
        Video(load_config(VideoConfig, overrides=["data.size=18"]))
    with pytest.warns(UserWarning, match=r"eval.context=4 observes every frame of data.frames=4 clips: future and "
                      r"past prediction are evaluated from 3"):
        Video(load_config(VideoConfig, overrides=[*folder, "eval.context=4"]))


def test_frames_to_clip_resizes_crops_and_converts_exactly_at_model_size():
    frames = gradient_video(3, 40, 48)
    clip = frames_to_clip(frames, 32, 3)
    assert clip.shape == (3, 3, 32, 32)
    same = frames_to_clip(gradient_video(3, 32, 32), 32, 3)
    assert np.array_equal(to_uint8(same), gradient_video(3, 32, 32))
    assert frames_to_clip(frames, 16, 1).shape == (3, 1, 16, 16)
    with pytest.raises(ValueError, match="NaN or infinite values"):  # (written as black frames, they were)
        to_uint8(same.index_fill(0, torch.tensor([2]), math.nan))


def test_a_preview_grid_of_clips_with_nan_is_drawn_with_a_warning(tmp_path):
    """The trainer's sample pictures go on (a NaN frame drawn black); only the command line's outputs refuse it."""
    clips = torch.zeros(2, 3, 1, 8, 8).index_fill(0, torch.tensor([1]), math.nan)
    with pytest.warns(UserWarning, match="NaN or infinite values, drawn black"):
        assert save_clip_grid(clips, tmp_path / "grid").is_file()


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
    for bad in (frames.astype(np.float32) / 255, frames[..., 0]):  # floats in [0, 1]; grey without its channel axis
        with pytest.raises(ValueError, match=r"from_uint8: frames must be uint8 \(T, H, W, C\).*got (float32|uint8) "):
            from_uint8(bad)
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
    assert (psnr(x, x) == PSNR_CAP).all()  # identical frames: the cap, not inf
    y = x + 0.1
    torch.testing.assert_close(psnr(x, y), torch.full((2, 3), 10 * math.log10(4 / 0.01)))
    torch.testing.assert_close(ssim(x, x), torch.ones(2, 3))
    assert (ssim(x, -x) < 0.5).all()
    target = torch.zeros(1, 4, 1, 16, 16)
    samples = torch.stack([target + 0.5, target + 0.1])
    gen = torch.tensor([False, True, True, True])
    scores = {k: v.item() for k, v in best_and_mean_scores(samples, target, gen).items()}
    assert scores["psnr_best"] == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-5)
    assert scores["psnr_mean"] < scores["psnr_best"]
    clip = torch.arange(5.0).view(1, 5, 1, 1, 1)
    assert linear_blend(clip, torch.arange(5) < 2).flatten().tolist() == [0, 1, 1, 1, 1]  # copy the last
    assert linear_blend(clip, torch.arange(5) >= 3).flatten().tolist() == [3, 3, 3, 3, 4]  # copy the first
    blend = linear_blend(clip * 2, torch.tensor([True, False, False, False, True]))
    assert blend.flatten().tolist() == [0, 2, 4, 6, 8]
    outside = linear_blend(clip * 2, torch.tensor([False, True, False, True, False]))
    assert outside.flatten().tolist() == [2, 2, 4, 6, 6]  # beyond the observed range: the nearest observed frame


# ---- natural video (video/natural.py): camera motion over scikit-image's bundled photographs ----


@pytest.fixture(scope="module")
def natural():
    pytest.importorskip("skimage")
    from video import natural

    return natural


def test_natural_video_shapes_range_and_determinism(natural):
    a = natural.NaturalVideo(6, frames=8, size=32, channels=1, seed=0, split="train")
    clip = a[2]
    assert clip.shape == (8, 1, 32, 32) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1 and clip.std() > 0.01
    assert not torch.equal(clip[0], clip[-1]), "the camera moves"
    assert torch.equal(clip, natural.NaturalVideo(6, frames=8, size=32, channels=1, seed=0, split="train")[2])
    assert not torch.equal(clip, a[3])
    assert not torch.equal(clip, natural.NaturalVideo(6, frames=8, size=32, channels=1, seed=1, split="train")[2])
    rgb = natural.NaturalVideo(2, frames=5, size=16, channels=3, split="val")[1]
    assert rgb.shape == (5, 3, 16, 16) and rgb.min() >= -1 and rgb.max() <= 1
    with pytest.raises(IndexError):
        a[6]
    with pytest.raises(ValueError, match="channels"):
        natural.NaturalVideo(2, channels=2)


def test_natural_video_train_and_val_use_disjoint_photos(natural):
    from multigen.config import load_config
    from video.domain import Video, VideoConfig

    domain = Video(load_config(VideoConfig, overrides=["data.source=natural", "data.size=16", "data.frames=4",
                                                       "eval.context=3", "data.num_train=12", "data.num_val=5"]))
    train, val = domain.build_dataset("train"), domain.build_dataset("val")
    assert (len(train), len(val)) == (12, 5) and val[0].shape == (4, 1, 16, 16)
    assert set(train.names).isdisjoint(val.names) and len(val.names) >= 0.15 * (len(train.names) + len(val.names))
    assert {val.names[val.camera(i).photo] for i in range(5)} <= set(natural.VAL_PHOTOS)
    # Disjoint in content too, not just in name: no held-out photo equals a training one.
    for v in val.photos:
        assert not any(t.shape == v.shape and torch.allclose(t, v, atol=0.05) for t in train.photos)


def _shifted(frames: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``frames`` ``(N, C, S, S)`` resampled at ``p + d`` for each shift ``d`` ``(K, 2)`` (x, y) -> ``(K, N, C, S, S)``."""
    (N, C, S, _), K = frames.shape, len(shifts)
    theta = torch.zeros(K, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = 2 * shifts / S
    grid = torch.nn.functional.affine_grid(theta, [K, C, S, S], align_corners=False).repeat_interleave(N, 0)
    out = torch.nn.functional.grid_sample(frames.repeat(K, 1, 1, 1), grid, align_corners=False)
    return out.view(K, N, C, S, S)


def test_natural_video_pan_frames_are_translations_by_the_velocity(natural):
    ds = natural.NaturalVideo(30, frames=6, size=32, channels=1, seed=0, split="train")
    pans = [i for i in range(30) if ds.camera(i).kind == "pan"][:3]
    assert len(pans) == 3
    grid = torch.arange(-2.5, 2.51, 0.25)
    candidates = torch.cartesian_prod(grid, grid)  # (x, y) shifts in output pixels
    for i in pans:
        path = ds.camera(i)
        assert torch.equal(path.side, path.side[:1].expand_as(path.side)) and (path.angle == 0).all()
        step = path.center[1:] - path.center[:-1]
        torch.testing.assert_close(step, step[:1].expand_as(step))  # constant velocity
        velocity = step[0] * ds.size / path.side[0]  # output pixels per frame
        assert velocity.norm() >= 0.45
        clip = ds[i]
        # The shift that best maps frame t onto frame t+1 (blind search, away from the borders) is the velocity.
        err = (_shifted(clip[:-1], candidates) - clip[1:])[..., 3:-3, 3:-3].pow(2).mean((1, 2, 3, 4))
        best = candidates[err.argmin()]
        assert (best - velocity).abs().max() <= 0.2, (i, best, velocity)
        assert err.min() < 0.25 * err[candidates.norm(dim=1) == 0].item(), "a better match than a still camera"


def test_natural_video_renders_exact_crops_of_the_photo(natural):
    ds = natural.NaturalVideo(1, frames=3, size=16, channels=1, split="val")
    photo = ds.photos[0][0]
    # Window of side 16 (one photo pixel per output pixel), corner at integer pixels: frames are exact crops.
    corners = torch.tensor([[10.0, 5.0], [12.0, 4.0], [14.0, 3.0]])  # (x, y) of the top-left corner
    path = natural.CameraPath(0, "pan", corners + 8, torch.full((3,), 16.0), torch.zeros(3))
    clip = ds.render(path)
    for t, (x, y) in enumerate(corners.long().tolist()):
        torch.testing.assert_close(clip[t, 0], photo[y : y + 16, x : x + 16], atol=1e-5, rtol=0)


def test_natural_video_without_scikit_image_names_the_extra(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    monkeypatch.delitem(sys.modules, "video.natural", raising=False)
    with pytest.raises(ImportError, match=r"pip install multigen-diffusion\[video\]"):
        importlib.import_module("video.natural")


def test_the_domains_held_out_digits_are_the_fifth_never_trained_on_and_its_task_masks():
    from multigen.config import load_config
    from video.domain import Video, VideoConfig

    domain = Video(load_config(VideoConfig, overrides=["data.size=16", "data.num_val=2", "eval.context=4"]))
    train, val = domain.build_dataset("train").images, domain.build_dataset("val").images
    assert len(val) == 360 and len(train) == 1437  # 80 / 20 of scikit-learn's 1 797 digit images
    assert not (train.flatten(1)[:, None] == val.flatten(1)[None]).all(-1).any()  # no image in both
    masks = {k: v.int().tolist() for k, v in domain.task_masks(8).items()}
    assert masks == {"future": [1, 1, 1, 1, 0, 0, 0, 0], "interp": [1, 0, 0, 0, 0, 0, 0, 1],
                     "past": [0, 0, 0, 0, 1, 1, 1, 1]}


def test_colour_frames_become_grey_with_the_luma_weights():
    frames = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    for c in range(3):
        frames[c, ..., c] = 255  # pure red, green, blue
    grey = frames_to_clip(frames, 8, 1)[:, 0, 0, 0]
    torch.testing.assert_close(grey, 2 * torch.tensor([0.299, 0.587, 0.114]) - 1, atol=1e-3, rtol=0)
    grey_frames = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8, 1)
    rgb = frames_to_clip(grey_frames, 8, 3)  # and grey becomes RGB by repetition
    assert rgb.shape == (2, 3, 8, 8) and all(torch.equal(rgb[:, c], frames_to_clip(grey_frames, 8, 1)[:, 0])
                                             for c in range(3))


def test_natural_video_windows_stay_inside_their_photograph(natural):
    data = natural.NaturalVideo(300, frames=8, size=16, channels=1, seed=0, split="train")
    for i in range(len(data)):
        path = data.camera(i)
        _, H, W = data.photos[path.photo].shape
        half = path.side / 2 * (path.angle.cos().abs() + path.angle.sin().abs())  # the rotated window's half-extent
        assert (path.center - half[:, None] >= -1e-3).all() and (path.center[:, 0] + half <= W + 1e-3).all()
        assert (path.center[:, 1] + half <= H + 1e-3).all(), (i, path.kind)


def save_frames(folder, frames, name="frame_{}.png"):
    """Each uint8 ``(H, W, C)`` frame as an image in ``folder`` (grey frames as 8-bit grey images)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f).save(folder / name.format(i))
    return folder


def test_a_folder_of_frame_images_is_a_video_in_natural_order(tmp_path):
    """PNG frames read back exactly, in the numeric order of their names (frame_2 before frame_10); grey images stay
    one channel; JPEG frames read back close; a gap in the names is no gap in the video."""
    video = gradient_video(12, 20, 24)
    folder = save_frames(tmp_path / "clip", video)  # frame_0 .. frame_11: sorted as text, frame_10 would be second
    assert count_frames(folder) == 12
    assert np.array_equal(read_video(folder), video)
    assert np.array_equal(read_video(folder, [10, 2, 3]), video[[10, 2, 3]])
    grey = save_frames(tmp_path / "grey", video[..., 1:2], name="{:04d}.png")
    assert np.array_equal(read_video(grey), video[..., 1:2])
    jpegs = save_frames(tmp_path / "jpegs", video[::3], name="img{}.jpg")
    (jpegs / "img1.jpg").rename(jpegs / "img7.jpg")
    read = read_video(jpegs)
    assert read.shape == (4, 20, 24, 3) and np.abs(read.astype(int) - video[[0, 6, 9, 3]].astype(int)).mean() < 8


def test_bad_frame_folders_fail_naming_the_frame(tmp_path):
    video = gradient_video(6, 20, 24)
    folder = save_frames(tmp_path / "clip", video)
    with pytest.raises(VideoReadError, match="clip: frame indices 5..6 outside its 6 frames"):
        read_video(folder, [5, 6])
    save_frames(tmp_path / "clip", video[:1, :10], name="frame_9.png")
    with pytest.raises(VideoReadError, match="frame_9.png: a frame of 24x10 pixels in a video of 24x20"):
        count_frames(folder)
    with pytest.raises(VideoReadError, match="frame_9.png: a frame of 24x10"):
        read_video(folder, [0, 6])
    (folder / "frame_9.png").write_bytes(b"not an image")
    with pytest.raises(VideoReadError, match="frame_9.png: cannot read the image"):
        count_frames(folder)
    good = (folder / "frame_0.png").read_bytes()
    (folder / "frame_9.png").write_bytes(good[: len(good) // 2])  # cut short: its header reads, its data does not
    with pytest.raises(VideoReadError, match="frame_9.png: cannot read the image"):
        count_frames(folder)
    (tmp_path / "none").mkdir()
    with pytest.raises(VideoReadError, match="none: a folder given as a video holds no frame images"):
        read_video(tmp_path / "none")
    (tmp_path / "fake.gif").write_bytes(b"not a gif")
    with pytest.raises(VideoReadError, match="fake.gif: cannot read the image"):
        count_frames(tmp_path / "fake.gif")


def test_gifs_are_read_back_frame_by_frame(tmp_path):
    """A GIF that multigen writes reads back as the same frames where its colours fit the palette (here 4 of a
    grey video, 216 of a colour one), a frame equal to the one before included, at the asked rate on average."""
    from PIL import Image

    levels = np.array([0, 80, 160, 240], np.uint8)
    video = levels[np.random.default_rng(0).integers(0, 4, (5, 8, 10, 1))].repeat(3, axis=-1)
    video[2] = video[1]
    path = write_video(tmp_path / "clip.gif", video)
    assert count_frames(path) == 5
    assert np.array_equal(read_video(path), video)
    assert np.array_equal(read_video(path, [4, 1]), video[[4, 1]])
    colour = (np.random.default_rng(1).integers(0, 6, (8, 12, 9, 3)) * 51).astype(np.uint8)
    with Image.open(write_video(tmp_path / "colour.gif", colour, fps=8)) as gif:
        durations = [gif.seek(t) or gif.info["duration"] for t in range(gif.n_frames)]
        assert gif.info["loop"] == 0
    assert np.array_equal(read_video(tmp_path / "colour.gif"), colour)
    assert sorted(set(durations)) == [120, 130] and sum(durations) == 1000  # 8 frames at 8 fps: one second
    with pytest.warns(UserWarning, match="will not play at that rate"):
        write_video(tmp_path / "fast.gif", colour, fps=60)
    with Image.open(write_video(tmp_path / "slow.gif", colour, fps=7.5)) as gif:  # a fractional rate
        assert sum(gif.seek(t) or gif.info["duration"] for t in range(gif.n_frames)) == 1060  # 8 / 7.5 s, to 1/100
    ours = tmp_path / "cut_ours.gif"
    ours.write_bytes((tmp_path / "colour.gif").read_bytes()[: (tmp_path / "colour.gif").stat().st_size * 9 // 10])
    with pytest.raises(VideoReadError, match="cut_ours.gif: cannot decode the GIF"):
        read_video(ours)


def test_a_video_folder_takes_frame_folders_and_skips_hidden_ones(tmp_path, mp4):
    """Every folder holding frame images is one video beside the video files; hidden files and folders are not
    videos; a frame folder with a broken frame is named (or skipped with ``skip_corrupt``)."""
    root = tmp_path / "data"
    save_frames(root / "kth" / "person01_walking", gradient_video(9, 32, 32))
    save_frames(root / "kth" / "person02_running", gradient_video(5, 32, 32))
    (root / "clip.mp4").write_bytes(mp4.read_bytes())
    save_frames(root / ".thumbnails" / "x", gradient_video(9, 32, 32))
    (root / "._clip.mp4").write_bytes(b"AppleDouble")
    ds = VideoFolder(root, frames=4, size=16)
    names = sorted({path.name for path, _, _ in ds.clips})
    assert names == ["clip.mp4", "person01_walking", "person02_running"]
    assert len(ds) == 5 + 2 + 1  # 20 frames, 9 and 5 in clips of 4
    frames_clip = [i for i, (path, _, _) in enumerate(ds.clips) if path.name == "person01_walking"][1]
    expected = frames_to_clip(gradient_video(9, 32, 32)[4:8], 16, 3)
    assert torch.equal(ds[frames_clip], expected)
    (root / "kth" / "person02_running" / "frame_3.png").write_bytes(b"broken")
    with pytest.raises(VideoReadError, match="person02_running cannot be read .*frame_3.png: cannot read the image"):
        VideoFolder(root, frames=4, size=16)
    with pytest.warns(UserWarning, match="skipping .*person02_running"):
        assert len(VideoFolder(root, frames=4, size=16, skip_corrupt=True)) == 5 + 2


def test_a_npy_of_several_videos_holds_out_whole_videos(tmp_path):
    """A ``.npy`` ``(N, T, H, W, C)`` is N videos: clips come from each, and its last tenth of videos (at least one)
    is held out whole; read alone, it asks which video; Moving MNIST's ``(T, N, H, W)`` layout gets a recipe."""
    videos = np.stack([gradient_video(9, 16, 16) // (v + 1) for v in range(12)])  # 12 videos of 9 frames
    root = tmp_path / "data"
    root.mkdir()
    np.save(root / "many.npy", videos)
    np.save(root / "one.npy", gradient_video(9, 16, 16))
    train, val = (VideoFolder(root, frames=4, size=16, split=split) for split in ("train", "val"))
    assert [(p.name, v, s) for p, v, s in val.clips] == [("many.npy", 10, 0), ("many.npy", 10, 4),
                                                       ("many.npy", 11, 0), ("many.npy", 11, 4), ("one.npy", None, 4)]
    assert {v for p, v, _ in train.clips if p.name == "many.npy"} == set(range(10))
    assert len(train) == 10 * 2 + 1
    assert torch.equal(val[2], frames_to_clip(videos[11, :4], 16, 3))
    assert count_frames(root / "many.npy", video=3) == 9
    assert np.array_equal(read_video(root / "many.npy", [1, 2], video=5), videos[5, 1:3])
    with pytest.raises(VideoReadError, match=r"many.npy: holds 12 videos \(N, T, H, W, C\), not one"):
        read_video(root / "many.npy")
    with pytest.raises(VideoReadError, match="many.npy: no video 12 among its 12"):
        read_video(root / "many.npy", video=12)
    with pytest.raises(VideoReadError, match="one.npy: holds one video"):
        read_video(root / "one.npy", video=0)
    np.save(root / "mnist_test_seq.npy", videos[..., 0].transpose(1, 0, 2, 3))  # (T, N, H, W)
    with pytest.raises(VideoReadError, match=r"Moving MNIST.*a.transpose\(1, 0, 2, 3\)\[..., None\]"):
        VideoFolder(root, frames=4, size=16)


def test_damaged_gifs_deep_frames_and_orientation_are_handled(tmp_path):
    """A GIF cut short is a VideoReadError (Pillow fails deep inside with an IndexError); 16-bit grey frames are
    scaled to 8 bits, not clipped; float images are refused; a JPEG's EXIF orientation is applied."""
    from PIL import Image

    frames = [Image.fromarray(f) for f in gradient_video(6, 24, 24)]  # written as by another program: Pillow's
    gif = tmp_path / "clip.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=125, loop=0)
    cut = tmp_path / "cut.gif"
    cut.write_bytes(gif.read_bytes()[: gif.stat().st_size * 4 // 10])
    with pytest.raises(VideoReadError, match="cut.gif: cannot decode the GIF"):
        count_frames(cut)
    cut.write_bytes(gif.read_bytes()[: gif.stat().st_size * 6 // 10])  # its frames counted, the last one cut
    with pytest.raises(VideoReadError, match="cut.gif: cannot decode the GIF"):
        read_video(cut)
    deep = tmp_path / "deep"
    deep.mkdir()
    Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1028)).save(deep / "0.png")  # 4 * 257 a step
    frame = read_video(deep)[0, ..., 0]
    assert np.array_equal(frame, (np.arange(64).reshape(8, 8) * 4).astype(np.uint8))
    floats = tmp_path / "floats"
    floats.mkdir()
    Image.fromarray(np.zeros((8, 8), np.float32)).save(floats / "0.tif")
    with pytest.raises(VideoReadError, match="0.tif: a floating-point image"):
        read_video(floats)
    with pytest.raises(VideoReadError, match="0.tif: a floating-point image"):  # at indexing: skip_corrupt skips it
        count_frames(floats)
    turned = tmp_path / "turned"
    turned.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90 degrees clockwise to view
    Image.fromarray(gradient_video(1, 8, 16)[0]).save(turned / "0.jpg", exif=exif)
    assert read_video(turned).shape == (1, 16, 8, 3)
    with pytest.raises(ValueError, match="no frame indices"):
        read_video(turned, [])
    Image.fromarray(gradient_video(1, 16, 8)[0]).save(turned / "1.jpg")  # upright as stored, as the first is shown
    assert count_frames(turned) == 2 and read_video(turned).shape == (2, 16, 8, 3)  # counted as read


def test_video_folder_edge_cases_of_the_new_sources(tmp_path, monkeypatch):
    """The root itself a frame folder reuses its cache (writing the cache does not invalidate it); a .npy of one
    video (N = 1) is split in time like any video, one of none is named; a stray image names the folder it made a
    video; a linked frame folder is followed, a link back up is not followed twice."""
    clip = save_frames(tmp_path / "clip", gradient_video(20, 16, 16))
    VideoFolder(clip, frames=4, size=16)
    calls = []
    monkeypatch.setattr("video.data.count_frames", lambda p, video=None: calls.append(p) or 20)
    VideoFolder(clip, frames=4, size=16)
    assert calls == [], "the index of a root that is a frame folder is reused"
    monkeypatch.undo()

    one = tmp_path / "one"
    one.mkdir()
    np.save(one / "a.npy", gradient_video(20, 16, 16)[None])
    assert [(v, s) for _, v, s in VideoFolder(one, frames=4, size=16, split="val").clips] == [(0, 16)]
    np.save(one / "a.npy", np.zeros((0, 5, 8, 8, 1), np.uint8))
    with pytest.raises(VideoReadError, match="a.npy cannot be read .*holds no videos"):
        VideoFolder(one, frames=4, size=16)

    videos = tmp_path / "videos"
    videos.mkdir()
    np.save(videos / "a.npy", gradient_video(9, 16, 16))
    save_frames(videos, gradient_video(1, 16, 16), name="cover.png")
    with pytest.raises(VideoReadError, match=r"videos has 1 frames \(a folder of frame images, read as one video\)"):
        VideoFolder(videos, frames=4, size=16)

    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "clip").symlink_to(clip, target_is_directory=True)
    (linked / "loop").symlink_to(linked, target_is_directory=True)
    assert {p.name for p, _, _ in VideoFolder(linked, frames=4, size=16).clips} == {"clip"}


def test_frame_folder_names_modes_and_indices_at_their_edges(tmp_path):
    """Suffixes and numbers compare without case; hidden files are no frames; a 16-bit value rounds to the nearest
    8-bit one and values outside 16 bits are clipped; one colour frame makes the clip colour (grey frames repeated
    to three equal channels, 16-bit ones too); negative indices and a video index where there is one video are
    refused; a file named .gif that is no GIF is named."""
    from PIL import Image

    video = gradient_video(3, 8, 8)
    folder = tmp_path / "case"
    folder.mkdir()
    Image.fromarray(video[0]).save(folder / "frame_1.png")
    Image.fromarray(video[1]).save(folder / "Frame_2.PNG")
    (folder / "._frame_0.png").write_bytes(b"AppleDouble")
    assert count_frames(folder) == 2 and np.array_equal(read_video(folder), video[:2])
    deep = tmp_path / "deep"
    deep.mkdir()
    Image.fromarray(np.array([[65407, 128]], np.uint16)).save(deep / "0.png")  # 254.502 and 0.498: 255 and 0
    Image.fromarray(np.array([[-5, 70000]], np.int32)).save(deep / "1.tif")  # mode I, outside 16 bits: clipped
    assert read_video(deep)[..., 0].tolist() == [[[255, 0]], [[0, 255]]]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(video[0, ..., 1]).save(mixed / "0.png")  # 8-bit grey
    Image.fromarray(np.full((8, 8), 257 * 9, np.uint16)).save(mixed / "1.png")  # 16-bit grey
    Image.fromarray(video[2]).save(mixed / "2.png")  # colour
    read = read_video(mixed)
    assert read.shape == (3, 8, 8, 3) and np.array_equal(read[0], np.repeat(video[0, ..., 1:2], 3, axis=-1))
    assert (read[1] == 9).all() and np.array_equal(read[2], video[2])
    with pytest.raises(VideoReadError, match=r"frame indices -1..-1 outside its 3 frames"):
        read_video(mixed, [-1])
    many = tmp_path / "many.npy"
    np.save(many, np.zeros((2, 3, 4, 4, 1), np.uint8))
    with pytest.raises(VideoReadError, match="no video -1 among its 2"):
        read_video(many, video=-1)
    gif = write_video(tmp_path / "clip.gif", video)
    for one in (mixed, gif):
        with pytest.raises(VideoReadError, match="holds one video, not several"):
            count_frames(one, video=0)
    Image.fromarray(video[0]).save(tmp_path / "x.gif", format="PNG")
    with pytest.raises(VideoReadError, match=r"x.gif: not a GIF \(Pillow reads it as PNG\)"):
        count_frames(tmp_path / "x.gif")


def test_video_folder_links_cache_signatures_and_old_caches(tmp_path):
    """Upper-case suffixes are found and dangling links skipped; a folder linked twice is read once; a frame
    rewritten at the same size, or at another size with its old time, is re-indexed; an index cache from before
    several-video files (no "videos" entry) is re-indexed, not a KeyError."""
    import json
    import os

    clip = save_frames(tmp_path / "clip", gradient_video(20, 16, 16))
    linked = tmp_path / "linked"
    linked.mkdir()
    for name in ("clip", "clip2"):
        (linked / name).symlink_to(clip, target_is_directory=True)
    (linked / "gone.mp4").symlink_to(tmp_path / "missing.mp4")
    with open(linked / "UPPER.NPY", "wb") as f:  # np.save would add ".npy" to a name without it
        np.save(f, gradient_video(4, 16, 16))
    ds = VideoFolder(linked, frames=4, size=16)
    names = {p.name for p, _, _ in ds.clips}
    assert len(ds) == 5 + 1 and "UPPER.NPY" in names and len(names - {"UPPER.NPY"} & {"clip", "clip2"}) == 1

    last = clip / "frame_19.png"
    stat = last.stat()
    last.write_bytes(b"x" * stat.st_size)  # same size, later time
    with pytest.raises(VideoReadError, match="clip cannot be read"):
        VideoFolder(clip, frames=4, size=16)
    save_frames(tmp_path / "clip", gradient_video(20, 16, 16))
    VideoFolder(clip, frames=4, size=16)
    stat = last.stat()
    last.write_bytes(b"broken")  # another size, its old time put back
    os.utime(last, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(VideoReadError, match="clip cannot be read"):
        VideoFolder(clip, frames=4, size=16)

    old = tmp_path / "old"
    old.mkdir()
    np.save(old / "a.npy", gradient_video(9, 16, 16))
    st = (old / "a.npy").stat()
    (old / ".multigen_index.json").write_text(json.dumps(
        {"a.npy": {"size": st.st_size, "mtime": st.st_mtime, "frames": 9, "error": None}}))
    assert len(VideoFolder(old, frames=4, size=16)) == 2


def test_evaluation_spreads_over_a_folders_videos_and_reads_them_before_training(tmp_path):
    """A folder's held-out clips come video by video: the first eval.num_clips were of the first videos alone (of 5
    videos, 2 scored). They are spread over all, and every one is read before training (a clip that cannot be
    decoded stopped the run at its final evaluation)."""
    from multigen.config import load_config
    from video.domain import Video, VideoConfig

    for name in "abcde":
        np.save(tmp_path / f"{name}.npy", gradient_video(60, 16, 16))
    domain = Video(load_config(VideoConfig, overrides=[
        "data.source=folder", f"data.root={tmp_path}", "data.frames=4", "data.size=16", "eval.num_clips=5"]))
    val = domain.build_dataset("val")
    videos = {val.clips[i][0].name for i in domain.held_out_picks(len(val))}
    assert len(val) == 10 and videos == {f"{name}.npy" for name in "abcde"}
    read = []
    domain.check_held_out(type("Reads", (), {"__len__": lambda s: len(val),
                                             "__getitem__": lambda s, i: read.append(i) or val[i]})())
    assert read == domain.held_out_picks(len(val))


def test_an_m4v_is_read_as_the_mp4_it_is(tmp_path, mp4):
    """decord reads .m4v (iTunes's name for an mp4); a folder skipped it without a word."""
    (tmp_path / "a.m4v").write_bytes(mp4.read_bytes())
    ds = VideoFolder(tmp_path, frames=4, size=16)
    assert [path.name for path, _, _ in ds.clips] == ["a.m4v"] * 5 and len(read_video(tmp_path / "a.m4v")) == 20
