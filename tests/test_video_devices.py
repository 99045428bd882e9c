"""The video domain on meta and a real device: masks, the loss, sampling, long videos, evaluation, the CLI.

Every test takes the ``device`` fixture (tests/conftest.py): ``meta`` always, where a tensor made on
the CPU by mistake meets a meta tensor and raises (and a Python ``if`` on a device tensor cannot be
read); ``cuda`` (or ``$MULTIGEN_TEST_DEVICE``) when present, else the CPU, where the same code runs for real.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multigen.config import load_config
from multigen.samplers import Known
from video.conditioning import (
    TaskMix, blended_observed, motion_compensated, nearest_observed, pack_condition, sample_masks,
)
from video.domain import Video, VideoConfig
from video.metrics import linear_blend
from video.sampling import extend_autoregressive, extend_hierarchical, interpolate, predict

from .conftest import device_generator
from .test_video_model import tiny_unet

SHAPE = (2, 5, 1, 16, 16)


@pytest.fixture(scope="module")
def domain() -> Video:
    return Video(load_config(VideoConfig, overrides=[
        "data.frames=5", "data.size=16", "diffusion.timesteps=50", "sample.steps=2", "eval.samples_per_clip=2",
        "eval.batch_size=3", "eval.context=2", "task.image_prob=0.5"]))


def test_masks_and_conditions_are_made_on_the_device(device):
    masks = sample_masks(6, 5, TaskMix(), generator=device_generator(device), device=device)
    assert masks.device == device and masks.shape == (6, 5) and masks.dtype == torch.bool
    clips = torch.zeros(SHAPE, device=device)
    cond = pack_condition(clips, masks[:2])
    assert cond.device == device and cond.shape == (2, 5, 2, 16, 16)
    for reference in (nearest_observed, blended_observed, motion_compensated):
        ref = reference(clips, masks[:2], torch.arange(5, device=device).expand(2, 5) * 3)
        assert ref.device == device and ref.shape == SHAPE


@pytest.mark.parametrize("residual, reference",
                         [(False, "nearest"), (True, "nearest"), (True, "blend"), (True, "motion")])
def test_training_loss_keeps_to_the_device(device, domain, residual, reference):
    domain.cfg.model.residual, domain.cfg.model.reference = residual, reference
    domain.cfg.model.reference_input = residual
    model = tiny_unet(reference_input=residual).to(device)
    batch = torch.zeros(3, 5, 1, 16, 16, device=device)
    if device.type == "cuda":  # masks drawn on the device: the step never waits on a copy from the host
        domain.training_loss(model, batch)  # warm-up (lazy CUDA initialisation may sync)
        torch.cuda.set_sync_debug_mode("error")
    try:
        loss = domain.training_loss(model, batch)
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert loss.device == device and loss.shape == ()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm_solver_pp"])
@pytest.mark.parametrize("with_known", [False, True], ids=["free", "known"])
def test_sample_keeps_to_the_device(device, domain, sampler, with_known):
    domain.cfg.model.residual = domain.cfg.model.reference_input = True
    model = tiny_unet(reference_input=True).to(device)
    known = None
    if with_known:
        mask = torch.zeros(2, 5, dtype=torch.bool, device=device)
        mask[:, :2] = True
        known = Known(mask, torch.zeros(SHAPE, device=device))
    out = domain.sample(model, 2, known=known, sampler=sampler, steps=2, generator=device_generator(device))
    assert out.device == device and out.shape == SHAPE


def test_per_frame_training_and_staggered_sampling_keep_to_the_device(device):
    video = Video(load_config(VideoConfig, overrides=[
        "data.frames=5", "data.size=16", "diffusion.timesteps=50", "task.per_frame=0.5", "task.context_noise=0.2"]))
    model = tiny_unet().to(device)
    loss = video.training_loss(model, torch.zeros(3, 5, 1, 16, 16, device=device))
    assert loss.device == device and loss.shape == ()
    mask = torch.zeros(2, 5, dtype=torch.bool, device=device)
    mask[:, :2] = True
    out = video.sample(model, 2, known=Known(mask, torch.zeros(SHAPE, device=device)), steps=2, frame_delay=2,
                       context_noise=0.1, generator=device_generator(device))
    assert out.device == device and out.shape == SHAPE


def test_self_conditioned_training_and_sampling_keep_to_the_device(device):
    video = Video(load_config(VideoConfig, overrides=[
        "data.frames=5", "data.size=16", "diffusion.timesteps=50", "model.self_condition=true"]))
    model = tiny_unet(self_condition=True).to(device)
    batch = torch.zeros(3, 5, 1, 16, 16, device=device)
    torch.manual_seed(0)  # a coin per step, drawn on the host: with this seed both kinds of step occur
    for _ in range(4):
        loss = video.training_loss(model, batch)
        assert loss.device == device and loss.shape == ()
    mask = torch.zeros(2, 5, dtype=torch.bool, device=device)
    mask[:, :2] = True
    out = video.sample(model, 2, known=Known(mask, torch.zeros(SHAPE, device=device)), steps=3,
                       generator=device_generator(device))  # guidance 2 on the noisiest steps: two branches
    assert out.device == device and out.shape == SHAPE


def test_long_video_samplers_keep_to_the_device(device):
    model = tiny_unet(reference_input=True).to(device)
    video = Video(load_config(VideoConfig, overrides=["diffusion.timesteps=50"]))
    diffusion, g = video.diffusion, {"generator": device_generator(device), "residual": True, "reference_input": True}
    s = video.sample_settings(sampler="ddim", steps=2, guidance=2.0)  # the null branch moved by the reference
    context = torch.zeros(2, 2, 1, 16, 16, device=device)
    assert predict(model, diffusion, context, 5, s, **g).device == device
    assert interpolate(model, diffusion, context, 2, s, **g).shape == (2, 4, 1, 16, 16)
    for past in (False, True):
        auto = extend_autoregressive(model, diffusion, context, 7, 4, s, past=past, **g)
        assert auto.device == device and auto.shape == (2, 7, 1, 16, 16)
    for first, past in ((context, False), (context, True), (context[:, :0], False)):  # unconditional: as `sample`
        for length in (4, 13):  # one window; keyframes and gaps longer than the window
            hier = extend_hierarchical(model, diffusion, first, length, 4, s, past=past, **g)
            assert hier.device == device and hier.shape == (2, length, 1, 16, 16)


def test_evaluation_scores_keep_to_the_device(device, domain):
    domain.cfg.model.reference_input = True
    model = tiny_unet(reference_input=True).to(device)
    clips = torch.zeros(3, 5, 1, 16, 16, device=device)
    scores = domain.evaluation_scores(model, clips, device_generator(device))
    assert set(scores) == {f"{task}/{k}" for task in ("future", "interp", "past") for k in
                           ("psnr_best", "psnr_mean", "ssim_best", "ssim_mean", "baseline_psnr", "baseline_ssim",
                            "baseline_motion_psnr", "baseline_motion_ssim")}
    assert all(v.device == device and v.shape == () for v in scores.values())
    blend = linear_blend(clips, torch.tensor([True, False, False, False, True], device=device))
    assert blend.device == device and blend.shape == clips.shape


def test_cli_keeps_to_the_device(device, tmp_path):
    """The CLI commands on the device (they write real files, so not on meta)."""
    if device.type == "meta":
        pytest.skip("the CLI writes frames it has computed; meta has no values")
    from multigen.export import export_model
    from video.cli import main
    from video.io import read_video, write_video

    domain = Video(load_config(VideoConfig, overrides=[
        "data.frames=5", "data.size=16", "diffusion.timesteps=50", "sample.steps=2", "model.channel_mults=[1,2]",
        "model.attn_levels=[1]", "model.head_channels=8"]))  # tiny_unet's architecture
    export = export_model(tiny_unet(), domain, tmp_path / "export")
    video = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 1), dtype=np.uint8)
    write_video(tmp_path / "in.npy", video)
    common = ["--checkpoint", str(export), "--device", str(device)]
    for mode in ("autoregressive", "hierarchical"):
        out = tmp_path / f"{mode}.npy"
        assert main(["predict", *common, "--input", str(tmp_path / "in.npy"), "--context", "2", "--frames", "11",
                     "--mode", mode, "--out", str(out)]) == 0
        assert np.array_equal(read_video(out)[:2], video[:2])
    assert main(["interpolate", *common, "--input", str(tmp_path / "in.npy"), "--between", "2",
                 "--out", str(tmp_path / "interp.npy")]) == 0
    assert main(["sample", *common, "--num", "2", "--frames", "9", "--format", "npy",
                 "--out", str(tmp_path / "s")]) == 0
