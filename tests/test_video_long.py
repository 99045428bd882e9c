"""benchmarks/video_long.py: long prediction forward and backward, scored by distance from the context."""

import numpy as np
import pytest
import torch
from PIL import Image

from multigen.config import load_config
from video.domain import Video, VideoConfig
from video.io import to_uint8
from video.metrics import PSNR_CAP, linear_blend, psnr

from .conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("video_long")


def _domain() -> Video:
    return Video(load_config(VideoConfig, overrides=["data.frames=5", "data.size=16", "model.base_channels=8",
                                                     "model.channel_mults=[1,2]", "model.attn_levels=[1]",
                                                     "diffusion.timesteps=50", "sample.steps=2"]))


def test_rows_score_each_band_of_frames_away_from_the_context(bench, monkeypatch):
    """With a stand-in for the chaining that returns the clips themselves every generated frame scores the PSNR
    cap, and with one that returns the copy baseline the model's scores are the copy's, band by band; the bands
    count frames away from the context in both directions."""
    domain = _domain()
    clips = bench.held_out_clips(domain, 11, 3)
    assert clips.shape == (3, 11, 1, 16, 16)
    seen = []

    def perfect(model, diffusion, first, length, window, settings, past, generator, **kw):
        seen.append((past, first.shape[1], length, window))
        return clips[: len(first)]

    monkeypatch.setattr(bench, "MODES", {"perfect": perfect})
    rows = bench.long_rows(domain, domain.build_model(), clips, context=3, band=3)
    assert seen == [(False, 3, 11, 5), (True, 3, 11, 5)]
    assert [(r["direction"], r["frames"]) for r in rows] == [(d, f) for d in ("future", "past")
                                                              for f in ("1-3", "4-6", "7-8", "1-8")]
    assert all(r["model_psnr"] == PSNR_CAP and r["model_ssim"] == pytest.approx(1.0) for r in rows)
    future_far = linear_blend(clips, torch.arange(11) < 3)[:, 9:]  # frames 7-8 away: indices 9 and 10
    assert rows[2]["copy_psnr"] == pytest.approx(psnr(future_far, clips[:, 9:]).mean().item())
    past_near = linear_blend(clips, torch.arange(11) >= 8)[:, 5:8]  # frames 1-3 before the context: 7, 6, 5
    assert rows[4]["copy_psnr"] == pytest.approx(psnr(past_near, clips[:, 5:8]).mean().item())

    def copying(model, diffusion, first, length, window, settings, past, generator, **kw):
        return linear_blend(clips, torch.arange(11) >= 8 if past else torch.arange(11) < 3)

    monkeypatch.setattr(bench, "MODES", {"copy": copying})
    for r in bench.long_rows(domain, domain.build_model(), clips, context=3, band=3):
        assert r["model_psnr"] == pytest.approx(r["copy_psnr"]) and r["model_ssim"] == pytest.approx(r["copy_ssim"])
    one_band = bench.long_rows(domain, domain.build_model(), clips, context=3, band=8)  # one band holds all 8
    assert [(r["direction"], r["frames"]) for r in one_band] == [("future", "1-8"), ("past", "1-8")]


def test_the_chaining_runs_and_keeps_the_context(bench, tmp_path):
    domain = _domain()
    torch.manual_seed(0)
    clips = bench.held_out_clips(domain, 9, 2)
    rows = bench.long_rows(domain, domain.build_model(), clips, context=2, band=4, pictures=tmp_path)
    assert [(r["direction"], r["mode"], r["frames"]) for r in rows] == [
        (d, m, f) for d in ("future", "past") for m in ("autoregressive", "hierarchical")
        for f in ("1-4", "5-7", "1-7")]
    assert all(r["model_psnr"] < PSNR_CAP for r in rows)
    with pytest.raises(ValueError, match="below the model's window"):
        bench.long_rows(domain, domain.build_model(), clips, context=5)
    with pytest.raises(ValueError, match="--context 0 must be at least 1"):
        bench.check_context(0, 5, 9)
    lines = bench.table(rows).splitlines()
    assert len(lines) == 2 + len(rows) and all(line.count("|") == 7 for line in lines)
    for name in ("future_autoregressive", "past_hierarchical"):  # 2 clips, each real one above its generated one
        with Image.open(tmp_path / f"{name}.png") as png:
            assert png.size == (9 * 18 - 2, 4 * 18 - 2)
        assert (tmp_path / f"{name}.gif").stat().st_size > 0


def test_pictures_show_each_real_clip_above_its_generated_twin(bench, monkeypatch, tmp_path):
    domain = _domain()
    clips = bench.held_out_clips(domain, 7, 3)

    def blank(model, diffusion, first, length, window, settings, past, generator, **kw):
        """The observed frames, and grey (0) where the model would draw."""
        observed = torch.arange(length) >= length - 2 if past else torch.arange(length) < 2
        return torch.where(observed[:, None, None, None], clips[: len(first)], torch.zeros_like(clips[: len(first)]))

    monkeypatch.setattr(bench, "MODES", {"blank": blank})
    bench.long_rows(domain, domain.build_model(), clips, context=2, pictures=tmp_path, picture_clips=2)
    with Image.open(tmp_path / "future_blank.png") as png:
        strip = np.asarray(png)[..., 0]
    assert strip.shape == (4 * 18 - 2, 7 * 18 - 2)  # 16-pixel frames, 2-pixel gaps

    def frame(row: int, t: int) -> np.ndarray:
        return strip[row * 18: row * 18 + 16, t * 18: t * 18 + 16]

    real = [to_uint8(c)[..., 0] for c in clips[:2]]
    grey = to_uint8(torch.zeros(1, 1, 16, 16))[0, ..., 0]
    assert np.array_equal(frame(0, 4), real[0][4]) and np.array_equal(frame(2, 6), real[1][6])  # real clips
    assert np.array_equal(frame(1, 4), grey) and np.array_equal(frame(1, 1), real[0][1])  # generated, context kept


def test_sample_overrides_are_validated(bench):
    domain = _domain()
    bench.override_sample_settings(domain, ["guidance=2", "steps=7"])
    assert domain.cfg.sample.guidance == 2.0 and domain.cfg.sample.steps == 7
    with pytest.raises(SystemExit, match="--sample: .*nonsense"):
        bench.override_sample_settings(domain, ["nonsense=1"])
    # the domain's checks of how the settings go together, as a sampling call makes them
    for bad, message in [(["resample=3"], "resample=3 only applies to the ddpm sampler"),
                         (["steps=5000"], "steps=5000: at most the schedule's")]:
        with pytest.raises(SystemExit, match=f"--sample: {message}"):
            bench.override_sample_settings(_domain(), bad)


def test_an_export_of_another_domain_is_refused(bench, tmp_path):
    from multigen.export import export_model
    from multigen.toy2d import Toy2D, Toy2DConfig

    video = export_model(_domain().build_model(), _domain(), tmp_path / "video")
    pretrained = bench.load_export_of(Video, video, "cpu")
    assert isinstance(pretrained.domain, Video) and not pretrained.model.training
    toy = Toy2D(load_config(Toy2DConfig))
    other = export_model(toy.build_model(), toy, tmp_path / "toy")
    with pytest.raises(SystemExit, match="holds a toy2d model, not a video model"):
        bench.load_export_of(Video, other, "cpu")


def test_a_context_as_long_as_the_clips_is_a_usage_error_before_any_work(bench, monkeypatch, tmp_path, capsys):
    from multigen.export import export_model

    export = export_model(_domain().build_model(), _domain(), tmp_path / "video")
    monkeypatch.setattr(bench, "held_out_clips", lambda *a: pytest.fail("clips were built"))
    monkeypatch.setattr("sys.argv", ["video_long.py", str(export), "--length", "4", "--context", "4",
                                     "--device", "cpu", "--out", str(tmp_path / "long.json")])
    with pytest.raises(SystemExit) as exit_:
        bench.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--context 4 must be at least 1 and below the model's window (5) and the --length (4)" in err
