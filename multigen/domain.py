"""What a domain provides to the core, and where the core finds domains.

A domain is a :class:`Domain` subclass with a ``name`` and a ``config_class``.
The core looks domains up by name among the ``multigen.domains`` entry points
(declared in the domain's ``pyproject.toml``), or by ``package.module:Class``, so
adding a domain touches no core file.
"""

from __future__ import annotations

import dataclasses
import importlib
import operator
import re
from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from . import samplers
from .config import ConfigError, SampleConfig, first_line, replaced
from .diffusion import GaussianDiffusion
from .samplers import Known
from .schedules import NoiseSchedule

ENTRY_POINT_GROUP = "multigen.domains"


class UnknownDomainError(LookupError):
    """No domain of that name is installed."""


class DataError(ValueError):
    """A domain's input data cannot be used (unreadable, empty, non-finite, too short); the message names it. Each
    domain's own error (``VideoReadError``, ``PointCloudError``, ``TokenError``) is one."""


def natural_key(path: Path) -> list[list[str | int]]:
    """Sort key of a path that orders the numbers in its names by value (``frame_2`` before ``frame_10``), folder by
    folder, case aside: how a person lists numbered frames or label images."""
    return [[int(part) if part.isdecimal() else part.lower() for part in re.split(r"(\d+)", name)]
            for name in path.parts]


def spread(n: int, most: int) -> list[int]:
    """Up to ``most`` indices of ``n`` items, evenly spread over them, the first and the last among them: a sample
    of a dataset whose items come grouped (files sorted by category, a folder's clips video by video)."""
    return np.unique(np.linspace(0, n - 1, min(n, most)).round().astype(int)).tolist()


def load_npy(path: Path, error: type[DataError] = DataError, mmap_mode: str | None = None) -> np.ndarray:
    """The array of the ``.npy`` file ``path``, never unpickled. A file numpy cannot read as an array is ``error``
    naming ``path`` and why: one without the ``.npy`` header (a text or an empty file: numpy's own message would
    suggest ``allow_pickle``), a truncated one, one of Python objects."""
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise error(f"{path}: not a readable .npy array (no .npy header: not a NumPy array file)")
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise error(f"{path}: not a readable .npy array ({first_line(e)})") from None


class Domain(ABC):
    """Everything the trainer and the tools need from a domain, built from its config."""

    name: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def fit(self) -> None:
        """Fill in the settings that the training data decides (a vocabulary, a normalisation), in ``self.cfg``.

        The trainer calls it before it writes the run's config, so that config is the export's. A setting
        already given is kept. Nothing to fit by default.
        """

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised network."""

    @abstractmethod
    def build_dataset(self, split: str) -> Dataset:
        """The ``"train"`` or ``"val"`` dataset; items are tensors or dicts of tensors."""

    @abstractmethod
    def training_loss(self, model: nn.Module, batch: Any) -> Tensor:
        """Scalar loss of ``model`` on a collated ``batch`` already on the model's device."""

    SETTINGS: ClassVar[tuple[str, ...]] = ()
    """The fields of ``cfg.sample`` that :meth:`sample` takes as keyword settings."""

    def sample_settings(self, **overrides: Any) -> Any:
        """The one settings object sampling uses: a copy of ``cfg.sample`` with ``overrides`` (None: keep).

        A setting this domain does not take is an error naming it and the ones it takes; values are
        checked as the config checks them (:func:`~multigen.config.replaced`: types too).
        Subclasses add their own consistency checks.
        """
        unknown = sorted(set(overrides) - set(self.SETTINGS))
        if unknown:
            raise TypeError(f"{self.name} sampling takes no setting {', '.join(map(repr, unknown))}; "
                            f"its settings are {', '.join(self.SETTINGS)}")
        try:
            return replaced(self.cfg.sample, {k: v for k, v in overrides.items() if v is not None})
        except ConfigError as e:
            raise ConfigError(f"sample.{e}") from None

    @abstractmethod
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
        """``n`` samples from ``model`` in the domain's data convention.

        ``condition``: a per-sample condition (None: unconditional; of the shipped domains only class-conditional
        point clouds take one, the class). ``known``: the observed part, kept exactly. ``settings``: any of
        :attr:`SETTINGS` (see :meth:`sample_settings`), overriding the config's ``sample`` section for this call.
        """

    @abstractmethod
    def save_samples(self, samples: Tensor, path: Path) -> Path:
        """Write ``samples`` as something a person can look at (``path`` without suffix); return the file."""

    def evaluate(self, model: nn.Module, dataset: Dataset) -> dict[str, float]:
        """Named metrics of ``model`` on ``dataset`` (none by default)."""
        return {}

    def held_out_picks(self, size: int) -> list[int]:
        """The indices of the held-out items (of ``size``) that :meth:`evaluate` reads (by default, for this check,
        the first)."""
        return list(range(min(1, size)))

    def check_held_out(self, dataset: Dataset) -> None:
        """Read the held-out items :meth:`evaluate` will read (:meth:`held_out_picks`), so that a bad one stops a
        run before training, not at its final evaluation; a ``DataError`` naming what is wrong."""
        for i in self.held_out_picks(len(dataset)):  # type: ignore[arg-type]
            dataset[i]

    collate_fn: ClassVar[Any] = None
    """``collate_fn`` for the DataLoader (None: PyTorch's default)."""


class GaussianDomain(Domain):
    """A domain over continuous data that uses the core's Gaussian diffusion and samplers.

    The config must have ``diffusion`` (:class:`~multigen.config.DiffusionConfig`) and
    ``sample`` (:class:`~multigen.config.SampleConfig`) sections. Subclasses give the
    shape of one sample; the model is called as ``model(x_t, t)``.
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        d = cfg.diffusion
        try:
            schedule = NoiseSchedule(
                d.schedule, d.timesteps, beta_start=d.beta_start, beta_end=d.beta_end, cosine_s=d.cosine_s,
                sigmoid_start=d.sigmoid_start, sigmoid_end=d.sigmoid_end, sigmoid_tau=d.sigmoid_tau,
                max_beta=d.max_beta,
            )
        except ValueError as e:  # its parameters are the diffusion section's keys
            raise ConfigError(f"diffusion.schedule={d.schedule}, diffusion.timesteps={d.timesteps}: {e}") from None
        clip = None if d.clip_x0 is None else d.clip_x0 * self.clip_scale()
        self.diffusion = GaussianDiffusion(
            schedule, d.parameterization, d.loss_weighting, d.min_snr_gamma, clip, d.time_sampling
        )
        s = cfg.sample
        if s.steps > d.timesteps:
            raise ConfigError(f"sample.steps={s.steps}: at most diffusion.timesteps={d.timesteps} (the schedule's "
                              f"levels)")
        try:  # here, not at the first sampling of a long run
            samplers.check_settings(s.sampler, s.eta, s.resample, prefix="sample.")
            self._check_guidance(s.guidance, "sample.guidance")
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def _check_guidance(self, guidance: float, name: str = "guidance") -> None:
        """A ``guidance`` other than 1 needs a domain with a condition to guide on."""
        if guidance != 1.0 and not self.conditional:
            raise ValueError(f"{name}={guidance}: {self.name} samples have no condition to guide on; "
                             "classifier-free guidance applies to conditional domains (video's observed frames, "
                             "class-conditional point clouds)")

    def clip_scale(self) -> float:
        """Factor on ``diffusion.clip_x0``, which is given in the data's units: a domain that diffuses
        something wider than its data (residuals, rescaled data) returns how much wider."""
        return 1.0

    @abstractmethod
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample, without the batch dimension."""

    def training_loss(self, model: nn.Module, batch: Tensor) -> Tensor:
        return self.diffusion.loss(model, batch).mean()

    SETTINGS = ("sampler", "steps", "spacing", "eta", "resample", "guidance", "guidance_interval", "temperature",
                "unconditional_temperature")

    def sample_settings(self, **overrides: Any) -> SampleConfig:
        """:meth:`Domain.sample_settings`, and the settings fit the sampler: ``eta`` is DDIM's and
        ``resample`` DDPM's (an error for another sampler); ``guidance`` needs a domain with a condition.
        The config's ``eta``/``resample`` belong to the config's sampler: when ``sampler`` is overridden
        they start from their defaults unless given too. A ``temperature`` given without an
        ``unconditional_temperature`` is every sample's, unconditional ones' too (as ``--temperature`` is)."""
        if overrides.get("sampler") not in (None, self.cfg.sample.sampler):
            overrides = {"eta": 0.0, "resample": 1, **{k: v for k, v in overrides.items() if v is not None}}
        settings = super().sample_settings(**overrides)
        if overrides.get("temperature") is not None and overrides.get("unconditional_temperature") is None:
            settings = dataclasses.replace(settings, unconditional_temperature=None)  # None: `temperature`
        samplers.check_settings(settings.sampler, settings.eta, settings.resample)
        self._check_guidance(settings.guidance)
        if settings.steps > self.diffusion.schedule.timesteps:
            raise ValueError(f"steps={settings.steps}: at most the schedule's {self.diffusion.schedule.timesteps} "
                             "levels (diffusion.timesteps)")
        return settings

    conditional: ClassVar[bool] = False
    """Whether the network sees a condition that classifier-free guidance can scale (``sample.guidance``)."""

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
        check_count(n)
        no_condition(self.name, condition)
        weight = next(model.parameters())
        return self.run_sampler(model, (n, *self.sample_shape()), self.sample_settings(**settings), known=known,
                                generator=generator, device=weight.device, dtype=weight.dtype, progress=progress)

    def run_sampler(
        self,
        model_fn: Any,
        shape: tuple[int, ...],
        settings: SampleConfig,
        *,
        known: Known | None,
        generator: torch.Generator | None,
        device: torch.device,
        dtype: torch.dtype,
        progress: bool,
        init: Tensor | None = None,
        start: float = 1.0,
    ) -> Tensor:
        """The core sampler that ``settings`` (from :meth:`sample_settings`) name over the network
        ``model_fn(x_t, t)``, drawing a batch of ``shape`` in ``dtype`` (the network's); ``known`` parts are held
        fixed; ``init`` and ``start`` (in the network's frame): see :func:`multigen.samplers.sample`."""
        return samplers.sample(
            self.diffusion.denoiser(model_fn),
            shape,
            self.diffusion.schedule,
            **settings.sampler_arguments(observed=known is not None),
            known=known,
            generator=generator,
            device=device,
            dtype=dtype,
            progress=progress,
            init=init,
            start=start,
        )


def check_count(n: Any) -> None:
    """Raise for a number of samples ``n`` that is not a positive integer (NumPy and 0-d tensor ints pass)."""
    if not (samplers.is_whole(n) and operator.index(n) >= 1):
        raise ValueError(f"the number of samples must be a positive integer, got {n!r}")


def no_condition(domain: str, condition: Any) -> None:
    """Raise for a ``condition`` given to a domain that takes none."""
    if condition is not None:
        raise ValueError(f"{domain} sampling takes no condition (its known part goes in `known`)")


def available_domains() -> list[str]:
    """Names of the installed domains."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def domain_spec(cls: type[Domain]) -> str:
    """What names ``cls`` to :func:`get_domain` (an export's ``domain:``): its ``name`` when that is registered as
    this very class, else ``package.module:Class``; ``name`` too for a class no import reaches (local to a function,
    or in a script run as ``__main__``)."""
    if "<locals>" in cls.__qualname__ or cls.__module__ == "__main__":
        return cls.name
    try:
        if get_domain(cls.name) is cls:
            return cls.name
    except UnknownDomainError:
        pass
    return f"{cls.__module__}:{cls.__qualname__}"


def names_domain(name: str, cls: type[Domain]) -> bool:
    """Whether ``name`` (an export's ``domain:``) names ``cls``: as :func:`domain_spec` writes it, or as any name
    :func:`get_domain` resolves to it (an export written where the domain was not yet registered, say)."""
    if name == domain_spec(cls):
        return True
    try:
        return get_domain(name) is cls
    except UnknownDomainError:
        return False


def get_domain(name: str) -> type[Domain]:
    """The domain class registered as ``name``, or given as ``package.module:Class``."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            hint = (" (the module must be importable: put its folder on PYTHONPATH)"
                    if isinstance(e, ModuleNotFoundError) and e.name == module.partition(".")[0] else "")
            raise UnknownDomainError(f"cannot load domain {name!r}: {e}{hint}") from None
    else:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not found:
            names = ", ".join(available_domains()) or "none (is multigen-diffusion installed?)"
            raise UnknownDomainError(f"unknown domain {name!r}; available domains: {names}")
        obj = found[0].load()
    if not (isinstance(obj, type) and issubclass(obj, Domain)):
        raise UnknownDomainError(f"{name!r} does not name a multigen Domain subclass")
    return obj
