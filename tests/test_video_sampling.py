"""Video sampling: observed frames kept bit-exactly by every sampler and by long-video chaining; the loss."""

import pytest
import torch
from torch import nn

from multigen.config import ConfigError, load_config
from multigen.samplers import DEFAULT_SPACING, SAMPLERS, Known, sampling_grid
import video.sampling
from video.conditioning import (
    TaskMix, blended_observed, nearest_observed, observed_distance, pack_condition, per_frame_steps, sample_masks,
    scaled_residual,
)
from video.domain import Video, VideoConfig
from video.sampling import VideoSampleConfig, extend_autoregressive, extend_hierarchical, generate, interpolate, predict

from .conftest import REPO
from .test_video_model import tiny_unet


@pytest.fixture(scope="module")
def setup():
    cfg = load_config(VideoConfig, overrides=["data.frames=5", "data.size=16", "diffusion.timesteps=100",
                                              "model.residual=false"])  # x0 clipped to [-1, 1]
    return tiny_unet(), Video(cfg)


def _clips(b=2, t=5, seed=0):
    return torch.rand(b, t, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_observed_frames_kept_by_every_sampler(setup, sampler):
    model, domain = setup
    clips = _clips()
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 1]], dtype=torch.bool)
    for guidance, residual, reference, scale in [(1.0, False, "nearest", 1.0), (2.0, False, "nearest", 1.0),
                                                 (1.0, True, "nearest", 1.0), (1.0, True, "blend", 2.5),
                                                 (1.0, True, "motion", 2.0)]:
        out = generate(model, domain.diffusion, clips, mask,
                       domain.sample_settings(sampler=sampler, steps=6, guidance=guidance), residual=residual,
                       reference=reference, residual_scale=scale, generator=torch.Generator().manual_seed(0))
        assert torch.equal(out[mask], clips[mask])
        assert not torch.equal(out[~mask], clips[~mask])
        assert out.abs().max() <= 1.0 + 1e-5


def test_residual_scale_scales_what_is_diffused(setup, monkeypatch):
    """With ``residual_scale`` s the sampler draws s * (x - reference), and the clip is its draw / s + reference;
    training diffuses the same scaled residual."""
    model, domain = setup
    clips = _clips()
    mask = torch.tensor([[1, 0, 0, 0, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    ref = blended_observed(clips, mask)
    drawn = torch.full_like(clips, 0.3)
    seen = {}

    def fake_sample(denoiser, shape, schedule, known, **kw):
        seen["known"] = known.values
        return drawn

    monkeypatch.setattr("video.sampling.sample", fake_sample)
    out = generate(model, domain.diffusion, clips, mask, domain.sample_settings(steps=2), residual=True,
                   reference="blend", residual_scale=4.0)
    assert torch.allclose(seen["known"][mask], 4.0 * (clips - ref)[mask])  # what is known: the observed frames
    assert torch.allclose(out, (0.3 / 4.0 + ref).clamp(-1, 1))
    targets = []
    for scale in (4.0, 1.0):
        d = Video(load_config(VideoConfig, overrides=["data.frames=5", "data.size=16", "diffusion.timesteps=100",
                                                      f"model.residual_scale={scale}"]))
        assert d.diffusion.clip_x0 == 2.0 * scale and d.model_options()["residual_scale"] == scale
        monkeypatch.setattr(d.diffusion, "loss", lambda fn, target, loss_mask, steps: targets.append(target) or target)
        torch.manual_seed(0)  # the same masks
        d.training_loss(model, clips)
    assert torch.allclose(targets[0], 4.0 * targets[1]) and targets[1].abs().sum() > 0


def test_temperatures_reach_the_sampler(setup, monkeypatch):
    """Unconditional clips sample at ``unconditional_temperature`` (1 in the schema), clips with observed frames at
    ``temperature``; a call's ``temperature`` alone is every clip's. At temperature 0 a deterministic sampler's
    unconditional clips no longer depend on the draw."""
    model, domain = setup

    def pair(**kw):  # two draws of different seeds
        return [domain.sample(model, 2, steps=4, generator=torch.Generator().manual_seed(seed), **kw)
                for seed in (0, 1)]

    assert torch.equal(*pair(unconditional_temperature=0.0))
    assert not torch.allclose(*pair())  # unconditional: the unconditional temperature, 1
    assert torch.equal(*pair(temperature=0.0))  # given alone, a call's temperature is the unconditional one too
    assert not torch.allclose(*pair(temperature=0.0, unconditional_temperature=1.0))
    seen = []
    sampler = video.sampling.sample
    monkeypatch.setattr(video.sampling, "sample", lambda *a, **kw: seen.append(kw["temperature"]) or sampler(*a, **kw))
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[:, :2] = True
    domain.sample(model, 2, known=Known(mask, _clips()), steps=2, temperature=0.3, unconditional_temperature=0.7)
    domain.sample(model, 2, steps=2, temperature=0.3, unconditional_temperature=0.7)
    domain.sample(model, 2, known=Known(torch.zeros(2, 5, dtype=torch.bool), _clips()), steps=2, temperature=0.3,
                  unconditional_temperature=0.7)  # a mask that observes nothing: unconditional clips
    assert seen == [0.3, 0.7, 0.7]


def test_long_video_chaining_keeps_context_and_keyframes(setup):
    model, domain = setup
    context = _clips(t=3)
    s = domain.sample_settings(sampler="ddim", steps=4)
    for residual in (False, True):
        auto = extend_autoregressive(model, domain.diffusion, context, 12, window=5, settings=s, residual=residual)
        assert auto.shape == (2, 12, 1, 16, 16) and torch.equal(auto[:, :3], context)
        hier = extend_hierarchical(model, domain.diffusion, context, 17, window=5, settings=s, residual=residual)
        assert hier.shape == (2, 17, 1, 16, 16) and torch.equal(hier[:, :3], context)
    assert (hier.flatten(2).abs().amax(2) > 0).all(), "every frame was generated"
    keys = _clips(t=3, seed=1)
    filled = interpolate(model, domain.diffusion, keys, between=2, settings=s)
    assert filled.shape == (2, 7, 1, 16, 16)
    assert torch.equal(filled[:, [0, 3, 6]], keys)
    uncond = extend_hierarchical(model, domain.diffusion, context[:, :0], 9, window=5, settings=s)
    assert uncond.shape == (2, 9, 1, 16, 16)


def test_the_helpers_read_a_residual_network_as_its_domain_does():
    """A network the domain built carries how its output is read (residual to the blend, scaled by 2, the reference
    shown to it): predict, interpolate and the chaining take that from it, as the domain's own sampling does; told
    otherwise, they read it otherwise."""
    cfg = load_config(VideoConfig, REPO / "configs" / "video" / "tiny.yaml", [
        "data.frames=5", "data.size=16", "model.residual=true", "model.reference=blend", "model.residual_scale=2",
        "model.reference_input=true"])
    domain = Video(cfg)
    torch.manual_seed(0)
    model = domain.build_model().eval()
    s, context = domain.sample_settings(sampler="ddim", steps=2), _clips(b=1, t=2)
    opts = domain.model_options()

    def run(fn, *args, **kw):
        return fn(model, domain.diffusion, *args, s, generator=torch.Generator().manual_seed(3), **kw)

    for fn, args in ((predict, (context, 5)), (interpolate, (context, 2)), (extend_hierarchical, (context, 9, 5)),
                     (extend_autoregressive, (context, 8, 5))):
        assert torch.equal(run(fn, *args), run(fn, *args, **opts)), fn.__name__
    assert not torch.equal(run(predict, context, 5), run(predict, context, 5, residual_scale=1.0))


def test_a_residual_network_without_the_attributes_reads_at_scale_one_and_carries_its_own_settings():
    """A network that does not carry how it is read (wrapped, say) is read at residual scale 1 when told only that it
    is residual; a domain-built network carries each setting as configured (residual without the reference input
    too), and a network built directly is at scale 1."""
    cfg = load_config(VideoConfig, REPO / "configs" / "video" / "tiny.yaml", [
        "data.frames=5", "data.size=16", "model.residual=true", "model.reference_input=false"])
    domain = Video(cfg)
    torch.manual_seed(0)
    model = domain.build_model().eval()
    assert (model.residual, model.reference_input, model.residual_scale) == (True, False, cfg.model.residual_scale)
    assert tiny_unet(residual=True).residual_scale == 1.0

    class Wrapped(nn.Module):  # as DDP is: the network inside, its attributes not
        def __init__(self) -> None:
            super().__init__()
            self.module = model

        def forward(self, *args, **kw):
            return self.module(*args, **kw)

    s, context = domain.sample_settings(sampler="ddim", steps=2), _clips(b=1, t=2)
    draw = lambda **kw: predict(Wrapped(), domain.diffusion, context, 5, s,  # noqa: E731
                                generator=torch.Generator().manual_seed(3), residual=True, **kw)
    assert torch.equal(draw(), draw(residual_scale=1.0))


@pytest.mark.parametrize("past", [False, True])
def test_each_chained_window_conditions_on_the_frames_nearest_the_new_ones(monkeypatch, past):
    """A stand-in for ``predict`` that continues a ramp (each new frame 0.01 past its neighbour) and records its
    context: every window sees the K frames last produced (with ``past``: the K first), so the chained video is
    the whole ramp, with windows of 2 new frames and a last one of 1."""
    calls = []

    def ramp(model, diffusion, context, frames, settings, past=False, **kw):
        calls.append(context.clone())
        steps = 0.01 * torch.arange(1, frames - len(context[0]) + 1, dtype=context.dtype)[None, :, None, None, None]
        if past:
            return torch.cat([context[:, :1] - steps.flip(1), context], 1)
        return torch.cat([context, context[:, -1:] + steps], 1)

    monkeypatch.setattr(video.sampling, "predict", ramp)
    context = 0.01 * torch.arange(3, dtype=torch.float32)[None, :, None, None, None].expand(2, 3, 1, 4, 4)
    out = extend_autoregressive(None, None, context, 10, window=5, settings=None, past=past)
    expected = 0.01 * torch.arange(-7 if past else 0, 3 if past else 10, dtype=torch.float32)
    torch.testing.assert_close(out[0, :, 0, 0, 0], expected)
    assert len(calls) == 4
    for i, seen in enumerate(calls):  # after i windows: 3 + 2 i frames, the context the 3 nearest the new ones
        frames = 0.01 * (torch.arange(-2 * i, -2 * i + 3) if past else torch.arange(2 * i, 2 * i + 3))
        torch.testing.assert_close(seen[0, :, 0, 0, 0], frames.float())


def test_past_prediction_keeps_the_context_at_the_end(setup):
    """``past=True`` generates the frames before the context: the context ends every output bit-exactly, in one
    window, chained backward and hierarchically."""
    model, domain = setup
    context = _clips(t=3)
    s = domain.sample_settings(sampler="ddim", steps=4)
    for residual in (False, True):
        one = predict(model, domain.diffusion, context, 5, s, past=True, residual=residual, reference="blend")
        auto = extend_autoregressive(model, domain.diffusion, context, 12, window=5, settings=s, past=True,
                                     residual=residual)
        hier = extend_hierarchical(model, domain.diffusion, context, 17, window=5, settings=s, past=True,
                                   residual=residual)
        for clip, length in ((one, 5), (auto, 12), (hier, 17)):
            assert clip.shape == (2, length, 1, 16, 16) and torch.equal(clip[:, -3:], context)
            assert (clip[:, :-3].flatten(2).abs().amax(2) > 0).all(), "every earlier frame was generated"
    short = extend_hierarchical(model, domain.diffusion, context, 5, window=5, settings=s, past=True,
                                generator=torch.Generator().manual_seed(0))
    assert torch.equal(short, predict(model, domain.diffusion, context, 5, s, past=True,
                                      generator=torch.Generator().manual_seed(0)))


def _window_recorder(model):
    """``model`` wrapped to record, at each call, the frame indices of its window and which of them it observes
    (clip 0's); the wrapper and that list."""
    windows = []

    def recording(x, t, cond, frame_index=None, independent=None):
        windows.append((tuple(frame_index[0].tolist()), tuple(cond[0, :, -1, 0, 0].bool().tolist())))
        return model(x, t, cond, frame_index, independent)

    recording.parameters = model.parameters
    return recording, windows


@pytest.mark.parametrize("past", [False, True])
def test_hierarchical_gap_windows_observe_both_ends(setup, past):
    """Issue 17 item 6: length 17, window 5, 3 observed frames leaves a gap longer than a window; every
    window after the keyframes' must observe its first and last frame (FDM), and make each frame once. Past
    prediction mirrors the keyframes: the observed frames are the last three."""
    model, domain = setup
    recording, windows = _window_recorder(model)
    hier = extend_hierarchical(recording, domain.diffusion, _clips(t=3), 17, window=5,
                               settings=domain.sample_settings(sampler="ddim", steps=2), past=past)
    assert hier.shape == (2, 17, 1, 16, 16)
    calls = list(dict.fromkeys(windows))  # one entry per window (each is called once per sampler step)
    (keys, key_mask), gaps = calls[0], calls[1:]
    if past:
        assert keys[-3:] == (14, 15, 16) and keys[0] == 0 and key_mask == (False,) * 2 + (True,) * 3
    else:
        assert keys[:3] == (0, 1, 2) and keys[-1] == 16 and key_mask == (True,) * 3 + (False,) * 2
    assert max(b - a for a, b in zip(keys, keys[1:])) > 4, "the test needs a gap longer than the window"
    made = []
    for index, observed in gaps:
        assert len(index) <= 5 and list(index) == sorted(index)
        assert observed == (True,) + (False,) * (len(index) - 2) + (True,), (index, observed)
        made += index[1:-1]
    assert sorted(made) == sorted(set(range(17)) - set(keys))  # every other frame generated exactly once


def test_interpolation_fills_a_gap_longer_than_the_window_hierarchically(setup):
    """3 keyframes, 6 new frames between each pair, windows of 5: every window observes both its ends and holds at
    most 5 frames, each new frame is made once, and the keyframes come back bit-exactly at 0, 7 and 14."""
    model, domain = setup
    recording, windows = _window_recorder(model)
    keys = _clips(t=3, seed=1)
    filled = interpolate(recording, domain.diffusion, keys, 6, domain.sample_settings(sampler="ddim", steps=2),
                         window=5)
    assert filled.shape == (2, 15, 1, 16, 16) and torch.equal(filled[:, [0, 7, 14]], keys)
    made = []
    for index, observed in dict.fromkeys(windows):  # one entry per window (each is called once per sampler step)
        assert len(index) <= 5 and observed == (True,) + (False,) * (len(index) - 2) + (True,), (index, observed)
        made += index[1:-1]
    assert sorted(made) == sorted(set(range(15)) - {0, 7, 14})
    assert max(len(index) for index, _ in dict.fromkeys(windows)) == 5  # the windows are used whole
    with pytest.raises(ValueError, match="a window needs at least 3 frames"):
        interpolate(model, domain.diffusion, keys, 2, domain.sample_settings(), window=2)
    settings = domain.sample_settings(sampler="ddim", steps=2)
    draw = lambda between, **kw: interpolate(model, domain.diffusion, keys, between, settings,  # noqa: E731
                                             generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(draw(3, window=5), draw(3))  # a gap that fills the window exactly is that one window
    smallest = draw(4, window=3)  # one new frame a window
    assert smallest.shape == (2, 11, 1, 16, 16) and torch.equal(smallest[:, [0, 5, 10]], keys)


def test_float64_frames_are_taken_in_the_networks_precision(setup):
    """Frames in float64 (a NumPy clip, say) go into a float32 network as float32 (they failed inside its first
    convolution), and come back as exactly those float32 frames, by every sampler of video/sampling.py."""
    model, domain = setup
    clips, mask = _clips().double(), torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 1]], dtype=torch.bool)
    settings = domain.sample_settings(steps=3)
    out = generate(model, domain.diffusion, clips, mask, settings, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and torch.equal(out[mask], clips.float()[mask])
    first = clips[:1, :2]  # and the long-video samplers, whose buffers were float64 while generate gave float32
    for past in (False, True):
        for long in (extend_autoregressive(model, domain.diffusion, first, 8, 5, settings, past=past),
                     extend_hierarchical(model, domain.diffusion, first, 8, 5, settings, past=past),
                     extend_hierarchical(model, domain.diffusion, first, 4, 5, settings, past=past)):
            kept = long[:, -2:] if past else long[:, :2]
            assert long.dtype == torch.float32 and torch.equal(kept, first.float())
    filled = interpolate(model, domain.diffusion, clips[:1, [0, 2, 4]], 1, settings)
    assert filled.dtype == torch.float32 and torch.equal(filled[:, ::2], clips[:1, [0, 2, 4]].float())


def test_observed_frames_outside_the_convention_are_errors(setup):
    """uint8 frames, frames in [0, 255] or with a NaN would come out saturated or all NaN: each is named instead."""
    model, domain = setup
    clips, mask = _clips(), torch.tensor([[1, 1, 0, 0, 0]] * 2, dtype=torch.bool)
    settings = domain.sample_settings(steps=2, sampler="ddim")
    nan = clips.clone()
    nan[0, 1, 0, 3, 3] = float("nan")
    for bad, message in [(((clips + 1) * 127.5).to(torch.uint8), "expected floats in \\[-1, 1\\].*from_uint8"),
                         ((clips + 1) * 127.5, "values reach 2.*frames are in \\[-1, 1\\]"),
                         (nan, "NaN or infinite"), (clips[0], "expected \\(B, T, C, H, W\\)"),
                         (clips.repeat(1, 1, 3, 1, 1), "C = 3, but the model makes frames of 1 channel"),  # RGB
                         (clips.movedim(2, -1), "C = 16, but the model makes frames of 1 channel")]:  # (B, T, H, W, C)
        with pytest.raises(ValueError, match=message):
            generate(model, domain.diffusion, bad, mask[: len(bad)] if bad.dim() == 5 else mask, settings)
    nan[0, 3] = float("nan")  # frames to generate are not read: only the observed ones must be frames
    nan[0, 1] = clips[0, 1]
    assert torch.isfinite(generate(model, domain.diffusion, nan, mask, settings)).all()


def test_chaining_a_model_that_overshoots_the_frame_range():
    """A model of whole frames without clip_x0 may draw values past [-1, 1]; chained windows take them as context
    clamped (the range check is for a user's frames), and the observed frames stay exact."""
    loose = Video(load_config(VideoConfig, overrides=["data.frames=5", "data.size=16", "diffusion.timesteps=100",
                                                      "model.residual=false", "diffusion.clip_x0=null"]))

    class Overshoots(nn.Module):  # a constant prediction whose x0 estimates leave [-1, 1]
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x, t, *args, **kwargs):
            return torch.full_like(x, 1.3) * self.scale

    settings = loose.sample_settings(steps=2, sampler="ddim")
    first = _clips(1, 2)
    for extend in (extend_hierarchical, extend_autoregressive):
        out = extend(Overshoots(), loose.diffusion, first, 12, 5, settings, **loose.model_options())
        assert out.shape[1] == 12 and torch.equal(out[:, :2], first)


def test_known_mask_varying_inside_a_frame_is_an_error(setup):
    """Issue 17 item 5: a mask is one value per frame; one that varies inside a frame was cut to its first pixel."""
    model, domain = setup
    clips = _clips()
    frames = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 1]], dtype=torch.bool)
    full = frames[:, :, None, None, None].expand(clips.shape)
    outs = [domain.sample(model, 2, known=Known(m, clips), steps=2, sampler="ddim",
                          generator=torch.Generator().manual_seed(0)) for m in (frames, full)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0][frames], clips[frames])
    half = full.clone()
    half[0, 0, :, :8] = False  # the left half of frame 0 unobserved
    with pytest.raises(ValueError, match=r"shape \(2, 5, 1, 16, 16\) varies inside"):
        domain.sample(model, 2, known=Known(half, clips), steps=2)
    with pytest.raises(ValueError, match=r"mask of shape \(2, 4\) does not fit"):
        domain.sample(model, 2, known=Known(frames[:, :4], clips), steps=2)


class Shouts(nn.Module):
    """Wraps a video model and adds a huge error on observed (or on generated) frames only."""

    def __init__(self, inner, on_observed: bool):
        super().__init__()
        self.inner, self.on_observed = inner, on_observed

    def forward(self, x, t, cond, frame_index=None, independent=None):
        observed = cond[:, :, x.shape[2]:x.shape[2] + 1]  # the mask channel, after the observed frames
        return self.inner(x, t, cond, frame_index, independent) + 1e3 * (observed if self.on_observed else 1 - observed)


@pytest.mark.parametrize("residual, reference", [(False, "nearest"), (True, "nearest"), (True, "blend")])
def test_loss_ignores_observed_frames(setup, residual, reference):
    model, domain = setup
    if residual:
        domain = Video(load_config(VideoConfig, overrides=[
            "data.frames=5", "data.size=16", "diffusion.timesteps=100", "model.residual=true",
            f"model.reference={reference}", "model.reference_input=true"]))
        model = tiny_unet(reference_input=True)
        assert domain.diffusion.clip_x0 == 2.0  # residuals of [-1, 1] frames
    batch = _clips(b=16)
    losses = {}
    for name, m in [("plain", model), ("observed", Shouts(model, True)), ("generated", Shouts(model, False))]:
        torch.manual_seed(0)  # same masks, steps and noise for all three
        losses[name] = domain.training_loss(m, batch)
    assert torch.equal(losses["plain"], losses["observed"])
    assert losses["generated"] > losses["plain"] + 100


class Records(nn.Module):
    """Wraps a video model and keeps every ``cond`` and time ``t`` it is given."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.conds, self.times = inner, [], []

    def forward(self, x, t, cond, frame_index=None, independent=None, previous=None):
        self.conds.append(cond)
        self.times.append(t)
        return self.inner(x, t, cond, frame_index, independent, previous)


@pytest.mark.parametrize("reference", ["blend", "motion"])
def test_the_network_sees_the_reference_in_training_and_sampling(reference):
    """With ``model.reference_input`` the condition's last ``C`` channels are the reference frames the residual
    is taken to, the same in the training loss and in sampling; without it they are absent."""
    clips = _clips(b=4)
    for sees in (True, False):
        domain = Video(load_config(VideoConfig, overrides=[
            "data.frames=5", "data.size=16", "diffusion.timesteps=100", f"model.reference={reference}",
            f"model.reference_input={str(sees).lower()}"]))
        model = Records(domain.build_model())
        torch.manual_seed(0)
        mask = sample_masks(4, 5, TaskMix())
        torch.manual_seed(0)  # the loss draws the same masks
        domain.training_loss(model, clips)
        mask_ctx = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 1]] * 2, dtype=torch.bool)
        domain.sample(model, 4, known=Known(mask_ctx, clips), steps=2, guidance=1.0)  # one branch
        for cond, m in zip(model.conds[:2], (mask, mask_ctx)):
            ref = scaled_residual(clips, m, reference)[1]
            assert cond.shape[2] == (3 if sees else 2)
            assert torch.equal(cond[:, :, :2], pack_condition(clips, m))
            if sees:
                assert torch.equal(cond[:, :, 2:], ref) and ref.abs().sum() > 0


def test_reference_input_needs_a_residual_model():
    with pytest.raises(ConfigError, match="model.reference_input"):
        Video(load_config(VideoConfig, overrides=["model.residual=false", "model.reference_input=true"]))


def test_nearest_observed_frame_reference():
    clips = _clips(b=3, t=6)
    mask = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    ref = nearest_observed(clips, mask)
    assert all(torch.equal(ref[0, i], clips[0, 0]) for i in range(6))  # future prediction: copy the last context
    assert [int(torch.equal(ref[1, i], clips[1, 5])) for i in range(6)] == [0, 0, 0, 1, 1, 1]  # frames 3-5 are nearer 5
    assert torch.equal(ref[1, :3], clips[1, :1].expand(3, -1, -1, -1))
    assert torch.equal(ref[2], torch.zeros_like(ref[2]))  # nothing observed
    far = torch.tensor([[0, 10, 11, 12, 13, 30]]).expand(3, 6)  # real frame indices: frame 5 is far away
    assert torch.equal(nearest_observed(clips, mask, far)[1, 4], clips[1, 0])


def test_blended_observed_frame_reference():
    """Each frame blends the nearest observed frames on both sides by distance (the interpolation baseline),
    copies the nearest when they lie on one side, keeps observed frames, and is 0 with nothing observed."""
    clips = _clips(b=4, t=6)
    mask = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1], [0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]],
                        dtype=torch.bool)
    ref = blended_observed(clips, mask)
    assert torch.equal(ref[0], clips[0, :1].expand(6, -1, -1, -1))  # one side only: copy, as nearest_observed
    for i in range(6):
        assert torch.allclose(ref[1, i], (1 - i / 5) * clips[1, 0] + i / 5 * clips[1, 5], atol=1e-6)
    assert torch.equal(ref[2, 0], clips[2, 1]) and torch.equal(ref[2, 5], clips[2, 4])  # outside: nearest
    assert torch.equal(ref[2, 1], clips[2, 1]) and torch.equal(ref[2, 4], clips[2, 4])  # observed: themselves
    assert torch.allclose(ref[2, 2], (2 * clips[2, 1] + clips[2, 4]) / 3, atol=1e-6)
    assert torch.equal(ref[3], torch.zeros_like(ref[3]))
    far = torch.tensor([[0, 10, 11, 12, 13, 30]]).expand(4, 6)  # real frame indices weigh the blend
    assert torch.allclose(blended_observed(clips, mask, far)[1, 1], (2 * clips[1, 0] + clips[1, 5]) / 3, atol=1e-6)
    with pytest.raises(ValueError, match="unknown residual reference 'mean'; choose one of nearest, blend"):
        generate(tiny_unet(), Video(load_config(VideoConfig, overrides=["data.frames=6", "data.size=16"])).diffusion,
                 clips, mask, VideoSampleConfig(steps=2), residual=True, reference="mean")


def _farther_frames_are_noisier(steps, mask):
    """Whether, in every clip, a frame farther from the observed ones never has a lower step than a nearer one."""
    dist = observed_distance(mask)
    return bool((steps[:, :, None] >= steps[:, None, :])[dist[:, :, None] > dist[:, None, :]].all())


def test_per_frame_levels_keep_observed_frames_clean_and_order_the_others_by_distance():
    mask = sample_masks(512, 8, TaskMix(), generator=torch.Generator().manual_seed(0))
    ordered, independent = (per_frame_steps(mask, 100, o, torch.Generator().manual_seed(1)) for o in (True, False))
    for steps in (ordered, independent):
        assert torch.equal(steps == 0, mask) and int(steps.max()) <= 100
    assert _farther_frames_are_noisier(ordered, mask) and not _farther_frames_are_noisier(independent, mask)
    assert torch.equal(ordered.sort(1).values, independent.sort(1).values)  # the same draws, only placed in order
    free = ~mask.any(1)  # nothing observed: in a random order, not the frames' own
    assert free.sum() > 20 and not bool((ordered[free].diff(dim=1) >= 0).all())


def test_per_frame_training_gives_the_network_a_level_per_frame():
    overrides = ["data.frames=5", "data.size=16", "diffusion.timesteps=100", "task.per_frame_levels=ordered"]
    clips = _clips(b=16)
    for share, shape in ((0.0, (16,)), (1.0, (16, 5))):
        domain = Video(load_config(VideoConfig, overrides=[*overrides, f"task.per_frame={share}"]))
        model = Records(tiny_unet())
        torch.manual_seed(0)
        mask = sample_masks(16, 5, TaskMix())
        torch.manual_seed(0)  # the loss draws the same masks
        domain.training_loss(model, clips)
        t = model.times[0]
        assert t.shape == shape
    assert torch.equal(t == 0, mask) and _farther_frames_are_noisier(t, mask)


def test_frame_delay_starts_farther_frames_later_and_keeps_the_observed_ones(setup):
    model, _ = setup
    domain = Video(load_config(VideoConfig, overrides=[
        "data.frames=5", "data.size=16", "diffusion.timesteps=100", "model.residual=false", "task.per_frame=0.5"]))
    model, clips = Records(model), _clips()
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 1]], dtype=torch.bool)
    settings = domain.sample_settings(steps=4, guidance=1.0, frame_delay=3)
    out = generate(model, domain.diffusion, clips, mask, settings, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[mask], clips[mask]) and not torch.equal(out[~mask], clips[~mask])
    grid = sampling_grid(domain.diffusion.schedule, 4, DEFAULT_SPACING["dpm_solver_pp"])
    delay = torch.tensor([[0, 0, 0, 3, 6], [0, 0, 3, 0, 0]])  # 3 steps per frame beyond the nearest observed one
    assert len(model.times) == 4 + 6
    for n, t in enumerate(model.times):
        expect = torch.where(mask, 0.0, grid.t[(n - delay).clamp(0, 4)].float())
        assert torch.equal(t, expect), n


def test_a_frame_delay_needs_dpm_solver_and_a_per_frame_model():
    with pytest.raises(ConfigError, match="sample.frame_delay.*dpm_solver_pp"):
        Video(load_config(VideoConfig, overrides=["sample.frame_delay=2", "sample.sampler=ddim", "task.per_frame=0.5"]))
    domain = Video(load_config(VideoConfig))
    with pytest.raises(ValueError, match="task.per_frame"):
        domain.sample_settings(frame_delay=2)
    domain = Video(load_config(VideoConfig, overrides=["task.per_frame=0.5"]))
    assert domain.sample_settings(frame_delay=2).frame_delay == 2
    with pytest.raises(ValueError, match="dpm_solver_pp"):
        domain.sample_settings(frame_delay=2, sampler="ddim")


def test_noised_context_training_shows_observed_frames_at_a_level_of_their_own():
    """With ``task.context_noise``, a per-frame clip's observed frames share one level in ``[0, context_noise]``,
    which the network is told, and the condition shows them noised to it (clean at level 0)."""
    domain = Video(load_config(VideoConfig, overrides=[
        "data.frames=5", "data.size=16", "diffusion.timesteps=100", "task.per_frame=1.0", "task.context_noise=0.3"]))
    model, clips = Records(tiny_unet()), _clips(b=64)
    torch.manual_seed(0)
    mask = sample_masks(64, 5, TaskMix())
    torch.manual_seed(0)  # the loss draws the same masks
    domain.training_loss(model, clips)
    t, shown = model.times[0], model.conds[0][:, :, :1]
    level = torch.where(mask, t, -1.0).amax(1)  # each clip's observed frames' level
    assert torch.equal(torch.where(mask, t, level[:, None]), level[:, None].expand(-1, 5))  # one per clip
    seen = mask.any(1)
    assert 0 <= level[seen].min() and level[seen].max() <= 0.3 and len(level[seen].unique()) > 5
    clean = (shown == clips).flatten(2).all(2)
    assert torch.equal(clean[mask], (t == 0)[mask])  # noised exactly where the level is above 0
    noised = mask & (t > 0)  # shown = alpha clip + sigma eps at the frame's level, eps standard normal
    alpha = domain.diffusion.alpha_of(t)[noised].float()[:, None, None, None]
    eps = (shown[noised] - alpha * clips[noised]) / (1 - alpha**2).sqrt()
    assert eps.numel() > 20_000 and abs(float(eps.mean())) < 0.03 and abs(float(eps.std()) - 1) < 0.03


def test_noised_context_sampling_shows_the_observed_frames_at_one_fixed_level(setup):
    """``sample.context_noise`` shows the observed frames noised to that time with the same noise at every step,
    in the condition and in ``x``, and still returns them bit-exactly."""
    domain = Video(load_config(VideoConfig, overrides=[
        "data.frames=5", "data.size=16", "diffusion.timesteps=100", "task.per_frame=0.5", "task.context_noise=0.3"]))
    clips, mask = _clips(), torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 1]], dtype=torch.bool)
    for delay in (0, 2):
        inputs = []
        model = Records(setup[0])
        model.register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
        settings = domain.sample_settings(steps=4, guidance=1.0, frame_delay=delay, context_noise=0.2)
        out = generate(model, domain.diffusion, clips, mask, settings, generator=torch.Generator().manual_seed(0))
        assert torch.equal(out[mask], clips[mask]) and not torch.equal(out[~mask], clips[~mask])
        assert len(model.times) == 4 + 2 * delay
        for t, cond, x in zip(model.times, model.conds, inputs):
            assert t.shape == (2, 5) and bool((t[mask] == 0.2).all()) and not bool((t[~mask] == 0.2).any())
            assert torch.equal(cond, model.conds[0]) and torch.equal(x[mask], inputs[0][mask])
        noised = model.conds[0][:, :, :1][mask]
        assert not torch.equal(noised, clips[mask]) and (noised - clips[mask]).abs().max() < 4
    with pytest.raises(ValueError, match="task.context_noise=0.3"):
        domain.sample_settings(context_noise=0.5)


def test_noised_context_needs_per_frame_training_and_a_level_the_model_saw():
    with pytest.raises(ConfigError, match="task.context_noise"):
        Video(load_config(VideoConfig, overrides=["task.context_noise=0.3"]))
    with pytest.raises(ConfigError, match="task.context_noise"):
        Video(load_config(VideoConfig, overrides=["task.per_frame=0.5", "task.context_noise=1.5"]))
    with pytest.raises(ConfigError, match="sample.context_noise"):
        Video(load_config(VideoConfig, overrides=["task.per_frame=0.5", "sample.context_noise=0.1"]))


class Estimates(nn.Module):
    """Wraps a self-conditioned video model and keeps every ``x``, ``t``, ``previous`` and output of its calls."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x, t, cond, frame_index=None, independent=None, previous=None):
        out = self.inner(x, t, cond, frame_index, independent, previous)
        self.calls.append((x, t, previous, out))
        return out


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_self_conditioned_sampling_shows_each_step_the_estimate_of_the_step_before(guidance):
    """``model.self_condition``: the first call sees no estimate; every later one sees the clamped x0 estimate the
    call before it made, row for row: the guidance's two branches each their own while both run, and the
    conditional branch's alone once the null branch leaves (``guidance_interval``)."""
    domain = Video(load_config(VideoConfig, overrides=[
        "data.frames=5", "data.size=16", "diffusion.timesteps=100", "model.self_condition=true"]))
    model = Estimates(tiny_unet(self_condition=True))
    clips, mask = _clips(), torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 1]], dtype=torch.bool)
    settings = domain.sample_settings(steps=6, guidance=guidance, guidance_interval=(0.6, 1.0))
    out = generate(model, domain.diffusion, clips, mask, settings, **domain.model_options(),
                   generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[mask], clips[mask]) and not torch.equal(out[~mask], clips[~mask])
    calls, d = model.calls, domain.diffusion
    assert len(calls) == 6 and calls[0][2] is None
    rows = [len(x) for x, *_ in calls]
    assert rows == ([4, 4, 4, 2, 2, 2] if guidance != 1.0 else [2] * 6)  # the interval: the 3 noisiest steps
    for (x, t, _, out), (_, _, previous, _) in zip(calls, calls[1:]):
        estimate = d.denoiser(lambda *_: out)(x, t)
        assert estimate.abs().max() <= d.clip_x0 and torch.equal(previous, estimate[:len(previous)])


def test_self_conditioned_training_shows_the_network_its_own_estimate_half_the_time():
    """The loss's first pass runs without gradient at the same ``x_t`` and time, and the second sees its clamped x0
    estimate; about half of the steps skip the first pass and show no estimate."""
    domain = Video(load_config(VideoConfig, overrides=[
        "data.frames=5", "data.size=16", "diffusion.timesteps=100", "model.self_condition=true"]))
    model, clips = Estimates(tiny_unet(self_condition=True)), _clips(b=4)
    torch.manual_seed(0)
    shown = []
    for _ in range(40):
        model.calls.clear()
        domain.training_loss(model, clips).backward()
        shown.append(len(model.calls) == 2)
        if shown[-1]:
            (x, t, first, out), (x2, t2, previous, _) = model.calls
            assert first is None and not out.requires_grad and torch.equal(x, x2) and torch.equal(t, t2)
            assert torch.equal(previous, domain.diffusion.denoiser(lambda *_: out)(x, t))
        else:
            assert model.calls[0][2] is None
    assert 10 <= sum(shown) <= 30


def test_only_a_self_conditioned_network_takes_an_estimate():
    x = torch.randn(2, 5, 1, 16, 16)
    t = torch.full((2,), 0.5)
    with pytest.raises(ValueError, match="self_condition"):
        tiny_unet()(x, t, previous=x)
    model = tiny_unet(self_condition=True)
    assert torch.equal(model(x, t), model(x, t, previous=torch.zeros_like(x)))  # no estimate yet: zeros
    assert not torch.allclose(model(x, t), model(x, t, previous=x))
