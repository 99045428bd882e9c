"""Video generation with observed frames held fixed: future and past prediction, interpolation, long videos.

All functions take clips ``(B, T, C, H, W)`` in ``[-1, 1]`` and return the same
layout. Observed frames come out bit-exactly equal to the input (the core
samplers' known-part constraint).

Long videos are built from windows of the model's training length ``T``:

* :func:`extend_autoregressive` slides a window, conditioning on the last frames (with ``past``, backward from
  the first ones);
* :func:`extend_hierarchical` first draws sparse keyframes (their real indices far
  apart, which the relative frame encoding understands), then fills the gaps
  between consecutive keyframes, as in Flexible Diffusion Models (Harvey et al., 2022).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from multigen import Known, sample
from multigen.config import SampleConfig, at_least
from multigen.diffusion import EstimateHistory, GaussianDiffusion
from multigen.guidance import classifier_free_guidance

from .conditioning import observed_distance, pack_condition, scaled_residual


@dataclass
class VideoSampleConfig(SampleConfig):
    """:class:`~multigen.config.SampleConfig` and video's own settings."""

    # A model trained with a level per frame (task.per_frame): with dpm_solver_pp, start each generated frame's
    # schedule this many steps after the one before it, counting from the observed frames, so nearer frames are
    # nearly formed when farther ones start (diffusion forcing's pyramid schedule); 0: all frames at one level.
    frame_delay: int = at_least(0, 0)
    # A model trained with task.context_noise: show it the observed frames noised to this diffusion time (0: clean),
    # with a fixed noise for the whole run, so that it leans less on their fine detail.
    context_noise: float = at_least(0.0, 0.0)


def check_observed(observed: Tensor, mask: Tensor | None, channels: int | None = None) -> None:
    """A ``ValueError`` unless ``observed`` is float ``(B, T, C, H, W)`` (``C`` = ``channels``, the model's, where
    given) whose observed frames (``mask``; None: none) are finite and in ``[-1, 1]``: a uint8 clip, or one in
    ``[0, 255]``, would come out saturated, and a NaN would spread to every generated frame."""
    if observed.dim() != 5:
        raise ValueError(f"observed frames: expected (B, T, C, H, W), got shape {tuple(observed.shape)}")
    if channels is not None and observed.shape[2] != channels:
        raise ValueError(f"observed frames (B, T, C, H, W) of shape {tuple(observed.shape)}: C = {observed.shape[2]}, "
                         f"but the model makes frames of {channels} channel(s)")
    if not observed.is_floating_point():
        raise ValueError(f"observed frames: expected floats in [-1, 1] (video.io.from_uint8 converts uint8 frames), "
                         f"got {observed.dtype}")
    if mask is None or observed.device.type == "meta":
        return
    seen = observed[mask.to(observed.device)]
    if not torch.isfinite(seen).all():
        raise ValueError("observed frames: some values are NaN or infinite")
    if seen.numel() and (reach := seen.abs().max().item()) > 1 + 1e-3:
        raise ValueError(f"observed frames: values reach {reach:.4g}; frames are in [-1, 1] "
                         f"(video.io.from_uint8 converts uint8 frames)")


def generate(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    observed: Tensor,
    mask: Tensor | None,
    settings: VideoSampleConfig,
    residual: bool | None = None,
    reference: str | None = None,
    residual_scale: float | None = None,
    reference_input: bool | None = None,
    self_condition: bool | None = None,
    frame_index: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Generate the frames where ``mask`` (bool ``(B, T)``) is False; keep the others exactly.

    ``observed`` ``(B, T, C, H, W)`` holds the observed frames (other entries are ignored);
    ``mask=None`` (or one all False) observes nothing (unconditional clips of ``observed``'s shape);
    ``frame_index`` ``(B, T)`` gives the frames' positions in the video (default ``0..T-1``).
    ``settings`` come from the domain's ``sample_settings`` (sampler, steps, spacing, eta, resample, guidance and
    its interval, temperature; with nothing observed, ``unconditional_temperature`` where it is set; a
    ``frame_delay`` ``D`` > 0 starts each generated frame ``D * (k - 1)`` sampler steps late, ``k`` its distance in
    frames to the nearest observed one, with the observed frames clean throughout: for a model trained with
    ``task.per_frame``; a ``context_noise`` ``s`` > 0 shows the network the observed frames noised to time ``s``,
    in the condition and in ``x``, and tells it that time: for a model trained with ``task.context_noise``).
    With ``residual`` (the model's ``model.residual``) the sampler draws ``x`` minus its ``reference`` frames
    (``model.reference``: ``nearest``, ``blend`` or ``motion``, see ``REFERENCES``; exactly 0 on observed
    frames) times ``residual_scale`` (``model.residual_scale``), and the output is that divided by the scale plus
    the reference, clamped to ``[-1, 1]``; ``reference_input`` (``model.reference_input``) shows the network those
    reference frames too. ``self_condition`` (``model.self_condition``) shows the network its x0 estimate of the
    step before (each guidance branch its own: :class:`~multigen.diffusion.EstimateHistory`). Each of these five
    left None is the network's own (a :class:`~video.model.SpaceTimeUNet` built by the domain carries them; a
    network without them: off, ``nearest``, 1), so :func:`predict` and the others read a trained model right.
    Guidance (``settings.guidance`` other than 1, at the times in ``settings.guidance_interval``) mixes the x0
    estimates of the conditional and unconditional branches; a residual model's unconditional branch (nothing
    observed, reference 0) drew whole frames times the scale, that is the residual plus ``residual_scale`` times
    the reference, so it is moved by that offset (:func:`~multigen.guidance.classifier_free_guidance`'s
    ``null_offset``).
    Every tensor is made on the model's device; ``generator`` must be on it too.
    """
    check_observed(observed, mask, getattr(model, "channels", None))
    residual, reference, residual_scale, reference_input, self_condition = (
        getattr(model, name, default) if given is None else given for name, given, default in (
            ("residual", residual, False), ("reference", reference, "nearest"), ("residual_scale", residual_scale, 1.0),
            ("reference_input", reference_input, False), ("self_condition", self_condition, False)))
    B, T = observed.shape[:2]
    observed = in_network_dtype(model, observed).to(next(model.parameters()).device)
    free = mask is None or (not mask.is_meta and not bool(mask.any()))  # nothing observed (one read of the mask)
    mask = observed.new_zeros(B, T, dtype=torch.bool) if free else mask.to(observed.device)
    observed = torch.where(mask[:, :, None, None, None], observed, 0.0)  # the others are ignored, a NaN there too
    target, base = (scaled_residual(observed, mask, reference, residual_scale, frame_index) if residual
                    else (observed, None))  # residual: exactly 0 where observed
    seen, shown = observed, None  # with a context noise: the condition's frames; the network's x there, its time
    if settings.context_noise and not free:
        step = round(settings.context_noise * diffusion.timesteps)
        steps = torch.full((B,), step, device=observed.device)
        noise = torch.randn((2, *observed.shape), generator=generator, device=observed.device, dtype=observed.dtype)
        seen = torch.where(mask[:, :, None, None, None], diffusion.q_sample(observed, steps, noise[0]), observed)
        shown = (diffusion.q_sample(target, steps, noise[1]), step / diffusion.timesteps)
    cond = pack_condition(seen, mask, base if residual and reference_input else None)
    history = EstimateHistory() if self_condition else None

    def conditional(x: Tensor, t: Tensor, c: Tensor) -> Tensor:  # x0 estimates (residuals for a residual model)
        k = len(x) // B  # the guidance branches, batched
        fi = None if frame_index is None else frame_index.to(x.device).repeat(k, 1)
        if shown is not None:
            given = mask.repeat(k, 1)
            x = torch.where(given[:, :, None, None, None], shown[0].repeat(k, 1, 1, 1, 1), x)
            t = torch.where(given, shown[1], t if t.dim() == 2 else t[:, None].expand(-1, T))
        if history is None:
            return diffusion.denoiser(lambda x_t, t_: model(x_t, t_, c, fi))(x, t)
        previous = history.previous(x)
        x0 = diffusion.denoiser(lambda x_t, t_: model(x_t, t_, c, fi, None, previous))(x, t)
        history.update(x0)
        return x0

    delay = None
    if settings.frame_delay and not free:  # by slot: keyframes far apart in frame_index are one step apart
        dist = observed_distance(mask)  # inf in a clip with nothing observed: all its frames start at once
        delay = (settings.frame_delay * torch.where(dist.isinf(), 0.0, dist - 1).clamp(min=0)).long()
    offset = None if base is None else base * residual_scale
    scale = 1.0 if free else settings.guidance  # nothing observed: the condition is the null one, nothing to guide
    guided = classifier_free_guidance(conditional, cond, torch.zeros_like(cond[0]), scale, offset, diffusion.alpha_of,
                                      tuple(settings.guidance_interval))
    clip = diffusion.clip_x0
    out = sample(
        guided if clip is None else lambda x, t: guided(x, t).clamp(-clip, clip),
        tuple(observed.shape),
        diffusion.schedule,
        **settings.sampler_arguments(observed=not free),
        known=None if free else Known(mask[:, :, None, None, None], target),
        generator=generator,
        device=observed.device,
        dtype=observed.dtype,
        progress=progress,
        delay=delay,
    )
    return out if base is None else (out / residual_scale + base).clamp(-1, 1)  # observed frames: 0 + themselves


def in_network_dtype(model: nn.Module, frames: Tensor) -> Tensor:
    """``frames`` in the network's dtype (float64 clips into a float32 network as float32), as every sampler here
    returns them: observed frames come back exactly as these."""
    return frames.to(next(model.parameters()).dtype)


def predict(model: nn.Module, diffusion: GaussianDiffusion, context: Tensor, frames: int, settings: VideoSampleConfig,
            past: bool = False, **kw) -> Tensor:
    """Continue ``context`` ``(B, K, C, H, W)`` by ``frames - K`` frames in one window of ``frames``: after it,
    or with ``past`` before it (the context is then the window's last ``K`` frames)."""
    B, K = context.shape[:2]
    if not 0 < K < frames:
        raise ValueError(f"need 0 < context ({K}) < frames ({frames})")
    new = context.new_zeros(B, frames - K, *context.shape[2:])
    observed = torch.cat([new, context] if past else [context, new], dim=1)
    idx = torch.arange(frames, device=context.device).expand(B, frames)
    return generate(model, diffusion, observed, idx >= frames - K if past else idx < K, settings, **kw)


def interpolate(model: nn.Module, diffusion: GaussianDiffusion, keyframes: Tensor, between: int,
                settings: VideoSampleConfig, window: int | None = None, **kw) -> Tensor:
    """Insert ``between`` frames between each pair of consecutive ``keyframes`` ``(B, K, C, H, W)``.

    Each gap is one window ``[key_i, between frames, key_{i+1}]``, unless it is longer than the model's ``window``
    (frames; None: no limit): then it is filled as :func:`extend_hierarchical` fills its gaps, evenly spaced frames
    first. Returns ``(B, (K - 1) * (between + 1) + 1, C, H, W)`` with the keyframes unchanged.
    """
    B, K = keyframes.shape[:2]
    if K < 2 or between < 1:
        raise ValueError("interpolation needs at least 2 keyframes and between >= 1")
    keyframes = in_network_dtype(model, keyframes)
    if window is not None and between + 2 > window:
        if window < 3:
            raise ValueError(f"a gap of {between} frames in windows of {window}: a window needs at least 3 frames "
                             f"(both ends and one new)")
        keys = list(range(0, (K - 1) * (between + 1) + 1, between + 1))
        video = keyframes.new_zeros(B, keys[-1] + 1, *keyframes.shape[2:])
        video[:, keys] = keyframes
        return _fill_gaps(model, diffusion, video, keys, window, settings, tqdm(disable=True), **kw)
    out = [keyframes[:, :1]]
    for i in range(K - 1):
        gap = torch.zeros(B, between + 2, *keyframes.shape[2:], device=keyframes.device, dtype=keyframes.dtype)
        gap[:, 0], gap[:, -1] = keyframes[:, i], keyframes[:, i + 1]
        mask = torch.zeros(B, between + 2, dtype=torch.bool, device=keyframes.device)
        mask[:, [0, -1]] = True
        filled = generate(model, diffusion, gap, mask, settings, **kw)
        out.append(filled[:, 1:])
    return torch.cat(out, dim=1)


def extend_autoregressive(
    model: nn.Module, diffusion: GaussianDiffusion, context: Tensor, length: int, window: int,
    settings: VideoSampleConfig, progress: bool = False, past: bool = False, **kw,
) -> Tensor:
    """Extend ``context`` ``(B, K, C, H, W)`` to ``length`` frames with windows of ``window`` frames.

    Every window conditions on the last ``K`` frames produced so far (``0 < K < window``), or with ``past`` on
    the first ``K`` and generates the frames before them: the context then ends the video.
    """
    B, K = context.shape[:2]
    if not 0 < K < window:
        raise ValueError(f"need 0 < context ({K}) < window ({window})")
    if length < K:
        raise ValueError(f"length {length}: at least the {K} context frames it extends")
    video = context
    with tqdm(total=length, initial=K, desc="frames", disable=not progress) as bar:
        while video.shape[1] < length:
            new = min(window - K, length - video.shape[1])
            if past:  # generated frames become context: clamped (see clamp_generated)
                clip = predict(model, diffusion, video[:, :K], K + new, settings, past=True, **kw)
                video = torch.cat([clip[:, :new].clamp(-1, 1), video.to(clip.dtype)], dim=1)  # predict's dtype
            else:
                clip = predict(model, diffusion, video[:, -K:], K + new, settings, **kw)
                video = torch.cat([video.to(clip.dtype), clip[:, K:].clamp(-1, 1)], dim=1)
            bar.update(new)
    return video


def extend_hierarchical(
    model: nn.Module, diffusion: GaussianDiffusion, first: Tensor, length: int, window: int,
    settings: VideoSampleConfig, progress: bool = False, past: bool = False, **kw,
) -> Tensor:
    """Generate ``length`` frames from observed ``first`` frames ``(B, K, C, H, W)`` hierarchically.

    Pass 1 places ``window`` keyframes at evenly spaced real indices over
    ``[0, length)`` (the first ``K`` observed, the rest generated) in one window.
    Then every gap ``(a, b)`` between consecutive generated-or-observed frames is filled by one
    window ``[a, new frames..., b]`` that observes both ends, as in FDM's hierarchy: a gap with at
    most ``window - 2`` missing frames is filled at once; a longer one first gets ``window - 2``
    evenly spaced frames, which split it into shorter gaps filled the same way. Frames carry
    their real indices, so the relative frame encoding sees the true distances. With ``past`` the observed
    frames are the last ``K`` and everything before them is generated (the keyframes mirrored).
    """
    B, K = first.shape[:2]
    device = first.device

    def place(frames: int) -> tuple[Tensor, Tensor | None]:
        """The observed frames at the start (or with ``past`` the end) of ``frames``, and their mask."""
        new = first.new_zeros(B, frames - K, *first.shape[2:])
        idx = torch.arange(frames, device=device)
        mask = (idx >= frames - K) if past else (idx < K)
        return torch.cat([new, first] if past else [first, new], dim=1), mask.expand(B, frames) if K else None

    if length < max(K, 1):
        raise ValueError(f"length {length}: at least " + (f"the {K} observed frames it starts from" if K else "1"))
    first = in_network_dtype(model, first)
    if length <= window:
        return generate(model, diffusion, *place(length), settings, **kw)
    if not (window >= 3 and K < window):
        raise ValueError(f"hierarchical generation needs a window of at least 3 frames (both ends and one new) "
                         f"and fewer observed frames ({K}) than the window ({window})")
    # Keyframes: the K observed frames, then evenly spaced up to the last frame (from frame 0 when K = 0); as
    # length > window, the spacing exceeds 1 and the rounded indices are distinct.
    if K:
        key_index = list(range(K)) + [round(K - 1 + (length - K) * i / (window - K)) for i in range(1, window - K + 1)]
    else:
        key_index = [round((length - 1) * i / (window - 1)) for i in range(window)]
    if past:  # mirrored: the observed frames are the last K, the keyframes spread back to frame 0
        key_index = [length - 1 - i for i in reversed(key_index)]
    observed, seen = place(window)
    keys = clamp_generated(generate(model, diffusion, observed, seen, settings,
                                    frame_index=torch.tensor(key_index, device=device).expand(B, window), **kw), seen)

    video = first.new_zeros(B, length, *first.shape[2:])
    video[:, key_index] = keys
    with tqdm(total=length - window, desc="frames", disable=not progress) as bar:
        return _fill_gaps(model, diffusion, video, key_index, window, settings, bar, **kw)


def _fill_gaps(model: nn.Module, diffusion: GaussianDiffusion, video: Tensor, known: list[int], window: int,
               settings: VideoSampleConfig, bar: tqdm, **kw) -> Tensor:
    """Fill, in place, the frames of ``video`` ``(B, T, C, H, W)`` between its ``known`` frame indices
    (increasing), FDM's way: every gap ``(a, b)`` by one window ``[a, new frames..., b]`` that observes both ends; a
    gap with at most ``window - 2`` missing frames at once, a longer one first gets ``window - 2`` evenly spaced
    frames, which split it into shorter gaps filled the same way. Frames carry their real indices, so the relative
    frame encoding sees the true distances; generated frames are clamped before they become ends."""
    B, device = video.shape[0], video.device
    gaps = [(a, b) for a, b in zip(known[:-1], known[1:]) if b - a > 1]
    while gaps:
        a, b = gaps.pop()
        inner = list(range(a + 1, b)) if b - a - 1 <= window - 2 else _spread(a, b, window - 2)
        idx = [a, *inner, b]
        ends = torch.tensor([True] + [False] * len(inner) + [True], device=device).expand(B, -1)
        index = torch.tensor(idx, device=device)
        video[:, index] = clamp_generated(generate(model, diffusion, video[:, index], ends, settings,
                                                   frame_index=index.expand(B, -1), **kw), ends)
        bar.update(len(inner))
        gaps += [(i, j) for i, j in zip(idx[:-1], idx[1:]) if j - i > 1]
    return video


def clamp_generated(frames: Tensor, observed: Tensor | None) -> Tensor:
    """``frames`` ``(B, T, C, H, W)`` with the generated ones (not ``observed``, ``(B, T)``; None: none observed)
    clamped to ``[-1, 1]``, before they become the next window's context: a model of whole frames without
    ``clip_x0`` can overshoot; the observed frames stay bit-exact."""
    if observed is None:
        return frames.clamp(-1, 1)
    return torch.where(observed[:, :, None, None, None], frames, frames.clamp(-1, 1))


def _spread(a: int, b: int, n: int) -> list[int]:
    """``n`` distinct frame indices spread evenly over the open interval ``(a, b)``, increasing
    (for ``b - a - 1 > n``: their spacing ``(b - a) / (n + 1)`` exceeds 1)."""
    return [round(a + (b - a) * (i + 1) / (n + 1)) for i in range(n)]
