"""Long videos and the video command line at their edges: clamped context when chaining backward and in nested
gaps, unconditional keyframes to the last frame, the model's stride, more context than the window, --frames,
--fps, a gap that fills the window (mutation round 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from multigen.config import load_config
from multigen.export import export_model
from video.cli import main as video_main
from video.domain import Video, VideoConfig
from video.sampling import extend_autoregressive, extend_hierarchical, predict

VIDEO = ["data.frames=5", "data.size=16", "model.base_channels=8", "model.channel_mults=[1,2]",
         "model.attn_levels=[1]", "diffusion.timesteps=50", "sample.steps=3"]


class Overshoots(nn.Module):
    """A constant prediction whose x0 estimates leave [-1, 1] (a model of whole frames without clip_x0)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x, t, *args, **kwargs):
        return torch.full_like(x, 1.3) * self.scale


def _loose() -> Video:
    return Video(load_config(VideoConfig, overrides=["data.frames=5", "data.size=8", "diffusion.timesteps=50",
                                                     "model.residual=false", "diffusion.clip_x0=null"]))


def _first(k: int) -> torch.Tensor:
    return torch.rand(1, k, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_predict_refuses_a_context_that_fills_the_window():
    with pytest.raises(ValueError, match=r"need 0 < context \(5\) < frames \(5\)"):
        predict(None, None, _first(5), 5, None)


def test_a_long_video_shorter_than_its_context_is_refused():
    """extend_autoregressive returned the context itself (more frames than asked), extend_hierarchical failed on a
    negative dimension, or on none."""
    with pytest.raises(ValueError, match="length 2: at least the 3 context frames"):
        extend_autoregressive(None, None, _first(3), 2, 5, None)
    with pytest.raises(ValueError, match="length 2: at least the 3 observed frames"):
        extend_hierarchical(None, None, _first(3), 2, 5, None)
    with pytest.raises(ValueError, match="length 0: at least 1$"):  # nothing observed (was an IndexError deep inside)
        extend_hierarchical(None, None, _first(0), 0, 5, None)


def test_backward_chaining_clamps_generated_frames_before_they_become_context():
    loose = _loose()
    out = extend_autoregressive(Overshoots(), loose.diffusion, _first(2), 12, 5,
                                loose.sample_settings(steps=2, sampler="ddim"), past=True, **loose.model_options())
    assert out.shape[1] == 12 and torch.equal(out[:, -2:], _first(2))
    assert out.abs().max() <= 1


def test_hierarchical_gap_filling_clamps_frames_that_become_context_of_nested_gaps():
    """length 17, window 5, 2 observed: keyframes 0, 1, 6, 11, 16 leave gaps of 4 frames, filled in two levels."""
    loose = _loose()
    out = extend_hierarchical(Overshoots(), loose.diffusion, _first(2), 17, 5,
                              loose.sample_settings(steps=2, sampler="ddim"), **loose.model_options())
    assert out.shape[1] == 17 and torch.equal(out[:, :2], _first(2))
    assert out.abs().max() <= 1


def test_unconditional_hierarchical_sampling_reaches_the_last_frame():
    """Nothing observed: the keyframes run from frame 0 to the last one, so every frame is generated."""
    loose = _loose()
    windows = []
    model = Overshoots()
    forward = model.forward

    def recording(x, t, cond, frame_index=None, *a, **kw):
        windows.append(tuple(frame_index[0].tolist()) if frame_index is not None else None)
        return forward(x, t)

    model.forward = recording
    out = extend_hierarchical(model, loose.diffusion, _first(0), 9, 5,
                              loose.sample_settings(steps=2, sampler="ddim"), **loose.model_options())
    assert out.shape[1] == 9 and (out.flatten(2).abs().amax(2) > 0).all(), "every frame was generated"
    assert windows[0] == (0, 2, 4, 6, 8)


@pytest.fixture(scope="module")
def video_exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("video_exports")
    plain = Video(load_config(VideoConfig, overrides=VIDEO))
    strided = Video(load_config(VideoConfig, overrides=[*VIDEO, "data.stride=3"]))
    return (export_model(plain.build_model(), plain, root / "plain"),
            export_model(strided.build_model(), strided, root / "strided"))


def _gray(frames: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (frames, 16, 16, 1), dtype=np.uint8)


def _context_then_zeros(model, diffusion, first, length, *a, past=False, **kw):
    new = torch.zeros(first.shape[0], length - first.shape[1], *first.shape[2:])
    return torch.cat([new, first] if past else [first, new], 1)


def test_predict_takes_the_context_at_the_models_stride_by_default(tmp_path, video_exports, monkeypatch):
    monkeypatch.setattr("video.cli.extend_autoregressive", _context_then_zeros)
    np.save(tmp_path / "in.npy", _gray(7))
    assert video_main(["predict", "--checkpoint", str(video_exports[1]), "--input", str(tmp_path / "in.npy"),
                       "--context", "3", "--frames", "5", "--out", str(tmp_path / "o.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "o.npy")[:3], _gray(7)[[0, 3, 6]])


def test_forward_prediction_from_more_context_than_the_window_keeps_the_context_in_order(
        tmp_path, video_exports, monkeypatch):
    seen = []

    def extend(model, diffusion, first, length, *a, **kw):
        seen.append(first.clone())
        return _context_then_zeros(model, diffusion, first, length, *a, **kw)

    monkeypatch.setattr("video.cli.extend_autoregressive", extend)
    np.save(tmp_path / "in.npy", _gray(6))
    assert video_main(["predict", "--checkpoint", str(video_exports[0]), "--input", str(tmp_path / "in.npy"),
                       "--context", "6", "--frames", "9", "--out", str(tmp_path / "o.npy")]) == 0
    video = np.load(tmp_path / "o.npy")
    assert video.shape[0] == 9 and np.array_equal(video[:6], _gray(6))
    assert seen[0].shape[1] == 4  # the window (5) conditions on the 4 frames nearest the new ones: the last 4
    assert np.array_equal(np.load(tmp_path / "o.npy")[2:6], _gray(6)[2:6])


def test_sample_makes_videos_of_the_asked_length(tmp_path, video_exports, monkeypatch):
    lengths = []
    monkeypatch.setattr("video.cli.extend_hierarchical",
                        lambda model, diffusion, first, length, window, settings, **kw: lengths.append(length)
                        or torch.zeros(len(first), length, *first.shape[2:]))
    assert video_main(["sample", "--checkpoint", str(video_exports[0]), "--num", "1", "--frames", "7",
                       "--format", "npy", "--out", str(tmp_path / "s")]) == 0
    assert lengths == [7] and np.load(tmp_path / "s" / "sample_000.npy").shape[0] == 7


def test_predict_writes_a_gif_at_the_asked_frame_rate(tmp_path, video_exports, monkeypatch):
    monkeypatch.setattr("video.cli.extend_autoregressive", _context_then_zeros)
    np.save(tmp_path / "in.npy", _gray(3))
    assert video_main(["predict", "--checkpoint", str(video_exports[0]), "--input", str(tmp_path / "in.npy"),
                       "--context", "2", "--frames", "4", "--fps", "4", "--out", str(tmp_path / "o.gif")]) == 0
    with Image.open(tmp_path / "o.gif") as gif:  # the two generated frames are equal: both kept
        assert gif.info["duration"] == 250 and gif.n_frames == 4


def test_interpolate_accepts_a_gap_that_fills_the_window(tmp_path, video_exports, monkeypatch):
    """window 5 = both keyframes and 3 new frames."""
    monkeypatch.setattr("video.cli.interpolate",
                        lambda model, diffusion, keys, between, settings, **kw:
                        torch.zeros(1, (keys.shape[1] - 1) * (between + 1) + 1, *keys.shape[2:]))
    np.save(tmp_path / "keys.npy", _gray(2))
    assert video_main(["interpolate", "--checkpoint", str(video_exports[0]), "--input", str(tmp_path / "keys.npy"),
                       "--between", "3", "--out", str(tmp_path / "o.npy")]) == 0
    assert np.load(tmp_path / "o.npy").shape[0] == 5
