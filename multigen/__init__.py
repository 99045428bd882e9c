"""multigen: one diffusion core for video, point clouds and discrete data.

The core is domain-agnostic: schedules (:mod:`multigen.schedules`), Gaussian
diffusion (:mod:`multigen.diffusion`), samplers (:mod:`multigen.samplers`),
guidance (:mod:`multigen.guidance`), network parts (:mod:`multigen.nn`), typed
configs (:mod:`multigen.config`), domains (:mod:`multigen.domain`), the
Accelerate trainer (:mod:`multigen.trainer`) and exports (:mod:`multigen.export`).
"""

import importlib
import importlib.util
from collections.abc import Callable
from types import ModuleType

from .config import ConfigError, DiffusionConfig, SampleConfig, TrainConfig, load_config
from .diffusion import GaussianDiffusion, convert, gaussian_posterior
from .domain import DataError, Domain, GaussianDomain, available_domains, get_domain
from .export import Pretrained, export_model, load_pretrained
from .guidance import classifier_free_guidance, drop_condition
from .samplers import SAMPLERS, Known, TimeGrid, ddim, ddpm, dpm_solver_pp, sample, sampling_grid
from .schedules import NoiseSchedule

__version__ = "0.1.0"


def import_on_access(package: str) -> Callable[[str], ModuleType]:
    """A module ``__getattr__`` (PEP 562) for ``package`` that imports its submodules when first named, so that
    ``import video; video.sampling.predict(...)`` works without importing every submodule up front."""

    def __getattr__(name: str) -> ModuleType:
        if name.startswith("_") or "." in name or importlib.util.find_spec(f"{package}.{name}") is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return importlib.import_module(f"{package}.{name}")

    return __getattr__


__getattr__ = import_on_access(__name__)

__all__ = [
    "SAMPLERS",
    "ConfigError",
    "DataError",
    "DiffusionConfig",
    "Domain",
    "GaussianDiffusion",
    "GaussianDomain",
    "Known",
    "NoiseSchedule",
    "Pretrained",
    "SampleConfig",
    "TimeGrid",
    "TrainConfig",
    "available_domains",
    "classifier_free_guidance",
    "convert",
    "ddim",
    "ddpm",
    "dpm_solver_pp",
    "drop_condition",
    "export_model",
    "gaussian_posterior",
    "get_domain",
    "load_config",
    "load_pretrained",
    "sample",
    "sampling_grid",
]
