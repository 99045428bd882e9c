"""The ``discrete`` domain: D3PM over character text, ``.npy`` token streams, quantised digit grids or label maps.

Samples are int64 tokens: sequences ``(L,)`` (text, tokens) or grids ``(8, 8)``
(digits) and ``(size, size)`` (label maps). With the absorbing transition the vocabulary gains one mask token,
the last id. The character tokenizer is built from the training text and stored
in the config (``data.vocab``), so an export decodes without the data.
"""

from __future__ import annotations

import math
from typing import Any
from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from multigen.config import ConfigError, TrainConfig, above, at_least, between, choice, speed_only
from multigen.diffusion import ModelFn
from multigen.domain import Domain, check_count, no_condition
from multigen.samplers import Known, is_whole

from .data import CharTokenizer, DigitGrids, TokenError, TokenWindows, builtin_text, read_text, read_tokens
from .labels import (SCENE_CLASSES, LabelMaps, SceneMaps, boundary_rate, check_ids, class_distance, colour,
                     infer_classes, read_label_maps)
from .d3pm import D3PM, TRANSITIONS, d3pm_betas, random_known
from .model import GridUNet, SequenceTransformer

REMASK = 0.1
"""``sample.remask`` of absorbing chains when the config leaves it None: text samples' NLL under the autoregressive
twin 3.46-3.55 bits/char against 4.08-4.15 without (two models, two draws), the character entropy level
(benchmarks/RESULTS.md)."""


@dataclass
class DiscreteDataConfig:
    source: str = choice("text", "text", "tokens", "digits", "labels")
    # text: a UTF-8 file (empty: the built-in English text); tokens: a 1-D .npy token array; labels: a folder of
    # label images (PNG, BMP, TIFF: palette or grey, pixel values are class ids) or a .npy (N, H, W) integer array
    # (empty: the built-in procedural street scenes)
    path: str = ""
    val_path: str = ""  # held-out file or folder (empty: the last tenth of `path`)
    pattern: str = "*"  # labels: the names of the label images in a folder (e.g. '*_labelIds.png')
    vocab: str = ""  # text: the tokenizer's characters in id order (empty: built from the training text)
    vocab_size: int = at_least(0, 0)  # tokens, labels: ids are in [0, vocab_size) (labels, 0: the largest id + 1)
    length: int = at_least(128, 2)  # tokens per training sequence
    num_train: int = at_least(100_000, 1)  # sequences per epoch (random windows of the training stream; scenes)
    levels: int = at_least(8, 2)  # digits: grey levels
    size: int = at_least(32, 2)  # labels: maps are resized so their short side is this and cut square (even)


@dataclass
class DiscreteProcessConfig:
    transition: str = choice("absorbing", "absorbing", "uniform", "gaussian")
    timesteps: int = at_least(256, 1)  # the ELBO estimate costs one network call per timestep
    schedule: str = choice("auto", "auto", "cosine", "jsd", "linear")  # auto: the transition's D3PM schedule
    hybrid_lambda: float = at_least(0.01, 0.0)  # weight of the auxiliary x0 cross-entropy
    # d3pm: the hybrid loss L_vb + λ·CE; masked: continuous-time masked diffusion (MDLM/MD4, absorbing only),
    # which learns far faster per step; auto: masked for absorbing, else d3pm. The reported ELBO is always the
    # discrete-time bound of the D3PM process (every term kept, each a one-sample Monte Carlo estimate).
    objective: str = choice("auto", "auto", "d3pm", "masked")
    # masked objective: how the batch's times are drawn; stratified is MDLM's low-discrepancy draw (i + v) / B
    time_sampling: str = choice("stratified", "uniform", "stratified")
    # d3pm objective: share of training sequences given a random known part (scattered tokens, or all but one
    # hidden run), kept clean, marked to the model and left out of the loss. Uniform and gaussian models then
    # infill with the known part marked; absorbing models infill exactly without it (visible tokens are clean).
    infill_rate: float = between(0.0, 0.0, 1.0)


@dataclass
class DiscreteModelConfig:
    dim: int = at_least(96, 8)  # transformer width / U-Net base channels
    depth: int = at_least(4, 1)  # transformer blocks / U-Net blocks per level
    heads: int = at_least(4, 1)
    dropout: float = at_least(0.0, 0.0)
    mlp: str = choice("swiglu", "gelu", "swiglu")  # the transformer's MLP: gated (SwiGLU) or GELU; not the U-Net's
    # false: the network does not see t (absorbing chains only, whose exact denoiser depends on x_t alone)
    time_conditioning: bool = True
    # Self-conditioning: the network also sees its own first estimate of x0 (half of the training steps first run a
    # pass without gradient, 1.2x their time; evaluation and sampling always run both passes, twice the calls).
    self_condition: bool = False
    # The transformer's positions (not the U-Net's): rotary (queries and keys turned by their positions) instead of
    # learned absolute embeddings, and a learned per-head attention bias for each token offset.
    rotary: bool = True
    relative_bias: bool = True
    # Memory: each block's activations recomputed in the backward pass, not kept (same weights and gradients).
    gradient_checkpointing: bool = speed_only(False)


@dataclass
class DiscreteSampleConfig:
    num: int = at_least(8, 1)
    steps: int = at_least(0, 0)  # 0: every timestep
    temperature: float = above(1.0, 0.0)  # divides the x0 logits (0 is an error, not argmax)
    min_p: float = between(0.0, 0.0, 1.0)  # each token's classes below this share of its likeliest are dropped
    # absorbing: the most a visible token is masked again a step (ReMDM); None: REMASK for absorbing chains, else 0
    remask: float | None = between(None, 0.0, 1.0)
    length: int = at_least(0, 0)  # tokens per sampled sequence; 0: data.length (token sources only)
    seed: int = 1234


@dataclass
class DiscreteEvalConfig:
    num_sequences: int = at_least(32, 1)  # held-out sequences whose negative ELBO is estimated
    batch_size: int = at_least(32, 1)
    # label maps: samples drawn (seeded, the sample settings) and compared with the held-out maps: edge share
    # (stray pixels raise it) and class-frequency distance; 0: none
    num_samples: int = at_least(0, 0)


@dataclass
class DiscreteConfig:
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            output_dir="runs/discrete", max_steps=5200, batch_size=16, lr=3e-3, adam_betas=(0.9, 0.95),
            optimizer="muon", adamw_lr_scale=3.0, warmup_steps=200, lr_decay="linear", lr_decay_steps=1000,
            grad_clip=0.25, sample_every=500, eval_every=0, checkpoint_every=500, ema_decay=0.995, log_every=25,
        )
    )
    process: DiscreteProcessConfig = field(default_factory=DiscreteProcessConfig)
    sample: DiscreteSampleConfig = field(default_factory=DiscreteSampleConfig)
    data: DiscreteDataConfig = field(default_factory=DiscreteDataConfig)
    model: DiscreteModelConfig = field(default_factory=DiscreteModelConfig)
    eval: DiscreteEvalConfig = field(default_factory=DiscreteEvalConfig)


class Discrete(Domain):
    """Token sequences ``(B, L)`` or grids ``(B, H, W)``, int64."""

    name = "discrete"
    config_class = DiscreteConfig

    def __init__(self, cfg: DiscreteConfig) -> None:
        super().__init__(cfg)
        self._streams: dict[str, Tensor] = {}  # encoded once: by fit()'s checks, then by build_dataset
        self._labels: dict[tuple[str, str, str | None], tuple[list[Tensor], list[str]]] = {}  # see _read_labels
        d, p = cfg.data, cfg.process
        if d.source == "tokens" and d.vocab_size < 2:
            raise ConfigError("data.vocab_size: must be set (>= 2) when data.source=tokens")
        if d.source == "tokens" and not d.path:
            raise ConfigError("data.path: data.source=tokens reads a 1-D .npy token array from it; none given")
        if d.source == "labels" and d.size % 2:
            raise ConfigError(f"data.size: label maps are cut to size x size for a U-Net that halves them once, so "
                              f"it must be even; got {d.size}")
        if d.source == "labels" and d.val_path and not d.path:
            raise ConfigError("data.val_path: given without data.path (the built-in scenes hold out their own)")
        if d.source == "labels" and not d.path and 0 < d.vocab_size < len(SCENE_CLASSES):
            raise ConfigError(f"data.vocab_size={d.vocab_size}: the built-in scenes have {len(SCENE_CLASSES)} classes "
                              f"({', '.join(SCENE_CLASSES)})")
        if p.objective == "masked" and p.transition != "absorbing":
            raise ConfigError("process.objective=masked needs process.transition=absorbing")
        self.objective = p.objective if p.objective != "auto" else ("masked" if p.transition == "absorbing" else "d3pm")
        if self.objective == "masked" and p.schedule not in ("auto", "jsd"):
            raise ConfigError(f"process.schedule={p.schedule} with the masked objective (process.objective=auto picks "
                              f"it for the absorbing transition): it trains at the jsd schedule's times, where a "
                              f"token is masked at step t with probability t/T, so sampling and the bound need that "
                              f"chain; use process.schedule=auto (or jsd), or process.objective=d3pm")
        if not cfg.model.time_conditioning and p.transition != "absorbing":
            raise ConfigError(f"model.time_conditioning=false needs process.transition=absorbing: the denoiser of a "
                              f"{p.transition} chain depends on t")
        if p.infill_rate > 0 and self.objective == "masked":
            raise ConfigError("process.infill_rate applies to the d3pm objective (uniform and gaussian transitions); "
                              "the masked objective's visible tokens are already clean, so it infills without it")
        try:  # here, not at the first sampling of a long run
            self.sample_settings()
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"sample.{e}") from None

    def fit(self) -> None:
        """The characters of the training and held-out text become ``data.vocab`` (text source, unless given: a
        character only the held-out part has needs an id to be scored); then each split of a token stream must
        encode and hold one ``data.length`` window, so a bad file fails here, before training, not at the final
        evaluation. Label maps: their ids must be below ``data.vocab_size`` (0: it becomes the largest id of either
        split + 1; 6 for the built-in scenes). Last, the transition is built over the fitted categories (a dense
        one has a size limit)."""
        d = self.cfg.data
        if d.source == "text" and not d.vocab:
            d.vocab = CharTokenizer.from_text(self._text("train") + self._text("val")).chars
            if len(d.vocab) < 2:
                raise TokenError(f"{self._source('train')} and its held-out part hold one distinct character "
                                 f"({d.vocab!r}): nothing to learn")
        if d.source == "labels":
            self._fit_labels()
        for split in ("train", "val") if d.source in ("text", "tokens") else ():
            n = len(self.stream(split))
            if n < d.length:
                raise TokenError(f"{self._source(split)} holds {n} tokens, fewer than one window of data.length="
                                 f"{d.length}: give more data (or a data.val_path) or a smaller data.length")
        try:
            self.process  # noqa: B018  (built now: one the fitted categories cannot use fails before a run writes)
        except ValueError as e:
            raise ConfigError(f"process.transition={self.cfg.process.transition} over {self.vocab} categories: {e}"
                              ) from None

    def _fit_labels(self) -> None:
        d = self.cfg.data
        if not d.path:
            d.vocab_size = d.vocab_size or len(SCENE_CLASSES)
            return
        splits = [self._label_maps(split) for split in ("train", "val")]
        if not d.vocab_size:
            d.vocab_size = infer_classes(*(sum(part, []) for part in zip(*splits)))
        for maps, names in splits:
            check_ids(maps, names, d.vocab_size)

    def _label_maps(self, split: str) -> tuple[list[Tensor], list[str]]:
        """``split``'s label maps and their names: all of ``data.val_path`` for held-out maps where it is given (and
        then never trained on, even inside ``data.path``), else the last tenth of ``data.path``'s (at least one)."""
        d = self.cfg.data
        if split == "val" and d.val_path:
            return self._read_labels(d.val_path, d.pattern, None)
        maps, names = self._read_labels(d.path, d.pattern, d.val_path or None)
        cut = len(maps) if d.val_path else len(maps) - max(1, len(maps) // 10)
        if cut < 1:
            raise TokenError(f"{d.path} holds one label map: it cannot be split into training and held-out maps; "
                             f"give more, or the held-out ones as data.val_path")
        part = slice(0, cut) if split == "train" else slice(cut, None)
        return maps[part], names[part]

    def _read_labels(self, path: str, pattern: str, exclude: str | None) -> tuple[list[Tensor], list[str]]:
        """:func:`~discrete.labels.read_label_maps`, read once for these arguments (both splits of one folder)."""
        key = (path, pattern, exclude)
        if key not in self._labels:
            self._labels[key] = read_label_maps(path, pattern, exclude=exclude)
        return self._labels[key]

    @property
    def grid(self) -> bool:
        """Whether the data are 2-D grids (digits, label maps) rather than sequences."""
        return self.cfg.data.source in ("digits", "labels")

    @cached_property
    def tokenizer(self) -> CharTokenizer | None:
        """The character tokenizer of ``data.vocab`` (text source), else None."""
        d = self.cfg.data
        if d.source != "text":
            return None
        if not d.vocab:
            raise ValueError("data.vocab is empty: call fit() first (the trainer does), or give data.vocab")
        return CharTokenizer(d.vocab)

    @property
    def data_vocab(self) -> int:
        """Categories of the data (the mask token not counted)."""
        d = self.cfg.data
        if d.source == "text":
            return len(self.tokenizer)  # type: ignore[arg-type]
        if d.source == "labels" and not d.vocab_size:
            raise ValueError("data.vocab_size is 0: call fit() first (the trainer does), or give data.vocab_size")
        return d.levels if d.source == "digits" else d.vocab_size

    @property
    def vocab(self) -> int:
        """Categories the model sees: the data's, and the mask token (the last id) for the absorbing transition."""
        return self.data_vocab + (self.cfg.process.transition == "absorbing")

    @cached_property
    def process(self) -> D3PM:
        """The categorical diffusion over :attr:`vocab` categories."""
        return self._chain(self.cfg.process.timesteps)

    def _chain(self, timesteps: int) -> D3PM:
        """The config's diffusion on a chain of ``timesteps`` steps: the process's own, or the finer chain a
        masked model samples (its jsd schedule, ``ᾱ_t = 1 − t/T``, is one in continuous time)."""
        p = self.cfg.process
        schedule = {"absorbing": "jsd", "uniform": "cosine", "gaussian": "linear"}[p.transition]
        betas = d3pm_betas(schedule if p.schedule == "auto" else p.schedule, timesteps)
        return D3PM(TRANSITIONS[p.transition](self.vocab, betas), hybrid_lambda=p.hybrid_lambda)

    def _chain_of(self, model: ModelFn, steps: int) -> tuple[D3PM, ModelFn]:
        """The chain that ``steps`` steps run and the model on its times: the process's own (``steps`` at most its
        timesteps; 0: all), or for a masked model the finer chain of ``steps`` steps, its times told to the network
        in units of the process's T."""
        T = self.cfg.process.timesteps
        if steps <= T or self.objective != "masked":  # (the process names a count above T for other models)
            return self.process, model
        return self._chain(steps), partial(_on_time_scale, model, T / steps)

    def _source(self, split: str) -> str:
        """Where ``split``'s tokens come from, in words (errors name it)."""
        d = self.cfg.data
        if split == "val" and d.val_path:
            return d.val_path
        if not d.path:
            return "the built-in text" + ("'s training part" if split == "train" else "'s held-out tenth")
        if d.val_path:
            return d.path
        return f"{d.path} ({'its first nine tenths' if split == 'train' else 'its held-out last tenth'})"

    def _text(self, split: str) -> str:
        d = self.cfg.data
        if split == "val" and d.val_path:
            return read_text(d.val_path)
        if not d.path:
            return builtin_text(split)
        text = read_text(d.path)
        cut = int(0.9 * len(text)) if not d.val_path else len(text)
        return text[:cut] if split == "train" else text[cut:]

    def stream(self, split: str) -> Tensor:
        """The whole ``split`` as one token stream ``(N,)`` (text and tokens sources), read and encoded once."""
        if split not in self._streams:
            self._streams[split] = self._read_stream(split)
        return self._streams[split]

    def _read_stream(self, split: str) -> Tensor:
        d = self.cfg.data
        if d.source == "text":
            return self.tokenizer.encode(self._text(split), source=self._source(split))
        tokens = read_tokens(d.val_path if split == "val" and d.val_path else d.path, d.vocab_size)
        if d.val_path:  # each split a file of its own
            return tokens
        cut = int(0.9 * len(tokens))
        return tokens[:cut] if split == "train" else tokens[cut:]

    def build_model(self) -> nn.Module:
        m, p = self.cfg.model, self.cfg.process
        flag = p.infill_rate > 0
        if self.grid:
            return GridUNet(self.vocab, p.timesteps, base=m.dim, blocks=m.depth, known_flag=flag,
                            time_conditioning=m.time_conditioning, self_condition=m.self_condition,
                            gradient_checkpointing=m.gradient_checkpointing)
        return SequenceTransformer(self.vocab, self.cfg.data.length, p.timesteps, dim=m.dim, depth=m.depth,
                                   heads=m.heads, dropout=m.dropout, known_flag=flag, mlp=m.mlp,
                                   time_conditioning=m.time_conditioning, self_condition=m.self_condition,
                                   rotary=m.rotary, relative_bias=m.relative_bias,
                                   gradient_checkpointing=m.gradient_checkpointing)

    def build_dataset(self, split: str) -> Dataset:
        d = self.cfg.data
        if split not in ("train", "val"):
            raise ValueError(f"unknown split {split!r}; use 'train' or 'val'")
        if d.source == "digits":
            return DigitGrids(d.levels, split)
        if d.source == "labels" and not d.path:
            return SceneMaps(d.num_train if split == "train" else 1024, d.size, split)
        if d.source == "labels":
            return LabelMaps(self._label_maps(split)[0], d.size, random_crop=split == "train")
        return TokenWindows(self.stream(split), d.length, num=d.num_train if split == "train" else 0)

    def sample_shape(self) -> tuple[int, ...]:
        d = self.cfg.data
        return (8, 8) if d.source == "digits" else (d.size, d.size) if d.source == "labels" else (d.length,)

    def training_loss(self, model: nn.Module, batch: Tensor) -> Tensor:
        if self.objective == "masked":
            stratified = self.cfg.process.time_sampling == "stratified"
            return self.process.masked_diffusion_loss(model, batch, stratified=stratified).mean()
        rate = self.cfg.process.infill_rate
        if rate == 0:
            return self.process.loss(model, batch).mean()
        known = random_known(batch, rate)
        return self.process.loss(partial(model, known=known), batch, known=known).mean()

    SETTINGS = ("steps", "temperature", "min_p", "remask", "length")

    def sample_settings(self, **overrides: Any) -> DiscreteSampleConfig:
        """:meth:`Domain.sample_settings`; ``steps`` at most the process's timesteps unless the model is of
        continuous time (the masked objective), ``length`` at most ``data.length`` (the longest sequence the model
        takes) and 0 for grids; ``remask`` left None is :data:`REMASK` for an absorbing chain, 0 for another."""
        s = super().sample_settings(**overrides)
        d, T = self.cfg.data, self.cfg.process.timesteps
        if s.steps > T and self.objective != "masked":
            raise ValueError(f"steps={s.steps}: at most process.timesteps={T}, the chain this model was trained on "
                             f"(a model of the masked objective, which trains in continuous time, takes more)")
        if s.length and self.grid:
            raise ValueError(f"length={s.length}: {d.source} grids have a fixed shape {self.sample_shape()} (use 0)")
        if s.length > d.length:
            raise ValueError(f"length={s.length}: at most data.length={d.length}, the longest sequence the model "
                             f"takes")
        absorbing = self.cfg.process.transition == "absorbing"
        if s.remask is None:
            s = replace(s, remask=REMASK if absorbing else 0.0)
        if s.remask and not absorbing:
            raise ValueError(f"remask={s.remask}: remasking is for process.transition=absorbing, not "
                             f"{self.cfg.process.transition}; set sample.remask=0")
        return s

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
        """``n`` token arrays ``(n, *shape)`` int64; ``known`` (bool ``mask``, int64 ``values``) keeps given tokens.

        ``settings`` (see :meth:`sample_settings`): ``steps`` (0: every timestep; above the process's T, for the
        masked objective's models of continuous time, the finer chain of that many steps), ``temperature`` (> 0),
        ``min_p`` (each token's classes below this share of its likeliest dropped; 0: none), ``remask`` (absorbing
        chains: the most a visible token is masked again a step, to be redrawn later; 0: never; the config's None:
        :data:`REMASK` for absorbing chains, 0 for others) and ``length``
        (tokens per sequence, for text and token data; 0: ``data.length``). D3PM has one ancestral sampler: ``sampler``,
        ``eta``, ``resample`` and ``guidance`` are the Gaussian domains'.
        """
        check_count(n)
        no_condition(self.name, condition)
        s = self.sample_settings(**settings)
        shape = (n, s.length) if s.length else (n, *self.sample_shape())
        device = next(model.parameters()).device
        if known is not None and self.cfg.process.infill_rate > 0:  # trained to be told which tokens are known
            model = partial(model, known=known.mask.to(device).bool().expand(shape))
        process, model = self._chain_of(model, s.steps)
        return process.sample(model, shape, steps=s.steps or None, temperature=s.temperature, known=known,
                              generator=generator, progress=progress, device=device, min_p=s.min_p,
                              remask=s.remask)

    @torch.no_grad()
    def elbo_bits(self, model: nn.Module, data: Tensor, batch_size: int, steps: int | None = None,
                  progress: bool = False, any_order: bool = False, orders: int = 1) -> Tensor:
        """Negative-ELBO estimate in bits per token of each sequence of ``data`` ``(N, *shape)`` under the
        ``steps``-step chain that :meth:`sample` runs (above the process's timesteps, for a masked model, the finer
        chain), or (``any_order``, absorbing only) its continuous-time limit
        (:meth:`~discrete.d3pm.D3PM.any_order_bits`; ``orders`` other than 1, which implies ``any_order``: its
        bound weighted over that many random orders, tighter): ``(N,)`` float32 on the CPU (seeded, so a model
        scores the same twice)."""
        if data.dim() != 1 + len(self.sample_shape()):
            raise ValueError(f"data: a batch of {'grids (N, H, W)' if self.grid else 'token sequences (N, L)'}, got "
                             f"shape {tuple(data.shape)} (one of them: data[None])")
        if not (is_whole(batch_size) and batch_size >= 1):
            raise ValueError(f"batch_size: a whole number >= 1, got {batch_size!r}")
        if steps is not None and not (is_whole(steps) and steps >= 0):
            raise ValueError(f"steps: a whole number of steps (0: every timestep), got {steps!r}")
        any_order = any_order or orders != 1  # the bound weighted over random orders is the any-order one's
        if any_order and steps:
            raise ValueError(f"steps={steps}: the any-order bound (any_order, or orders={orders}) reveals one token "
                             f"a step and takes no step count")
        device = next(model.parameters()).device
        g = torch.Generator(device=device).manual_seed(0)
        process, chain_model = self._chain_of(model, steps or 0)

        def bits(chunk: Tensor) -> Tensor:
            if any_order:
                return self.process.any_order_bits(model, chunk, generator=g, progress=progress, orders=orders)
            return process.elbo_bits(chain_model, chunk, steps=steps or None, generator=g, progress=progress)

        return torch.cat([bits(chunk.to(device)).cpu() for chunk in data.split(batch_size)]) if len(data) else (
            torch.zeros(0))

    def evaluate(self, model: nn.Module, dataset: Dataset) -> dict[str, float]:
        """Held-out negative ELBO (bits per token; mean and standard error over sequences) next to
        :meth:`baselines` on the same tokens."""
        e = self.cfg.eval
        n = min(e.num_sequences, len(dataset))  # type: ignore[arg-type]
        data = torch.stack([dataset[i] for i in range(n)])
        mean, stderr = mean_and_stderr(self.elbo_bits(model, data, e.batch_size))
        scores = {"elbo_bits_per_token": mean, "elbo_bits_stderr": stderr, **self.baselines(data)}
        if self.cfg.data.source == "labels" and e.num_samples:
            scores.update(self.sample_statistics(model, data, e.num_samples))
        return scores

    def sample_statistics(self, model: nn.Module, held_out: Tensor, n: int) -> dict[str, float]:
        """``n`` samples (the config's sample settings, seeded by ``sample.seed``) against the held-out label maps
        ``held_out`` ``(N, H, W)``: each one's :func:`~discrete.labels.boundary_rate` (``sample_boundary_rate``,
        ``held_out_boundary_rate``) and the :func:`~discrete.labels.class_distance` between them
        (``sample_class_distance``)."""
        device = next(model.parameters()).device
        g = torch.Generator(device=device).manual_seed(self.cfg.sample.seed)
        samples = torch.cat([self.sample(model, len(chunk), generator=g).cpu()
                             for chunk in torch.arange(n).split(self.cfg.eval.batch_size)])
        return {"sample_boundary_rate": boundary_rate(samples), "held_out_boundary_rate": boundary_rate(held_out),
                "sample_class_distance": class_distance(samples, held_out, self.data_vocab)}

    def baselines(self, data: Tensor) -> dict[str, float]:
        """Cross-entropies (bits per token) of ``data`` ``(N, *shape)`` under the training data's token frequencies
        (add-one; ``baseline_unigram_bits``), and for grids under each position's own training frequencies (a
        layout baseline: sky above, road below; ``baseline_position_bits``)."""
        scores = {"baseline_unigram_bits": self.unigram_bits(data)}
        if not self.grid:
            return scores
        counts = self._training_counts[1]
        if data.shape[1:] != counts.shape[:-1]:
            raise ValueError(f"grids of shape {tuple(data.shape[1:])} scored against training grids of shape "
                             f"{tuple(counts.shape[:-1])}: position by position they do not match")
        logp = (counts.flatten(0, -2) / counts.flatten(0, -2).sum(-1, keepdim=True)).log2()
        scores["baseline_position_bits"] = -logp.gather(1, data.flatten(1).T).mean().item()
        return scores

    def unigram_bits(self, data: Tensor) -> float:
        """:meth:`baselines`' unigram cross-entropy (bits per token) of ``data`` ``(N, *shape)``."""
        counts = self._training_counts[0]
        return -(counts / counts.sum()).log2()[data.flatten()].mean().item()

    @cached_property
    def _training_counts(self) -> tuple[Tensor, Tensor | None]:
        """Add-one counts (float64) the baselines score under, counted once: of each category in the training data
        ``(K,)``, and for grids of each category at each position ``(*shape, K)`` (else None)."""
        ref, K = self._training_tokens(), self.data_vocab
        unigram = torch.bincount(ref.flatten(), minlength=K).double() + 1
        if not self.grid:
            return unigram, None
        positions = ref[0].numel()
        at = torch.arange(positions) * K  # each position's block of K counts
        counts = torch.bincount((at + ref.flatten(1)).flatten(), minlength=positions * K).double() + 1
        return unigram, counts.view(*ref.shape[1:], K)

    def _training_tokens(self) -> Tensor:
        """What the baselines count: the training stream ``(N,)``, or the first 4 096 training grids ``(n, H, W)``
        (label maps cut centred, as held-out ones are, so the global random state is left alone)."""
        d = self.cfg.data
        if d.source == "labels" and d.path:
            train: Dataset = LabelMaps(self._label_maps("train")[0], d.size, random_crop=False)
        else:
            train = self.build_dataset("train")
        if isinstance(train, TokenWindows):
            return train.tokens
        return torch.stack([train[i] for i in range(min(len(train), 4096))])  # type: ignore[arg-type]

    def decode(self, tokens: Tensor) -> list[str]:
        """Text of each sequence ``(n, L)`` (mask ids print as ``_``)."""
        if self.tokenizer is None:
            raise ValueError("decode needs a text model (data.source=text)")
        if tokens.dim() != 2:
            raise ValueError(f"decode: token sequences (n, L), got shape {tuple(tokens.shape)} (one sequence: "
                             f"tokens[None])")
        return [self.tokenizer.decode(row) for row in tokens.cpu()]

    def picture(self, grids: Tensor) -> Tensor:
        """Grids ``(n, H, W)`` as uint8 RGB ``(n, H, W, 3)``: digits in grey (black 0 to white levels - 1), label
        maps in :func:`~discrete.labels.palette`'s colours."""
        grids = grids.cpu()
        if self.cfg.data.source == "labels":
            return colour(grids, self.data_vocab)
        levels = self.cfg.data.levels
        grey = (grids.clamp(max=levels - 1) * 255 / (levels - 1)).round().to(torch.uint8)
        return grey[..., None].expand(*grey.shape, 3)

    def save_samples(self, samples: Tensor, path: Path) -> Path:
        if self.grid:
            return save_grid_picture(self.picture(samples), path.with_suffix(".png"))
        out = path.with_suffix(".txt")
        rows = self.decode(samples) if self.tokenizer else [" ".join(map(str, r.tolist())) for r in samples]
        out.write_text("\n\n".join(f"--- sample {i} ---\n{r}" for i, r in enumerate(rows)) + "\n")
        return out


def _on_time_scale(model: ModelFn, scale: float, x: Tensor, t: Tensor) -> Tensor:
    """``model(x, t · scale)``: a network of T steps asked at the times of a finer chain (the jsd schedule's
    ``ᾱ_t = 1 − t/T`` makes step ``t`` of ``T'`` the time ``t · T / T'`` of ``T``)."""
    return model(x, t * scale)


def mean_and_stderr(values: Tensor) -> tuple[float, float]:
    """Mean of per-sequence estimates ``(N,)`` and its standard error ``std / sqrt(N)`` (NaN for one sequence)."""
    values = values.double()
    return values.mean().item(), (values.std() / math.sqrt(len(values))).item() if len(values) > 1 else math.nan


def save_grid_picture(pictures: Tensor, out: Path) -> Path:
    """Tile uint8 RGB pictures ``(n, H, W, 3)`` into one PNG, a pixel apart, each grid cell drawn as a square of
    ``max(1, 64 // max(H, W))`` pixels (8x8 digits: 8, 32x32 maps: 2)."""
    from PIL import Image

    n, H, W, _ = pictures.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = torch.zeros(rows * (H + 1) - 1, cols * (W + 1) - 1, 3, dtype=torch.uint8)
    for i, g in enumerate(pictures):
        r, c = divmod(i, cols)
        canvas[r * (H + 1) : r * (H + 1) + H, c * (W + 1) : c * (W + 1) + W] = g
    scale = max(1, 64 // max(H, W))
    Image.fromarray(canvas.numpy()).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), 0).save(out)
    return out
