"""Per-frame training levels and noised context: the ends of their ranges, which clips are noised, and the noise
that sampling shows the network; the staggered sampler (a frame delay) on a clip with nothing observed."""

import torch

from multigen.config import load_config
from multigen.samplers import DEFAULT_SPACING, sampling_grid
from video.conditioning import TaskMix, per_frame_steps, sample_masks
from video.domain import Video, VideoConfig
from video.sampling import generate

from .test_video_model import tiny_unet
from .test_video_sampling import Records, _clips

PER_FRAME = ["data.frames=5", "data.size=16", "diffusion.timesteps=100"]


def test_per_frame_steps_of_generated_frames_are_uniform_on_one_to_timesteps_ends_included():
    """Each generated frame's step is uniform on ``1..timesteps``: both ends occur, each value about 1/timesteps of
    the time, ordered or not (ordering only moves the draws)."""
    mask = sample_masks(1024, 8, TaskMix(), generator=torch.Generator().manual_seed(0))
    for ordered in (False, True):
        steps = per_frame_steps(mask, 10, ordered, torch.Generator().manual_seed(1))[~mask]
        counts = torch.bincount(steps, minlength=11)
        assert counts[0] == 0 and steps.min() == 1 and steps.max() == 10
        assert ((counts[1:] / len(steps) - 0.1).abs() < 0.015).all(), counts


def _training_times_and_conditions(overrides: list[str], b: int = 64):
    domain = Video(load_config(VideoConfig, overrides=[*PER_FRAME, *overrides]))
    model, clips = Records(tiny_unet()), _clips(b=b)
    torch.manual_seed(0)
    mask = sample_masks(b, 5, TaskMix())
    torch.manual_seed(0)  # the loss draws the same masks
    domain.training_loss(model, clips)
    return clips, mask, model.times[0], model.conds[0][:, :, :1]


def test_the_context_level_is_uniform_on_zero_to_context_noise_both_ends_included():
    """``task.context_noise=0.02`` over 100 steps: the observed frames' level takes each of the steps 0, 1 and 2."""
    clips, mask, t, shown = _training_times_and_conditions(["task.per_frame=1.0", "task.context_noise=0.02"])
    levels = sorted(set(torch.where(mask, t, -1.0).amax(1)[mask.any(1)].tolist()))
    assert [round(v, 6) for v in levels] == [0.0, 0.01, 0.02], levels


def test_clips_at_one_shared_level_show_their_observed_frames_clean():
    """With ``task.per_frame`` < 1 the clips trained at one shared level are ordinary conditional clips: their
    observed frames enter the condition clean, whatever ``task.context_noise`` does to the per-frame clips."""
    clips, mask, t, shown = _training_times_and_conditions(["task.per_frame=0.5", "task.context_noise=0.3"])
    shared = (t == t[:, :1]).all(1) & (t[:, 0] > 0.3) & mask.any(1)  # one level above any context level
    assert shared.sum() >= 5
    assert torch.equal(shown[shared][mask[shared]], clips[shared][mask[shared]])
    noised = ~(t == t[:, :1]).all(1) & (torch.where(mask, t, 0.0).amax(1) > 0)  # per-frame clips with a level
    assert noised.sum() >= 5 and not torch.equal(shown[noised][mask[noised]], clips[noised][mask[noised]])


def _sampled_context(context_noise: float):
    domain = Video(load_config(VideoConfig, overrides=[*PER_FRAME, "model.residual=false", "task.per_frame=0.5",
                                                       "task.context_noise=0.3"]))
    clips, mask = _clips(), torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 1]], dtype=torch.bool)
    inputs = []
    model = Records(tiny_unet())
    model.register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
    settings = domain.sample_settings(steps=2, guidance=1.0, context_noise=context_noise)
    generate(model, domain.diffusion, clips, mask, settings, generator=torch.Generator().manual_seed(0))
    return domain, clips, mask, inputs[0], model.conds[0][:, :, :1], model.times[0]


def test_sampling_shows_the_context_in_x_and_in_the_condition_with_independent_noise():
    """As in training (the condition's noise and the loss's own), the observed frames in the network's ``x`` and in
    its condition are ``alpha clip + sigma eps`` with two independent standard normal ``eps``."""
    domain, clips, mask, x, shown, t = _sampled_context(0.2)
    alpha = float(domain.diffusion.alpha_of(torch.tensor([0.2]))[0])
    sigma = (1 - alpha**2) ** 0.5
    eps_x = ((x[mask] - alpha * clips[mask]) / sigma).flatten()
    eps_c = ((shown[mask] - alpha * clips[mask]) / sigma).flatten()
    for eps in (eps_x, eps_c):
        assert abs(float(eps.mean())) < 0.15 and abs(float(eps.std()) - 1) < 0.15
    assert abs(float(torch.corrcoef(torch.stack([eps_x, eps_c]))[0, 1])) < 0.15


def test_a_context_time_is_rounded_to_the_nearest_step():
    """0.29 of 100 steps is step 29 (``0.29 * 100`` is 28.999... in floating point): the network is told t = 0.29."""
    *_, mask, x, shown, t = _sampled_context(0.29)
    assert torch.allclose(t[mask], torch.tensor(0.29), rtol=0, atol=1e-6), t[mask]


def test_the_training_context_level_reaches_the_step_nearest_context_noise():
    """``task.context_noise=0.29`` over 10 steps: the context levels are steps 0 to 3 (2.9 rounds to 3), all drawn."""
    domain = Video(load_config(VideoConfig, overrides=["data.frames=5", "data.size=16", "diffusion.timesteps=10",
                                                       "sample.steps=10", "task.per_frame=1.0",
                                                       "task.context_noise=0.29"]))
    model, clips = Records(tiny_unet()), _clips(b=64)
    torch.manual_seed(0)
    mask = sample_masks(64, 5, TaskMix())
    torch.manual_seed(0)  # the loss draws the same masks
    domain.training_loss(model, clips)
    levels = torch.where(mask, model.times[0], -1.0).amax(1)[mask.any(1)]
    assert sorted({round(v, 6) for v in levels.tolist()}) == [0.0, 0.1, 0.2, 0.3]


def test_a_clip_with_no_observed_frame_is_still_sampled_under_a_frame_delay():
    """A fault found by mutation round 6: in a batch under a frame delay, a clip with nothing observed had the
    delay inf cast to an integer, and never left its initial noise. All its frames now start at once and walk the
    whole grid down to its lowest noisy level."""
    domain = Video(load_config(VideoConfig, overrides=[
        "data.frames=5", "data.size=16", "diffusion.timesteps=100", "model.residual=false", "task.per_frame=0.5"]))
    model = Records(tiny_unet())
    mask = torch.tensor([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    settings = domain.sample_settings(steps=4, guidance=1.0, frame_delay=3)
    out = generate(model, domain.diffusion, _clips(), mask, settings, generator=torch.Generator().manual_seed(0))
    grid = sampling_grid(domain.diffusion.schedule, 4, DEFAULT_SPACING["dpm_solver_pp"])
    last_level = float(grid.t[-2])  # the lowest noisy level: each frame's last call
    assert any(bool((t[1] == last_level).all()) for t in model.times)
    noise = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(out[1], settings.temperature * noise[1])
