"""multigen-video predict / interpolate / sample on real files, with observed frames kept exactly."""

import numpy as np
import pytest
import torch

from multigen.config import load_config
from multigen.export import export_model
from video.cli import main
from video.domain import Video, VideoConfig
from video.io import read_video, write_video

from .test_video_data import gradient_video, save_frames


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    cfg = load_config(VideoConfig, overrides=["data.frames=5", "data.size=16", "model.base_channels=8",
                                              "model.channel_mults=[1,2]", "model.attn_levels=[1]",
                                              "diffusion.timesteps=50", "sample.steps=3"])
    domain = Video(cfg)
    return export_model(domain.build_model(), domain, tmp_path_factory.mktemp("export") / "export")


def gray(frames, h=16, w=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (frames, h, w, 1), dtype=np.uint8)


def test_predict_keeps_context_exactly(tmp_path, export, capsys):
    inp = tmp_path / "in.npy"
    np.save(inp, gray(6))
    out = tmp_path / "out.npy"
    assert main(["predict", "--checkpoint", str(export), "--input", str(inp), "--context", "3", "--frames", "9",
                 "--out", str(out)]) == 0
    video = np.load(out)
    assert video.shape == (9, 16, 16, 1) and video.dtype == np.uint8
    assert np.array_equal(video[:3], gray(6)[:3])
    out2 = tmp_path / "hier.npy"
    assert main(["predict", "--checkpoint", str(export), "--input", str(inp), "--context", "2", "--frames", "12",
                 "--mode", "hierarchical", "--sampler", "ddim", "--temperature", "0.5", "--guidance", "1.5",
                 "--guidance-interval", "0.2", "0.8", "--out", str(out2)]) == 0  # guidance on a residual model
    assert np.array_equal(np.load(out2)[:2], gray(6)[:2]) and np.load(out2).shape[0] == 12
    for mode, context in (("autoregressive", 3), ("hierarchical", 2), ("autoregressive", 6)):  # 6: beyond the window
        past = tmp_path / f"past_{mode}_{context}.npy"
        assert main(["predict", "--checkpoint", str(export), "--input", str(inp), "--context", str(context),
                     "--frames", "11", "--mode", mode, "--past", "--out", str(past)]) == 0
        video = np.load(past)
        assert video.shape == (11, 16, 16, 1) and np.array_equal(video[-context:], gray(6)[-context:])


def test_predict_takes_its_context_at_the_model_frame_rate(tmp_path, export):
    """``--stride`` (default: the model's ``data.stride``) takes every stride-th frame of the input as context:
    the first K, or with ``--past`` the last K ending at the input's last frame."""
    inp = tmp_path / "in.npy"
    np.save(inp, gray(10))
    for past, kept in ((False, [0, 3, 6]), (True, [3, 6, 9])):
        out = tmp_path / f"out_{past}.npy"
        assert main(["predict", "--checkpoint", str(export), "--input", str(inp), "--context", "3", "--frames", "5",
                     "--stride", "3", *(["--past"] if past else []), "--out", str(out)]) == 0
        video = np.load(out)
        assert video.shape[0] == 5 and np.array_equal(video[-3:] if past else video[:3], gray(10)[kept])


def test_predict_from_an_mp4_to_mp4_and_gif(tmp_path, export):
    inp = tmp_path / "in.mp4"
    write_video(inp, gradient_video(8, 40, 48))
    for suffix in ("mp4", "gif"):
        out = tmp_path / f"out.{suffix}"
        assert main(["predict", "--checkpoint", str(export), "--input", str(inp), "--context", "4", "--frames", "8",
                     "--out", str(out)]) == 0
        assert out.stat().st_size > 0
    assert read_video(tmp_path / "out.mp4").shape[:3] == (8, 16, 16)


def test_predict_and_interpolate_from_a_folder_of_frames_and_a_gif(tmp_path, export):
    """A folder of PNG frames is an input like a file: its first frames are kept exactly; a GIF's keyframes too."""
    frames = save_frames(tmp_path / "frames", gray(12))
    out = tmp_path / "future.npy"
    assert main(["predict", "--checkpoint", str(export), "--input", str(frames), "--context", "3", "--frames", "6",
                 "--stride", "2", "--out", str(out)]) == 0
    assert np.array_equal(np.load(out)[:3], gray(12)[[0, 2, 4]])
    keys = write_video(tmp_path / "keys.gif", np.repeat(gray(2, seed=3) // 64 * 64, 3, axis=-1))
    out = tmp_path / "filled.npy"
    assert main(["interpolate", "--checkpoint", str(export), "--input", str(keys), "--between", "2",
                 "--out", str(out)]) == 0
    assert np.array_equal(np.load(out)[[0, 3]], gray(2, seed=3) // 64 * 64)


def test_outputs_as_folders_of_png_frames(tmp_path, export, capsys):
    """A path without a suffix is a new folder of PNG frames (context kept exactly, read back as a video); a folder
    that already holds frames is refused before any work, as is a file where the folder should be; sample writes
    one folder a sample with --format png."""
    inp = tmp_path / "in.npy"
    np.save(inp, gray(6))
    out = tmp_path / "future"
    assert main(["predict", "--checkpoint", str(export), "--input", str(inp), "--context", "3", "--frames", "7",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir())[:2] == ["frame_00000.png", "frame_00001.png"]
    video = read_video(out)
    assert video.shape == (7, 16, 16, 1) and np.array_equal(video[:3], gray(6)[:3])
    assert main(["predict", "--checkpoint", str(export), "--input", str(inp), "--context", "3", "--frames", "5",
                 "--out", str(out)]) == 2
    assert "it already holds frame images" in capsys.readouterr().err
    (tmp_path / "afile").write_bytes(b"")
    assert main(["interpolate", "--checkpoint", str(export), "--input", str(inp), "--between", "1",
                 "--out", str(tmp_path / "afile")]) == 2
    assert "it is a file" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(export), "--num", "2", "--frames", "5", "--format", "png",
                 "--out", str(tmp_path / "samples")]) == 0
    assert [read_video(tmp_path / "samples" / f"sample_00{i}").shape for i in range(2)] == [(5, 16, 16, 1)] * 2


def test_interpolate_keeps_keyframes(tmp_path, export):
    inp = tmp_path / "keys.npy"
    np.save(inp, gray(3, seed=1))
    out = tmp_path / "filled.npy"
    assert main(["interpolate", "--checkpoint", str(export), "--input", str(inp), "--between", "2",
                 "--out", str(out)]) == 0
    video = np.load(out)
    assert video.shape == (7, 16, 16, 1)
    assert np.array_equal(video[[0, 3, 6]], gray(3, seed=1))


def test_sample_writes_videos_and_a_grid(tmp_path, export):
    from PIL import Image

    out = tmp_path / "samples"
    assert main(["sample", "--checkpoint", str(export), "--num", "2", "--frames", "7", "--fps", "5",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("sample_*.gif")) == ["sample_000.gif", "sample_001.gif"]
    assert (out / "grid.png").is_file()
    for gif in ("sample_000.gif", "grid.gif"):  # the grid at the asked rate too
        with Image.open(out / gif) as image:
            assert image.info["duration"] == 200 and image.n_frames == 7


def test_sample_checks_every_output_before_sampling(tmp_path, export, monkeypatch, capsys):
    """A PNG-frame folder of a later sample that holds frames already stops the command before any sampling,
    with no frame written."""
    monkeypatch.setattr("video.cli.extend_hierarchical", lambda *a, **kw: pytest.fail("sampled"))
    save_frames(tmp_path / "pp" / "sample_001", gray(2))
    assert main(["sample", "--checkpoint", str(export), "--num", "2", "--format", "png",
                 "--out", str(tmp_path / "pp")]) == 2
    assert "pp/sample_001: it already holds frame images" in capsys.readouterr().err
    assert not list((tmp_path / "pp").glob("sample_000/*"))


def test_sample_draws_every_frame_at_the_unconditional_temperature(tmp_path, export, monkeypatch):
    """The keyframes' window is unconditional and the gaps between them are not: `sample` runs both at the export's
    unconditional temperature (the schema's 1, not the prediction temperature 0.2), or at --temperature."""
    seen = []
    monkeypatch.setattr("video.cli.extend_hierarchical",
                        lambda model, diffusion, first, length, window, settings, **kw: seen.append(settings)
                        or torch.zeros(len(first), length, *first.shape[2:]))
    for extra in ([], ["--temperature", "0.5"]):
        assert main(["sample", "--checkpoint", str(export), "--num", "1", "--out", str(tmp_path / "s"), *extra]) == 0
    assert [(s.temperature, s.unconditional_temperature) for s in seen] == [(1.0, 1.0), (0.5, 0.5)]


def test_errors_name_the_problem(tmp_path, export, capsys):
    assert main(["predict", "--checkpoint", str(export), "--input", str(tmp_path / "missing.mp4"),
                 "--context", "2", "--frames", "6", "--out", str(tmp_path / "o.npy")]) == 2
    assert "missing.mp4" in capsys.readouterr().err
    np.save(tmp_path / "two.npy", gray(2))
    assert main(["predict", "--checkpoint", str(export), "--input", str(tmp_path / "two.npy"),
                 "--context", "3", "--frames", "6", "--out", str(tmp_path / "o.npy")]) == 2
    assert "--context 3" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(export), "--input", str(tmp_path / "two.npy"), "--context", "1",
                 "--frames", "4", "--temperature", "-1", "--out", str(tmp_path / "o.npy")]) == 2
    assert "sample.temperature: must be >= 0" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(export), "--input", str(tmp_path / "two.npy"), "--context", "1",
                 "--frames", "4", "--temperature", "inf", "--out", str(tmp_path / "o.npy")]) == 2
    assert "sample.temperature: must be finite, got inf" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "s")]) == 2
    assert "config.yaml" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(export), "--input", str(tmp_path / "two.npy"), "--context", "2",
                 "--frames", "4", "--stride", "2", "--out", str(tmp_path / "o.npy")]) == 2
    assert "--context 2 must be between 1 and the 1 frames taken every 2" in capsys.readouterr().err
    # an output the command cannot write fails before the model is loaded or anything sampled
    assert main(["predict", "--checkpoint", str(tmp_path), "--input", str(tmp_path / "two.npy"), "--context", "1",
                 "--frames", "4", "--out", str(tmp_path / "o.avi")]) == 2
    assert "cannot write" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert main(["predict", "--checkpoint", str(tmp_path), "--input", str(tmp_path / "two.npy"), "--context", "1",
                 "--frames", "4", "--out", str(tmp_path / "afile" / "o.npy")]) == 2
    assert "cannot make its folder" in capsys.readouterr().err
    np.save(tmp_path / "one.npy", gray(1))
    assert main(["interpolate", "--checkpoint", str(export), "--input", str(tmp_path / "one.npy"),
                 "--out", str(tmp_path / "i.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("multigen-video: error: ") and "interpolation needs at least 2" in err


def test_frame_delay_and_context_noise_on_a_per_frame_model_and_errors_on_another(tmp_path, export, capsys):
    cfg = load_config(VideoConfig, overrides=["data.frames=5", "data.size=16", "model.base_channels=8",
                                              "model.channel_mults=[1,2]", "model.attn_levels=[1]",
                                              "diffusion.timesteps=50", "sample.steps=3", "task.per_frame=0.5",
                                              "task.context_noise=0.2"])
    domain = Video(cfg)
    per_frame = export_model(domain.build_model(), domain, tmp_path / "per_frame")
    inp, out = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(inp, gray(6))
    common = ["predict", "--input", str(inp), "--context", "2", "--frames", "9", "--frame-delay", "2",
              "--out", str(out)]
    assert main([*common, "--checkpoint", str(per_frame), "--context-noise", "0.1"]) == 0
    video = np.load(out)
    assert video.shape == (9, 16, 16, 1) and np.array_equal(video[:2], gray(6)[:2])
    assert main([*common, "--checkpoint", str(export)]) == 2
    assert "task.per_frame" in capsys.readouterr().err
    assert main([*common, "--checkpoint", str(per_frame), "--context-noise", "0.3"]) == 2
    assert "task.context_noise=0.2" in capsys.readouterr().err
    assert main([*common, "--checkpoint", str(per_frame), "--sampler", "ddim"]) == 2
    assert "frame_delay=2 (frames farther from the observed ones start later) needs the dpm_solver_pp sampler, not " \
        "'ddim'" in capsys.readouterr().err


def _gray(frames):
    return np.random.default_rng(0).integers(0, 256, (frames, 16, 16, 1), dtype=np.uint8)


def test_context_may_use_every_frame_at_the_model_rate(tmp_path, export, monkeypatch):
    """7 frames taken every 3rd are frames 0, 3 and 6: three context frames are available."""
    monkeypatch.setattr("video.cli.extend_autoregressive",
                        lambda model, diffusion, first, length, *a, **kw:
                        torch.cat([first, torch.zeros(1, length - first.shape[1], *first.shape[2:])], 1))
    np.save(tmp_path / "in.npy", _gray(7))
    assert main(["predict", "--checkpoint", str(export), "--input", str(tmp_path / "in.npy"), "--context", "3",
                 "--frames", "5", "--stride", "3", "--out", str(tmp_path / "o.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "o.npy")[:3], _gray(7)[[0, 3, 6]])


def test_frames_equal_to_the_context_are_refused(tmp_path, export, capsys):
    np.save(tmp_path / "in.npy", _gray(6))
    assert main(["predict", "--checkpoint", str(export), "--input", str(tmp_path / "in.npy"), "--context", "3",
                 "--frames", "3", "--out", str(tmp_path / "o.npy")]) == 2
    assert "--frames 3 must exceed --context 3" in capsys.readouterr().err


def test_a_gap_longer_than_the_window_is_filled_with_the_keyframes_kept(tmp_path, export):
    """Window 5: ``--between 4`` does not fit one window, so the gap is filled hierarchically."""
    np.save(tmp_path / "keys.npy", _gray(2))
    assert main(["interpolate", "--checkpoint", str(export), "--input", str(tmp_path / "keys.npy"),
                 "--between", "4", "--steps", "2", "--out", str(tmp_path / "o.npy")]) == 0
    out = np.load(tmp_path / "o.npy")
    assert out.shape[0] == 6 and np.array_equal(out[[0, 5]], _gray(2))
