"""The ``video`` domain: config schema, data, masked-conditioning loss, sampling and evaluation."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from multigen import samplers
from multigen.config import ConfigError, DiffusionConfig, TrainConfig, at_least, choice, speed_only
from multigen.domain import GaussianDomain, check_count, no_condition, spread
from multigen.samplers import Known

from .conditioning import TaskMix, motion_compensated, pack_condition, per_frame_steps, sample_masks, scaled_residual
from .data import MovingDigits, VideoFolder
from .io import save_clip_grid
from .metrics import best_and_mean_scores, linear_blend
from .model import SpaceTimeUNet
from .sampling import VideoSampleConfig, generate


@dataclass
class VideoDataConfig:
    source: str = choice("moving_digits", "moving_digits", "folder", "natural")  # natural: pans/zooms over photos
    root: str = ""  # folder of videos (files, .gif, .npy, folders of frame images) when source=folder
    val_root: str = ""  # held-out folder; empty: the last tenth of each video's clips in `root` (trained on the rest)
    frames: int = at_least(8, 3)  # interpolation generates the frames between the first and the last
    size: int = at_least(32, 8)
    channels: int = 1  # 1 (grayscale) or 3 (RGB)
    stride: int = at_least(1, 1)  # take every `stride`-th frame of a video
    num_train: int = at_least(20000, 1)  # moving digits, natural: clips per epoch (generated on the fly)
    num_val: int = at_least(256, 1)
    num_digits: list[int] = field(default_factory=lambda: [1, 2])  # moving digits: min and max per clip
    seed: int = 0  # moving digits, natural: the validation set uses seed + 1 and unseen handwriting/photos
    skip_corrupt: bool = False  # folder: skip unreadable/too-short videos with a warning instead of failing


@dataclass
class VideoModelConfig:
    base_channels: int = at_least(16, 8)
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2])
    blocks: int = at_least(1, 1)
    attn_levels: list[int] = field(default_factory=lambda: [2])  # levels with spatial attention
    head_channels: int = at_least(32, 1)  # channels per attention head
    dropout: float = at_least(0.0, 0.0)
    temporal_attention: bool = True
    # Generate each frame as a residual to a reference built from the observed frames (unconditional clips: to
    # zero), so training learns the change rather than redrawing the frame (measured: +1.1 dB best-of-2 future
    # PSNR over direct generation for the same 500 steps).
    residual: bool = True
    # The reference: the linear blend of the nearest observed frames before and after each frame (the nearest
    # observed frame when frames are observed on one side only), or always the nearest observed frame, or
    # `motion`: the blend (or copy) of frames moved along the clip's global shift, zoom and rotation (camera motion).
    # benchmarks/RESULTS.md, 2026-12-01: the blend lifts interpolation by 0.7-1.9 dB at sample.temperature 0.3.
    reference: str = choice("blend", "nearest", "blend", "motion")
    # The residual is diffused times this factor: above 1 when residuals are small next to the data (slow camera
    # motion over natural images), so the noise schedule's signal-to-noise ratios fit them (benchmarks/RESULTS.md,
    # 2026-12-01: 2 for natural video, configs/video/natural.yaml).
    residual_scale: float = at_least(1.0, 1e-3)
    # The network also sees the reference frames (with `residual`), so it need not rebuild them from the observed
    # frames to know what its output is added to. Not adopted (benchmarks/RESULTS.md, 2026-12-01): natural video,
    # 3 seeds, -0.2 / -0.4 dB on the mean (one seed +0.6 / +1.6, one failed); moving digits -0.5 / -1.1 dB.
    reference_input: bool = False
    # Self-conditioning (Chen et al., 2023): the network also sees its own earlier x0 estimate (the last sampler
    # step's; in training, half of the steps first estimate it without gradient, about 1.2x the step's time).
    self_condition: bool = False
    # The temporal attention also turns queries and keys by the frames' positions (rotary embeddings), beside its
    # relative frame bias.
    rotary: bool = False
    # GPU speed levers, same weights and state dict, outputs equal up to rounding (benchmarks/video.py mfu_rows):
    channels_last: bool = speed_only(False)  # NHWC activations for the per-frame convolutions
    fold_frame_bias: bool = speed_only(False)  # temporal attention as one bias-free call (SDPA's flash kernel)
    # Memory: each block's activations recomputed in the backward pass, not kept (same weights and gradients).
    gradient_checkpointing: bool = speed_only(False)


@dataclass
class VideoTaskConfig:
    """Training-time masked conditioning (probabilities are normalised)."""

    unconditional: float = 0.1  # also the conditioning dropout that classifier-free guidance needs
    future: float = 0.4
    past: float = 0.15
    interpolate: float = 0.2
    random: float = 0.15
    image_prob: float = 0.0  # joint image-video training: fraction of clips made of independent frames
    # Diffusion forcing (Chen et al., 2024): this fraction of the clips gets a noise level per generated frame and
    # its observed frames clean at level 0, so that a sampler may take frames at different levels
    # (sample.frame_delay). `independent`: each frame's level on its own; `ordered`: the same draws sorted so that
    # frames farther from the observed ones get the higher levels, as that sampler visits them (better on one
    # window, its long rollouts fade further: benchmarks/RESULTS.md, 2026-12-05).
    per_frame: float = at_least(0.0, 0.0)
    per_frame_levels: str = choice("independent", "independent", "ordered")
    # Noised context (as GameNGen's noise augmentation and DFoT's noisy history): in the per-frame clips the
    # observed frames are shown noised to a level of their own, uniform on [0, context_noise] (diffusion time), and
    # told it, so that a model continuing its own imperfect frames may be shown them noised (sample.context_noise).
    # At 0.3 one seed of three got sharper long videos and two got worse (benchmarks/RESULTS.md, session 34): off.
    context_noise: float = at_least(0.0, 0.0)


@dataclass
class VideoEvalConfig:
    num_clips: int = at_least(16, 1)  # held-out clips evaluated
    batch_size: int = at_least(16, 1)  # clips generated at once
    samples_per_clip: int = at_least(2, 1)  # MCVD protocol: best and mean over this many samples
    context: int = at_least(4, 1)  # observed frames for future prediction


@dataclass
class VideoConfig:
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            output_dir="runs/video", max_steps=1100, batch_size=8, lr=2e-3, warmup_steps=50,
            sample_every=250, eval_every=0, checkpoint_every=250, ema_decay=0.99, log_every=25,
            optimizer="muon",  # future prediction +0.57 dB over AdamW, interpolation level (RESULTS, 2026-12-03)
        )
    )
    diffusion: DiffusionConfig = field(
        default_factory=lambda: DiffusionConfig(parameterization="v", loss_weighting="uniform", clip_x0=1.0)
    )
    # temperature 0.2: samples nearer the conditional mean, +1.8-2.7 dB PSNR on prediction and interpolation
    # (benchmarks/RESULTS.md, 2026-12-01); 1 samples the model's full distribution. Guidance 2 at the noisiest
    # times only (t >= 0.8: 9 of DPM-Solver++'s 25 steps): SSIM +0.04 to +0.09 at level PSNR over 4 seeds, for 1.4x
    # the sampling time (RESULTS, 2026-12-04). Unconditional clips sample at temperature 1: at 0.2 every one is the
    # same blurred mean digit (RESULTS, 2026-12-05)
    sample: VideoSampleConfig = field(default_factory=lambda: VideoSampleConfig(
        num=8, steps=25, temperature=0.2, guidance=2.0, guidance_interval=(0.8, 1.0), unconditional_temperature=1.0))
    data: VideoDataConfig = field(default_factory=VideoDataConfig)
    model: VideoModelConfig = field(default_factory=VideoModelConfig)
    task: VideoTaskConfig = field(default_factory=VideoTaskConfig)
    eval: VideoEvalConfig = field(default_factory=VideoEvalConfig)


class Video(GaussianDomain):
    """Clips ``(T, C, H, W)`` in ``[-1, 1]``; batches ``(B, T, C, H, W)``."""

    name = "video"
    config_class = VideoConfig
    conditional = True  # the observed frames: sample.guidance scales them
    SETTINGS = (*GaussianDomain.SETTINGS, "frame_delay", "context_noise")

    def __init__(self, cfg: VideoConfig) -> None:
        super().__init__(cfg)
        d, m = cfg.data, cfg.model
        if d.channels not in (1, 3):
            raise ConfigError(f"data.channels: 1 (grayscale) or 3 (RGB), got {d.channels}")
        if d.source != "folder" and (d.root or d.val_root):
            raise ConfigError(f"data.root and data.val_root are read with data.source=folder, not with data.source="
                              f"{d.source} (which would train on its own clips): give data.source=folder")
        if d.root and d.val_root:
            root, val_root = Path(d.root).resolve(), Path(d.val_root).resolve()
            if val_root.is_relative_to(root) or root.is_relative_to(val_root):
                raise ConfigError(f"data.val_root={d.val_root} and data.root={d.root} hold each other's videos: the "
                                  "held-out ones would be trained on too; give folders apart")
        if not m.channel_mults:
            raise ConfigError("model.channel_mults: empty; give one width multiplier per U-Net level (e.g. [1, 2, 2])")
        if bad := sorted(set(m.attn_levels) - set(range(len(m.channel_mults)))):
            raise ConfigError(f"model.attn_levels: the U-Net has levels 0..{len(m.channel_mults) - 1} "
                              f"(model.channel_mults={list(m.channel_mults)}), not {bad}")
        halvings = len(m.channel_mults) - 1
        if d.size % 2**halvings:
            raise ConfigError(f"data.size={d.size}: the U-Net halves it {halvings} times (model.channel_mults="
                              f"{list(m.channel_mults)}), so it must be a multiple of {2**halvings}")
        if m.reference_input and not m.residual:
            raise ConfigError("model.reference_input shows a residual model the reference frames its output is "
                              "added to; with model.residual=false there are none")
        if cfg.eval.context >= d.frames:
            warnings.warn(f"eval.context={cfg.eval.context} observes every frame of data.frames={d.frames} clips: "
                          f"future and past prediction are evaluated from {d.frames - 1} observed frames; give "
                          f"eval.context below data.frames", stacklevel=2)
        task = cfg.task
        self.task_mix = TaskMix(task.unconditional, task.future, task.past, task.interpolate, task.random)
        try:
            self.task_mix.weights()
        except ValueError as e:
            raise ConfigError(f"task: {e}") from None
        if cfg.sample.guidance != 1 and task.unconditional == 0:
            raise ConfigError(f"sample.guidance={cfg.sample.guidance}: classifier-free guidance needs the "
                              f"unconditional clips that task.unconditional trains, and it is 0; use "
                              f"sample.guidance=1, or task.unconditional > 0")
        if task.context_noise > 1 or (task.context_noise and not task.per_frame):
            raise ConfigError(f"task.context_noise: a diffusion time in [0, 1] for the observed frames of the "
                              f"per-frame clips (task.per_frame > 0), got {task.context_noise} with task.per_frame="
                              f"{task.per_frame}")
        for key, check in self._sample_checks():
            try:
                check(cfg.sample)
            except ValueError as e:
                raise ConfigError(f"sample.{key}: {e}") from None

    def _sample_checks(self) -> tuple[tuple[str, Callable[[VideoSampleConfig], None]], ...]:
        """Video's own sampling settings and their checks against the trained model (config and overrides)."""
        return (("frame_delay", self._check_frame_delay), ("context_noise", self._check_context_noise))

    def _check_frame_delay(self, settings: VideoSampleConfig) -> None:
        """A ``frame_delay`` needs dpm_solver_pp and a model trained with a level per frame."""
        if settings.frame_delay:
            samplers.check_settings(settings.sampler, staggered=f"frame_delay={settings.frame_delay} (frames "
                                    "farther from the observed ones start later)")
            if self.cfg.task.per_frame == 0:
                raise ValueError(f"frame_delay={settings.frame_delay} needs a model trained with task.per_frame > 0 "
                                 "(frames at different levels, observed frames clean); this one was not (use 0)")

    def _check_context_noise(self, settings: VideoSampleConfig) -> None:
        """A ``context_noise`` needs a model trained with noised context up to at least that level."""
        trained = self.cfg.task.context_noise
        if settings.context_noise > trained:
            raise ValueError(f"context_noise={settings.context_noise} shows the observed frames noisier than this "
                             f"model saw them in training (task.context_noise={trained}); use at most that")

    def sample_settings(self, **overrides: Any) -> VideoSampleConfig:
        """:meth:`GaussianDomain.sample_settings`; a ``frame_delay`` needs the dpm_solver_pp sampler and a model
        trained with ``task.per_frame``, a ``context_noise`` one trained with ``task.context_noise`` at least as
        high."""
        settings = super().sample_settings(**overrides)
        for _, check in self._sample_checks():
            check(settings)
        return settings

    def clip_scale(self) -> float:
        m = self.cfg.model  # a residual of two frames in [-1, 1] lies in [-2, 2]
        return 2.0 * m.residual_scale if m.residual else 1.0

    def model_options(self) -> dict[str, Any]:
        """How :func:`~video.sampling.generate` must treat this model: ``residual``, ``reference``,
        ``residual_scale``, ``reference_input`` and ``self_condition``."""
        m = self.cfg.model
        return {"residual": m.residual, "reference": m.reference, "residual_scale": m.residual_scale,
                "reference_input": m.reference_input, "self_condition": m.self_condition}

    def build_model(self) -> nn.Module:
        m, d = self.cfg.model, self.cfg.data
        return SpaceTimeUNet(
            channels=d.channels, base=m.base_channels, mults=tuple(m.channel_mults), blocks=m.blocks,
            attn_levels=tuple(m.attn_levels), head_channels=m.head_channels, dropout=m.dropout,
            temporal_attention=m.temporal_attention, channels_last=m.channels_last, fold_frame_bias=m.fold_frame_bias,
            gradient_checkpointing=m.gradient_checkpointing, reference_input=m.reference_input,
            self_condition=m.self_condition, rotary=m.rotary,
            residual=m.residual, reference=m.reference, residual_scale=m.residual_scale,
        )

    def fit(self) -> None:
        """Nothing is fitted; a folder of colour videos trained at ``data.channels=1`` is warned of (it would be
        learnt in grey, by ITU-R 601 luma)."""
        d = self.cfg.data
        if d.source == "folder" and d.channels == 1 and self.build_dataset("train").in_colour():
            warnings.warn(f"data.channels=1: the videos in {d.root} are in colour and are trained on in grey; give "
                          f"data.channels=3 to keep their colour", stacklevel=2)

    def build_dataset(self, split: str) -> Dataset:
        d = self.cfg.data
        if split not in ("train", "val"):
            raise ValueError(f"unknown split {split!r}; use 'train' or 'val'")
        if d.source == "moving_digits":
            lo, hi = d.num_digits
            return MovingDigits(
                length=d.num_train if split == "train" else d.num_val, frames=d.frames, size=d.size,
                channels=d.channels, num_digits=(lo, hi), seed=d.seed if split == "train" else d.seed + 1,
                digit_split=split,
            )
        if d.source == "natural":
            from .natural import NaturalVideo  # needs scikit-image (the video extra)

            return NaturalVideo(
                length=d.num_train if split == "train" else d.num_val, frames=d.frames, size=d.size,
                channels=d.channels, seed=d.seed if split == "train" else d.seed + 1, split=split,
            )
        root = d.val_root if split == "val" and d.val_root else d.root
        if not root:
            raise ConfigError("data.root: must name a folder of videos when data.source=folder")
        return VideoFolder(root, frames=d.frames, size=d.size, channels=d.channels, stride=d.stride,
                           skip_corrupt=d.skip_corrupt, split="all" if d.val_root else split)

    def sample_shape(self) -> tuple[int, ...]:
        d = self.cfg.data
        return (d.frames, d.channels, d.size, d.size)

    def training_loss(self, model: nn.Module, batch: Tensor) -> Tensor:
        B, T = batch.shape[:2]
        task = self.cfg.task
        mask = sample_masks(B, T, self.task_mix, device=batch.device)
        independent = None
        if task.image_prob > 0:
            independent = torch.rand(B, device=batch.device) < task.image_prob
            # Those clips become T independent images drawn from anywhere in the batch, unconditioned.
            pick = torch.randint(0, B * T, (B, T), device=batch.device)
            shuffled = batch.flatten(0, 1)[pick]
            batch = torch.where(independent[:, None, None, None, None], shuffled, batch)
            mask = mask & ~independent[:, None]
        m = self.cfg.model
        target, ref = scaled_residual(batch, mask, m.reference, m.residual_scale) if m.residual else (batch, None)
        seen, steps = batch, None
        if task.per_frame > 0:  # a level per frame in a share of the clips, one shared level in the others
            shared = self.diffusion.random_steps(B, batch.device)[:, None]
            own = per_frame_steps(mask, self.diffusion.timesteps, task.per_frame_levels == "ordered")
            per_clip = torch.rand(B, 1, device=batch.device) < task.per_frame
            if task.context_noise > 0:  # those clips' observed frames at a level of their own, shown noised
                top = round(task.context_noise * self.diffusion.timesteps)
                context = torch.randint(0, top + 1, (B,), device=batch.device)
                own = torch.where(mask, context[:, None], own)
                noised = (mask & per_clip)[:, :, None, None, None]
                seen = torch.where(noised, self.diffusion.q_sample(batch, context, torch.randn_like(batch)), batch)
            steps = torch.where(per_clip, own, shared)
        cond = pack_condition(seen, mask, ref if m.reference_input else None)
        kw = {"loss_mask": ~mask[:, :, None, None, None], "steps": steps}
        if m.self_condition:  # half of the steps show the network its own first estimate
            return self.diffusion.loss(lambda x, t, previous: model(x, t, cond, None, independent, previous), target,
                                       self_condition=0.5, **kw).mean()
        return self.diffusion.loss(lambda x, t: model(x, t, cond, None, independent), target, **kw).mean()

    def sample(
        self,
        model: nn.Module,
        n: int,
        *,
        condition: Any = None,
        known: Known | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        **settings: Any,
    ) -> Tensor:
        """``n`` clips ``(n, T, C, H, W)``; with ``known`` (values ``(n, T, C, H, W)``, mask ``(n, T)`` or
        ``(n, T, 1, 1, 1)``; a full-size mask must be constant inside each frame) those frames are kept.
        ``settings``: see :meth:`sample_settings` (``guidance`` scales the observed frames' condition)."""
        check_count(n)
        no_condition(self.name, condition)
        settings = self.sample_settings(**settings)
        shape = (n, *self.sample_shape())
        device = next(model.parameters()).device
        if known is None:
            observed, mask = torch.zeros(shape, device=device), None
        else:
            observed, mask = known.values_for(shape).to(device), known.item_mask(shape, 2).to(device)
        return generate(model, self.diffusion, observed, mask, settings, **self.model_options(),
                        generator=generator, progress=progress)

    def evaluate(self, model: nn.Module, dataset: Dataset) -> dict[str, float]:
        """Future prediction, past prediction and interpolation on held-out clips, MCVD protocol, with trivial
        baselines.

        PSNR/SSIM average over the generated frames; ``*_best``/``*_mean`` are the best
        and mean over ``eval.samples_per_clip`` samples per clip (see :meth:`evaluation_scores`).
        Baselines: ``baseline_*`` copies the nearest observed frame (future: the last context frame; past: the
        first) or blends the end frames linearly (interp); ``baseline_motion_*`` moves them along the clip's global
        motion (shift, zoom, rotation) first (:func:`~video.conditioning.motion_compensated`, the ``motion``
        reference without a model).
        """
        device = next(model.parameters()).device
        clips = torch.stack([dataset[i] for i in self.held_out_picks(len(dataset))]).to(device)  # type: ignore
        g = torch.Generator(device=device).manual_seed(self.cfg.sample.seed + 2)
        return {k: v.item() for k, v in self.evaluation_scores(model, clips, g).items()}

    def held_out_picks(self, size: int) -> list[int]:
        """The indices of the ``eval.num_clips`` held-out clips of ``size`` that evaluation scores: the first of
        generated clips, spread evenly over a folder's (which come video by video)."""
        n = self.cfg.eval.num_clips
        return spread(size, n) if self.cfg.data.source == "folder" else list(range(min(n, size)))

    def task_masks(self, frames: int, device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """The observed frames (bool ``(frames,)``) of each evaluated task: ``future``, the first ``eval.context``
        (at most ``frames - 1``); ``interp``, the first and the last; ``past``, the last ``eval.context`` (in this
        order, which is the order they draw from the evaluation's generator)."""
        idx, context = torch.arange(frames, device=device), min(self.cfg.eval.context, frames - 1)
        return {"future": idx < context, "interp": (idx == 0) | (idx == frames - 1), "past": idx >= frames - context}

    def evaluation_scores(self, model: nn.Module, clips: Tensor,
                          generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """:meth:`evaluate`'s metrics for held-out ``clips`` ``(n, T, C, H, W)``, as 0-dim tensors on the
        model's device (``generator`` lives there too)."""
        e, T = self.cfg.eval, clips.shape[1]
        device = next(model.parameters()).device
        clips = clips.to(device)
        metrics: dict[str, Tensor] = {}
        settings = self.sample_settings()
        for name, frame_mask in self.task_masks(T, device).items():
            reps = clips.repeat(e.samples_per_clip, 1, 1, 1, 1)
            out = torch.cat([
                generate(model, self.diffusion, chunk, frame_mask.expand(len(chunk), T), settings,
                         **self.model_options(), generator=generator)
                for chunk in reps.split(e.batch_size)
            ])
            samples = out.float().reshape(e.samples_per_clip, *clips.shape)
            scores = best_and_mean_scores(samples, clips.float(), ~frame_mask)
            metrics.update({f"{name}/{k}": v for k, v in scores.items()})
            for prefix, frames in (("baseline", linear_blend(clips, frame_mask)),
                                   ("baseline_motion", motion_compensated(clips, frame_mask.expand(len(clips), T)))):
                base = best_and_mean_scores(frames[None].float(), clips.float(), ~frame_mask)
                metrics.update({f"{name}/{prefix}_{k.removesuffix('_mean')}": v
                                for k, v in base.items() if "mean" in k})
        return metrics

    def save_samples(self, samples: Tensor, path: Path) -> Path:
        return save_clip_grid(samples, path)
