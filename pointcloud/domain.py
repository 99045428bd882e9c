"""The ``pointcloud`` domain: shape generation and shape completion with one point-voxel denoiser.

A sample is a cloud ``(N, 3)`` in the data's normalised frame (the unit sphere); batches are
``(B, N, 3)``. Diffusion runs on clouds times ``model.diffusion_scale``; ``sample`` returns them
in the unit-sphere frame. The network gets one extra per-point channel, the *observed* flag,
so one model can generate shapes (no point observed) and complete partial scans (the
observed points enter the network clean, as in PVD, and are kept exactly by the samplers'
known-part constraint; the loss covers only the generated points).
``task.completion`` sets the fraction of training shapes given a partial view; ``task.completion_start`` below 1
starts a completion from the nearest training shape holding the partial, noised to that diffusion time (SDEdit
over retrieval), instead of from noise.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import send_to_device
from torch import Tensor, nn
from torch.utils.data import Dataset

from multigen import Known
from multigen.config import (ConfigError, DiffusionConfig, SampleConfig, TrainConfig, at_least, between, choice,
                             speed_only)
from multigen.diffusion import ModelFn, uniform_times
from multigen.domain import DataError, GaussianDomain, check_count, no_condition, spread
from multigen.guidance import classifier_free_guidance, drop_condition
from multigen.metrics import gaussian_fit

from .datasets import SHAPENET_SYNSETS, Labelled, NormalizedClouds, Normalizer, Resampled, ShapeFolder, ShapeNetPC15k
from .io import PointCloudError, render_clouds, write_plys
from .metrics import chamfer, set_metrics
from .model import PVCNNUNet, pvd_spec
from .ops import knn
from .shapes import FAMILIES, ProceduralShapes
from .views import partial_masks

PARTIAL_COLOR = (0.85, 0.2, 0.15)
GENERATED_COLOR = (0.2, 0.4, 0.8)


@dataclass
class PointDataConfig:
    # procedural: built-in shapes; shapenet: PointFlow's <root>/<synset>/<split>/*.npy (ShapeNetCore.v2.PC15k);
    # folder: meshes (.obj/.off/.stl/.ply) and point files (.npy/.xyz/.txt/.ply) under root, recursively
    source: str = choice("procedural", "procedural", "shapenet", "folder")
    root: str = ""  # shapenet / folder
    categories: list[str] = field(default_factory=lambda: ["chair"])  # shapenet: names or synset ids
    cache_dir: str = ""  # folder: where sampled meshes are cached (default <root>/.multigen_cache)
    # File data into the model's unit-ball frame: per shape, or one global centre/scale fitted on the
    # training clouds and recorded below (so exports return samples in the data's units), or as is.
    normalization: str = choice("global", "global", "shape", "none")
    centre: list[float] = field(default_factory=list)  # recorded by training (global normalization)
    scale: float = at_least(0.0, 0.0)  # recorded by training (global normalization)
    families: list[str] = field(default_factory=lambda: list(FAMILIES))  # procedural shape families
    points: int = at_least(256, 16)  # the CPU default; PVD uses 2048 (configs/pointcloud/gpu.yaml)
    num_train: int = at_least(4000, 1)  # procedural shapes per epoch
    num_val: int = at_least(200, 1)
    seed: int = 0  # procedural: validation shapes come from an independent stream; files: point subsets
    # Training clouds: P = a fresh `points` at every access from a fixed P-point sampling of each shape (PointFlow
    # draws 2 048 of 15 000); 0 = one fixed subset of `points` per shape. Validation clouds stay fixed. On the CPU
    # default (2 training seeds, 128 held-out shapes) 2 048 gave 1-NNA-CD 0.67 / 0.66 against 0.73 / 0.71 with fixed
    # clouds, MMD-CD level (benchmarks/RESULTS.md, 2026-12-02).
    pool: int = at_least(2048, 0)
    class_counts: list[int] = field(default_factory=list)  # recorded by training (shapenet, class-conditional)


@dataclass
class PointModelConfig:
    width: float = at_least(0.25, 0.01)  # channel multiplier of PVD's network (1.0: ~27 M parameters)
    # Multiplier of PVD's voxel grids 32/16/8. On the CPU default (256 points, 1 500 steps) 0.5 was 1.8x slower
    # per step than 0.25 and not clearly better (1-NNA 0.80 against 0.85 on 20 shapes, but MMD-CD 0.063 against 0.032).
    voxel_resolution: float = at_least(0.25, 0.01)
    # Clouds are diffused (and seen by the network) multiplied by this: unit-sphere shapes have a std of about
    # 0.4, PVD diffuses data of unit std. Measured in the CI setting (tiny, 800 steps, half completion):
    # x1 / x2 / x3 gave 1-NNA 0.83 / 0.75 / 0.77 and completion Chamfer 0.034 / 0.020 / 0.022.
    diffusion_scale: float = at_least(2.0, 0.01)
    # PVD's attention blocks: over the voxels of the second encoder stage's first block, and over the coarsest points
    attention: bool = False
    # Condition on the shape's class where the data has several (procedural families, ShapeNet categories): samples
    # of no given class draw one in the training set's proportions (model.label of PVCNNUNet). On the CPU default
    # (3 training seeds, 128 held-out shapes) every family's COV-CD was >= 0.36 (airplanes 0.42 / 0.38 / 0.46 against
    # 0.27 / 0.23 / 0.27 unconditional), 1-NNA-CD 0.75 / 0.73 / 0.73 against 0.67 / 0.66 / 0.70
    # (benchmarks/RESULTS.md, 2026-12-02).
    class_conditional: bool = True
    # Memory: each PVConv block's activations recomputed in the backward pass, not kept (same weights and gradients).
    gradient_checkpointing: bool = speed_only(False)


@dataclass
class PointTaskConfig:
    completion: float = between(0.0, 0.0, 1.0)  # fraction of training shapes given a partial view
    partial_points: int = at_least(40, 1)  # observed points of a partial view (PVD: 200 of 2048)
    # class-conditional models: share of training clouds shown with no class (classifier-free guidance, unlabelled
    # completion)
    class_dropout: float = at_least(0.1, 0.0)
    # completion's start (SDEdit): below 1, a completion starts from the nearest of `completion_bank` training shapes
    # (spread over the set; of the asked class, for class-conditional models) holding the partial, noised to this
    # diffusion time, and takes the sampler's steps below it; 1: from pure noise. The evaluation's retrieval
    # baselines search the same bank.
    completion_start: float = between(1.0, 0.0, 1.0)
    completion_bank: int = at_least(400, 1)


@dataclass
class PointEvalConfig:
    num_shapes: int = at_least(64, 2)  # held-out shapes compared with as many samples
    batch_size: int = at_least(32, 1)


@dataclass
class PointCloudConfig:
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            output_dir="runs/pointcloud", max_steps=3500, batch_size=16, lr=2e-3, warmup_steps=100,
            sample_every=1000, eval_every=0, checkpoint_every=1000, ema_decay=0.995, log_every=25,
            optimizer="muon",  # 1-NNA-CD 0.66 against 0.69-0.71 for AdamW, 2 seeds x 3 draws (RESULTS, 2026-12-03)
        )
    )
    # The cosine schedule (PVD: linear betas 1e-4 -> 0.02 over 1000 steps, which the configs that train for completion
    # and configs/pointcloud/gpu.yaml keep): on the CPU default, 2 training x 3 sampling seeds, 1-NNA-CD 0.69 +- 0.05
    # against 0.75 +- 0.03 and MMD-CD 13 % lower (benchmarks/RESULTS.md, 2026-12-01, session 7).
    # v prediction instead of PVD's eps: with eps the
    # x0 estimate at high noise is eps's error times 1/alpha (~160 at t = T), so deterministic few-step
    # samplers pile points onto the x0 clip (measured on one overfitted shape: DDIM-50 Chamfer 0.61 with eps,
    # 0.067 with v; DDPM-250 0.089 -> 0.043). `diffusion.parameterization=eps` is PVD's setting.
    # Loss weighted by SNR (x0 error times SNR, less weight at high noise than v's SNR + 1): on the CPU default
    # it brought the off-surface error of the x0 estimate at t = 30 from 0.00102 to 0.00088 and 1-NNA from
    # 0.85 to 0.81 (64 shapes, one run each).
    diffusion: DiffusionConfig = field(
        default_factory=lambda: DiffusionConfig(schedule="cosine", parameterization="v", loss_weighting="snr",
                                                clip_x0=1.0)
    )
    # Generation: DPM-Solver++ 20 on Karras et al.'s spacing. On the CPU default's models (64 held-out shapes)
    # DPM-Solver++ 25 gave 1-NNA-CD 0.76 / 0.80 / 0.79 over three sampling seeds against 0.83 / 0.90 / 0.83 for
    # ancestral DDPM-250, 3x faster; Karras spacing took 0.017 more off over 4 draws, and 20 steps 0.02 more
    # (10: +0.07, 50: +0.02 against 25) (benchmarks/RESULTS.md, 2026-12-01).
    # Completion: the configs set up for it (completion.yaml, which trains for it, and tiny.yaml, which the README's
    # completion recipe trains with task.completion=1) sample with DDPM and take every step twice (RePaint's
    # resampling): on 96 held-out torus/table views the 6 000-step completion model went from 0.0133
    # (behind the nearest of 4 000 training shapes, 0.0127) to 0.0125, ahead by 2 standard errors, where the
    # few-step samplers were worse (DDIM-50 0.0142).
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(num=8, steps=20, spacing="karras"))
    data: PointDataConfig = field(default_factory=PointDataConfig)
    model: PointModelConfig = field(default_factory=PointModelConfig)
    task: PointTaskConfig = field(default_factory=PointTaskConfig)
    eval: PointEvalConfig = field(default_factory=PointEvalConfig)


def check_known_points(points: Tensor | None) -> None:
    """A :class:`PointCloudError` unless the known points ``(K, 3)`` (None: not checked) are finite and lie within
    1 000 units of the origin of the model's frame (its clouds fill the unit sphere): a scan in another frame, or
    a NaN, would otherwise fail deep inside the voxel grid. Points beyond twice the unit sphere are warned of: the
    model completes them by extrapolating far from anything it was trained on."""
    if points is None or not points.numel():
        return
    if not torch.isfinite(points).all():
        raise PointCloudError("known points: some are NaN or infinite")
    if (reach := points.double().norm(dim=-1).max().item()) > 1e3:  # float64: 1e20 squared is no inf
        raise PointCloudError(f"known points reach {reach:.3g} from the origin; the model's clouds fill the unit "
                              f"sphere: normalise the scan first (multigen-complete --normalize does; from Python, "
                              f"pretrained.domain.normalizer maps a cloud in the training data's units)")
    if reach > 2:
        warnings.warn(f"known points reach {reach:.3g} from the origin, beyond twice the unit sphere the model's "
                      f"clouds fill: is the scan normalised (multigen-complete --normalize; from Python, "
                      f"pretrained.domain.normalizer)?", stacklevel=3)


class PointCloud(GaussianDomain):
    """Clouds ``(N, 3)``; batches ``(B, N, 3)``; ``known.mask`` marks observed points ``(B, N, 1)``; a
    class-conditional model's ``condition`` is the class of each sample (see :meth:`sample_labels`)."""

    name = "pointcloud"
    config_class = PointCloudConfig

    def __init__(self, cfg: PointCloudConfig) -> None:
        super().__init__(cfg)
        self.scale = cfg.model.diffusion_scale
        self.banks: dict[int, tuple[Tensor, Tensor]] = {}  # training_bank's, by size
        d = cfg.data
        if d.source == "procedural" and (unknown := sorted(set(d.families) - set(FAMILIES))):
            raise ConfigError(f"data.families: unknown {unknown}; choose from {list(FAMILIES)}")
        if d.source == "procedural" and not d.families:
            raise ConfigError(f"data.families: empty; name at least one of {list(FAMILIES)}")
        if d.source == "shapenet" and not d.categories:
            raise ConfigError("data.categories: empty; name at least one category (e.g. chair) or synset id")
        synsets = [SHAPENET_SYNSETS.get(c, c) for c in d.categories]
        if d.source == "shapenet" and len(set(synsets)) < len(synsets):
            raise ConfigError(f"data.categories={list(d.categories)}: a category named twice (by name and synset id, "
                              "say) would be two classes of the same shapes")
        if len(d.centre) not in (0, 3):
            raise ConfigError(f"data.centre: 3 coordinates (x, y, z), or none to fit them; got {list(d.centre)}")
        if not cfg.task.completion_start > 0:
            raise ConfigError("task.completion_start: must be > 0 (a diffusion time in (0, 1]; 1 starts from noise)")
        if 0 < d.pool < d.points:
            raise ConfigError(f"data.pool={d.pool}: training clouds of data.points={d.points} are drawn from it; "
                              "give at least that many points, or 0 for fixed clouds")

    def fit(self) -> None:
        """Global normalisation's ``data.centre`` and ``data.scale`` from the training clouds (unless given), and
        a class-conditional ShapeNet model's ``data.class_counts``."""
        d = self.cfg.data
        if d.source != "procedural" and d.normalization == "global" and not (d.scale > 0 and d.centre):
            # the points training draws from; a centre given is kept, and the scale measured from it
            fitted = Normalizer.fit(self._raw_dataset("train", d.pool), centre=list(d.centre))
            d.centre, d.scale = fitted.centre.tolist(), d.scale if d.scale > 0 else fitted.scale
        if d.source != "procedural" and d.normalization == "none":
            train = self._raw_dataset("train", d.pool)
            if (far := max(float(train[i].norm(dim=1).max()) for i in spread(len(train), 64))) > 1.0 + 1e-6:
                warnings.warn(f"data.normalization=none: training clouds reach {far:.3g} from the origin, and the "
                              "model's samples lie in the unit ball; use global or shape")
        if d.source == "shapenet" and self.class_names and not d.class_counts:
            d.class_counts = torch.bincount(self.class_labels("train"), minlength=len(self.class_names)).tolist()

    @property
    def class_names(self) -> list[str]:
        """The classes a ``model.class_conditional`` network is conditioned on: the procedural families or the
        ShapeNet categories, when there are at least two (otherwise, and for folders, none)."""
        d = self.cfg.data
        names = {"procedural": list(d.families), "shapenet": list(d.categories)}.get(d.source, [])
        return names if self.cfg.model.class_conditional and len(names) > 1 else []

    @property
    def conditional(self) -> bool:  # type: ignore[override]
        return bool(self.class_names)  # the class: sample.guidance scales it

    def class_labels(self, split: str) -> Tensor:
        """Each ``split`` shape's index into :attr:`class_names`, ``(shapes,)`` long."""
        source = self.cfg.data.source
        if source == "procedural":
            return self.fixed_clouds(split).labels  # type: ignore[attr-defined]  (ProceduralShapes, built lazily)
        if source == "shapenet":
            return torch.tensor(self._raw_dataset(split).labels)  # type: ignore[attr-defined]  (ShapeNetPC15k)
        raise ValueError(f"data.source={source} has no classes")

    def class_prior(self) -> Tensor:
        """The training set's class proportions ``(K,)``, from which unlabelled samples draw their class."""
        d, k = self.cfg.data, len(self.class_names)
        if d.source == "procedural":
            counts = torch.bincount(self.class_labels("train"), minlength=k)
        elif len(d.class_counts) == k:
            counts = torch.tensor(d.class_counts)
        else:
            raise ValueError(f"data.class_counts={list(d.class_counts)} does not count the {k} data.categories: "
                             "call fit() first (the trainer does), or give them")
        return counts.double() / counts.sum()

    @cached_property
    def normalizer(self) -> Normalizer:
        """Raw clouds to the model's frame and back, as ``data.normalization`` and its fitted statistics say."""
        d = self.cfg.data
        if d.source == "procedural":
            return Normalizer("none")  # the built-in shapes are made in the unit sphere
        if d.normalization == "global":
            if not d.scale > 0:
                raise ValueError("data.scale is not set: call fit() first (the trainer does), or give data.centre "
                                 "and data.scale")
            return Normalizer("global", list(d.centre), d.scale)
        return Normalizer(d.normalization)

    def clip_scale(self) -> float:
        return self.cfg.model.diffusion_scale  # diffusion.clip_x0 is given in the unit-sphere frame

    def _raw_dataset(self, split: str, pool: int = 0) -> Dataset:
        """The files' clouds of ``data.points``, or with ``pool`` training pools of up to that many."""
        d = self.cfg.data
        if not d.root:
            raise ConfigError(f"data.root: data.source={d.source} needs it (the dataset's folder)")
        points, least = (pool, d.points) if pool else (d.points, None)
        if d.source == "shapenet":
            return ShapeNetPC15k(d.root, list(d.categories), split, points, d.seed, least)
        return ShapeFolder(d.root, split, points, d.seed, d.cache_dir, least)

    def build_model(self) -> nn.Module:
        m = self.cfg.model
        spec = pvd_spec(m.width, m.voxel_resolution, self.cfg.data.points, m.attention)
        return PVCNNUNet(spec, extra_channels=1, classes=len(self.class_names),
                         gradient_checkpointing=m.gradient_checkpointing)

    def build_dataset(self, split: str) -> Dataset:
        """Clouds ``(data.points, 3)`` in the model's frame; training clouds drawn afresh from ``data.pool``
        points per shape at every access when it is set, and paired with their class (:class:`Labelled`) for a
        class-conditional model."""
        pool = self.cfg.data.pool if split == "train" else 0
        shapes = self.fixed_clouds(split, pool)
        shapes = Resampled(shapes, self.cfg.data.points) if pool else shapes
        return Labelled(shapes, self.class_labels(split)) if split == "train" and self.class_names else shapes

    def fixed_clouds(self, split: str, pool: int = 0) -> Dataset:
        """Each shape of ``split`` as one fixed cloud in the model's frame: ``data.points``, or with ``pool`` that
        many (files: up to that many, at least ``data.points``)."""
        d = self.cfg.data
        if split not in ("train", "val"):
            raise ValueError(f"unknown split {split!r}; use 'train' or 'val'")
        if d.source != "procedural":
            return NormalizedClouds(self._raw_dataset(split, pool), self.normalizer)
        n = d.num_train if split == "train" else d.num_val
        return ProceduralShapes(families=d.families, num_shapes=n, points=pool or d.points, seed=d.seed, split=split)

    def sample_shape(self) -> tuple[int, ...]:
        return (self.cfg.data.points, 3)

    def network(self, model: nn.Module, observed: Tensor, mask: Tensor, label: Tensor | None = None,
                guidance: float = 1.0, interval: tuple[float, float] = (0.0, 1.0)) -> ModelFn:
        """``model_fn(x_t, t)`` that feeds the observed points clean and flags them (``mask`` ``(B, N)``); for a
        class-conditional model, of class ``label`` ``(B,)``, guided by ``guidance`` against no class at the times
        in ``interval``."""
        flag = mask[:, None, :].to(observed.dtype)
        keep = mask[..., None]

        def net(x: Tensor, t: Tensor, label: Tensor | None) -> Tensor:
            r = len(x) // len(mask)  # classifier-free guidance runs both branches as one batch
            inputs = torch.where(keep.repeat(r, 1, 1), observed.to(x.dtype).repeat(r, 1, 1), x)
            return model(inputs, t, flag.to(x.dtype).repeat(r, 1, 1), label)

        if label is None:
            return lambda x, t: net(x, t, None)
        return classifier_free_guidance(net, label, torch.tensor(len(self.class_names)), guidance, interval=interval)

    def collate_fn(self, items: list[Tensor] | list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """A training batch, made on the CPU in the data loader: ``points`` ``(B, N, 3)`` and ``observed``
        ``(B, N)`` bool, a partial view (hidden-point removal from a random viewpoint) for a share
        ``task.completion`` of the clouds and nothing for the others; from :class:`Labelled` items also ``label``
        ``(B,)``, no class (``K``) for a share ``task.class_dropout``. Drawn here rather than in the training
        step, which then has no round trip to the host."""
        labelled = isinstance(items[0], tuple)
        points = torch.stack([item[0] for item in items] if labelled else items)
        observed = torch.zeros(points.shape[:2], dtype=torch.bool)
        partial = torch.rand(len(points)) < self.cfg.task.completion
        if partial.any():
            observed[partial] = partial_masks(points[partial].float(), self.cfg.task.partial_points)
        batch = {"points": points, "observed": observed}
        if labelled:
            label = torch.stack([item[1] for item in items])
            batch["label"] = drop_condition(label, torch.tensor(len(self.class_names)), self.cfg.task.class_dropout)
        return batch

    def training_loss(self, model: nn.Module, batch: dict[str, Tensor] | Tensor) -> Tensor:
        """Loss on the unobserved points of a :meth:`collate_fn` batch (a bare ``(B, N, 3)`` tensor gets its
        partial views drawn here, on the CPU)."""
        if isinstance(batch, Tensor):
            batch = send_to_device(self.collate_fn(list(batch.detach().cpu())), batch.device)
        mask = batch["observed"]
        x0 = batch["points"] * self.scale
        loss = self.diffusion.loss(self.network(model, x0, mask, batch.get("label")), x0, loss_mask=~mask[..., None])
        return loss.mean()

    def sample(
        self,
        model: nn.Module,
        n: int,
        *,
        condition: Any = None,
        known: Known | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        start: float | None = None,
        **settings: Any,
    ) -> Tensor:
        """``n`` clouds ``(n, N, 3)`` in the model's frame (the unit sphere; :attr:`normalizer` maps data into it and
        ``normalizer.invert`` back into the data's units); with ``known`` (mask ``(n, N)`` or ``(n, N, 1)``, values
        ``(n, N, 3)`` in that frame too) those points are kept.
        A class-conditional model's ``condition``: see :meth:`sample_labels`. ``settings``: see
        :meth:`sample_settings` (``resample`` acts only with a known part; ``guidance`` scales the class).
        ``start`` (None: ``task.completion_start`` with a known part, else 1): below 1 a completion starts from
        :meth:`start_clouds` noised to that diffusion time (SDEdit); 1 starts from noise."""
        check_count(n)
        settings = self.sample_settings(**settings)
        start = (1.0 if known is None else self.cfg.task.completion_start) if start is None else start
        if start < 1 and known is None:
            raise ValueError(f"start={start}: a completion's start (the nearest training shape holding the known "
                             f"points); give a known part, or start=1 to generate from noise")
        weight = next(model.parameters())
        device = weight.device
        label = self.sample_labels(n, condition, known is None, generator, device)
        shape = (n, *self.sample_shape())
        if known is None:
            observed, mask = torch.zeros(shape, device=device), torch.zeros(shape[:2], dtype=torch.bool, device=device)
        else:
            observed = known.values_for(shape).to(device)
            mask = known.item_mask(shape, 2).to(device)
            check_known_points(observed[mask] if device.type != "meta" else None)
        scaled = observed * self.scale
        kept = None if known is None else Known(mask[..., None], scaled)
        guided = self.network(model, scaled, mask, label, settings.guidance, tuple(settings.guidance_interval))
        init = None if start == 1 else self.start_clouds(observed, mask, label) * self.scale
        out = self.run_sampler(guided, shape, settings, known=kept, generator=generator, device=device,
                               dtype=weight.dtype, progress=progress, init=init, start=start)
        return torch.where(mask[..., None], observed, out / self.scale)  # observed points bit-exact

    def sample_labels(self, n: int, condition: Any, draw: bool, generator: torch.Generator | None,
                      device: torch.device) -> Tensor | None:
        """Class indices ``(n,)`` on ``device`` for a class-conditional model, None for another (which takes no
        ``condition``). ``condition``: a class name, a list of ``n`` names or indices (mixed too), or indices
        ``(n,)`` (``K``, the number of classes, is no class); None draws the classes from :meth:`class_prior`
        (stratified) when ``draw`` (generation), else gives no class (completion of an unlabelled scan)."""
        names = self.class_names
        if not names:
            no_condition(self.name, condition)
            return None
        if condition is None:
            if not draw:
                return torch.full((n,), len(names), dtype=torch.long, device=device)
            # stratified: each sample's class is drawn from the prior, and n of them hold each class within one
            # sample of its share
            u = uniform_times(n, device, generator, stratified=True).double()
            return torch.searchsorted(self.class_prior().to(device).cumsum(0), u, right=True).clamp_max(len(names) - 1)
        if isinstance(condition, str):
            condition = [condition] * n
        if isinstance(condition, (list, tuple)):  # names, indices, or both
            unknown = sorted({c for c in condition if isinstance(c, str)} - set(names))
            if unknown:
                raise ValueError(f"unknown classes {unknown}; this model's are {names}")
            condition = [names.index(c) if isinstance(c, str) else c for c in condition]
        label = torch.as_tensor(condition)
        if label.shape != (n,) or label.is_floating_point() or not ((label >= 0) & (label <= len(names))).all():
            raise ValueError(f"condition: {n} class indices in [0, {len(names)}] ({len(names)}: no class), or names "
                             f"among {names}; got {condition!r}")
        return label.long().to(device)

    def evaluate(self, model: nn.Module, dataset: Dataset) -> dict[str, float]:
        """Generation: 1-NNA/MMD/COV (Chamfer) of samples against held-out shapes, next to a Gaussian blob
        with the data's mean and covariance; on procedural shapes also COV inside each family
        (``COV-CD/<family>``) and each family's share of the samples (``SHARE-CD/<family>``). Completion
        (when trained for it): Chamfer of completions of held-out partial views to the full shapes, next to the
        nearest training shape.
        """
        ref, samples, blob, g = self.generation_sets(model, dataset)
        family = getattr(dataset, "family", None)  # procedural shapes: coverage inside each family too
        groups = [family(i) for i in range(len(ref))] if family is not None else None
        metrics = set_metrics(samples, ref, groups=groups)
        metrics.update({f"baseline_gaussian/{k}": v for k, v in set_metrics(blob, ref, groups=groups).items()})
        if self.cfg.task.completion > 0:
            metrics.update(self.evaluate_completion(model, ref, g))
        return metrics

    def generation_sets(self, model: nn.Module, dataset: Dataset
                        ) -> tuple[Tensor, Tensor, Tensor, torch.Generator]:
        """What generation is scored on, each ``(n, N, 3)`` on the CPU: ``eval.num_shapes`` held-out shapes
        (:meth:`held_out_picks`), as many samples (drawn with ``sample.seed + 1``), and a Gaussian blob with the
        shapes' mean and covariance; then the sampling generator, for any further draws."""
        e = self.cfg.eval
        device = next(model.parameters()).device
        ref = torch.stack([dataset[i] for i in self.held_out_picks(len(dataset))]).float()  # type: ignore[arg-type]
        g = torch.Generator(device=device).manual_seed(self.cfg.sample.seed + 1)
        samples = torch.cat([self.sample(model, len(c), generator=g).float().cpu() for c in ref.split(e.batch_size)])
        return ref, samples, gaussian_fit(ref.reshape(-1, 3), ref.shape), g

    def held_out_picks(self, size: int) -> list[int]:
        """The indices of the ``eval.num_shapes`` held-out shapes of ``size`` that evaluation scores: the first (the
        procedural families alternate), or spread evenly over file data (sorted by category, its first shapes would
        be of one)."""
        n = self.cfg.eval.num_shapes
        return list(range(min(n, size))) if self.cfg.data.source == "procedural" else spread(size, n)

    def check_held_out(self, dataset: Dataset) -> None:
        """:meth:`Domain.check_held_out`, and there are at least two shapes: coverage and 1-NNA compare sets, and of
        one shape each they score a perfect 1 and 0 for any model."""
        if (n := len(self.held_out_picks(len(dataset)))) < 2:  # type: ignore[arg-type]
            raise DataError(f"the held-out split has {n} shape; evaluation compares sets of at least 2 (give more "
                            "files, or a val/ folder)")
        super().check_held_out(dataset)

    def evaluate_completion(self, model: nn.Module, shapes: Tensor, generator: torch.Generator) -> dict[str, float]:
        """Chamfer of completed partial views to the full shapes, and of two baselines: the nearest of
        ``task.completion_bank`` training shapes (:meth:`training_bank`), and that shape given the observed points as
        a completion keeps them (:func:`with_partial`)."""
        mask = partial_masks(shapes, self.cfg.task.partial_points, seed=self.cfg.sample.seed)
        done = self.complete(model, shapes, mask, generator)
        partials = [s[m] for s, m in zip(shapes, mask)]
        nearest = self.nearest_training_shapes(partials, self.cfg.task.completion_bank)
        kept = torch.stack([with_partial(n, p) for n, p in zip(nearest, partials)])
        return {
            "completion/chamfer": chamfer(done, shapes).mean().item(),
            "completion/baseline_nearest_train_chamfer": chamfer(nearest, shapes).mean().item(),
            "completion/baseline_nearest_train_with_partial_chamfer": chamfer(kept, shapes).mean().item(),
        }

    def complete(self, model: nn.Module, shapes: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
        """Completions ``(B, N, 3)`` (on the CPU) of ``shapes`` ``(B, N, 3)`` observed where ``mask`` ``(B, N)``."""
        device = next(model.parameters()).device
        b = self.cfg.eval.batch_size
        return torch.cat([
            self.sample(model, len(s), known=Known(m, s.to(device)), generator=generator).float().cpu()
            for s, m in zip(shapes.split(b), mask.split(b))
        ])

    def nearest_training_shapes(self, partials: list[Tensor], max_bank: int, labels: Tensor | None = None) -> Tensor:
        """For each partial ``(P_i, 3)``, the training shape ``(N, 3)`` it is closest to (partial -> shape
        one-sided Chamfer), searched among :meth:`training_bank`'s ``max_bank`` shapes, and with ``labels``
        (``(len(partials),)``, a class-conditional model's; ``K``: no class) among those of each one's class:
        ``(len(partials), N, 3)``."""
        bank, index = self.training_bank(max_bank)
        classes = None if labels is None else self.class_labels("train")[index]
        found = []
        for i, partial in enumerate(partials):
            pool = bank
            if classes is not None and int(labels[i]) < len(self.class_names):
                pool = bank[classes == labels[i]]
                if not len(pool):
                    raise ValueError(f"no training shape of class {self.class_names[int(labels[i])]!r} among the "
                                     f"{len(bank)} searched: raise task.completion_bank")
            found.append(pool[chamfer_to(partial.cpu().float(), pool).argmin()])
        return torch.stack(found)

    def training_bank(self, size: int) -> tuple[Tensor, Tensor]:
        """``size`` training shapes (all, if fewer) spread evenly over the training set (whose files come sorted
        by category), as fixed clouds ``(S, N, 3)`` float32 on the CPU, and their indices ``(S,)``; built once."""
        if size not in self.banks:
            train = self.fixed_clouds("train")
            index = torch.linspace(0, len(train) - 1, min(len(train), size)).round().long()  # type: ignore[arg-type]
            self.banks[size] = torch.stack([train[i] for i in index.tolist()]).float(), index
        return self.banks[size]

    def start_clouds(self, observed: Tensor, mask: Tensor, labels: Tensor | None = None) -> Tensor:
        """Where a completion with ``task.completion_start < 1`` starts: for each cloud ``observed`` ``(n, N, 3)``,
        known where ``mask`` ``(n, N)``, the nearest of ``task.completion_bank`` training shapes (of its class, for
        a class-conditional model's ``labels``) to its known points, holding them (:func:`with_partial`) in their own
        slots: ``(n, N, 3)`` on ``observed``'s device (on ``meta``, shapes only)."""
        if observed.is_meta:
            return torch.empty_like(observed)
        cpu, keep = observed.detach().float().cpu(), mask.cpu()
        if not keep.any(1).all():
            raise ValueError(f"a completion's start (task.completion_start < 1) is the training shape nearest to its "
                             f"known points, and cloud {int((~keep.any(1)).nonzero()[0])} has none: give start=1 to "
                             f"draw it from noise")
        partials = [o[m] for o, m in zip(cpu, keep)]
        try:
            nearest = self.nearest_training_shapes(partials, self.cfg.task.completion_bank,
                                                   None if labels is None else labels.cpu())
        except (OSError, DataError) as e:  # an export used away from its training shapes, say
            raise DataError(f"a completion that starts below t = 1 (task.completion_start) starts from the training "
                            f"shape nearest to its known points, and the training shapes cannot be read ({e}): "
                            f"start from noise instead (start=1; multigen-complete --start 1)") from e
        out = torch.empty_like(cpu)
        for o, m, shape, partial in zip(out, keep, nearest, partials):
            o[torch.cat([m.nonzero()[:, 0], (~m).nonzero()[:, 0]])] = with_partial(shape, partial)
        return out.to(observed)

    def save_samples(self, samples: Tensor, path: Path) -> Path:
        """Clouds ``(n, N, 3)`` in the model's frame, rendered side by side in ``<path>.png`` and written one a file
        as ``<path>/sample_<i>.ply`` mapped back by :attr:`normalizer` (global normalisation: into the training
        data's units; per-shape or none: as drawn); returns the PNG."""
        write_plys(path, self.normalizer.invert(samples.float()).numpy())
        out = path.with_suffix(".png")
        render_clouds([s.numpy() for s in samples.float()], out)
        return out


def with_partial(shape: Tensor, partial: Tensor) -> Tensor:
    """``shape`` ``(N, 3)`` with its ``P`` points nearest to ``partial`` ``(P, 3)`` replaced by the partial's points:
    a retrieved shape holding the observed points exactly, as a completion does (still ``(N, 3)``)."""
    nearest = knn(shape[None], partial[None], 1)[0][0, :, 0]  # each shape point's distance to the partial
    return torch.cat([partial, shape[nearest.topk(len(shape) - len(partial)).indices]])


def chamfer_to(partial: Tensor, bank: Tensor) -> Tensor:
    """One-sided Chamfer from ``partial`` ``(P, 3)`` to each shape of ``bank`` ``(S, N, 3)``: ``(S,)``."""
    dist, _ = knn(partial.expand(len(bank), -1, -1).contiguous(), bank, 1)
    return dist[..., 0].mean(1)
