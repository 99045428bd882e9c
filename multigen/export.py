"""Exported models: EMA weights as safetensors plus the resolved config, loadable without training code."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from .config import ConfigError, first_line, load_config, read_yaml, to_yaml
from .domain import Domain, UnknownDomainError, domain_spec, get_domain, names_domain

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished directory ``tmp`` to ``final``, replacing any previous one."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _mismatch(expected: dict[str, torch.Size], got: dict[str, torch.Size]) -> str:
    """What differs between two ``name -> shape`` maps, in words ('' when nothing does)."""
    parts = [f"{what} {names[:5]}{' ...' if len(names) > 5 else ''}" for what, names in (
        ("missing", sorted(expected.keys() - got.keys())),
        ("unexpected", sorted(got.keys() - expected.keys())),
        ("of other shapes", [f"{k}: {tuple(got[k])} for {tuple(expected[k])}"
                             for k in sorted(expected.keys() & got.keys()) if expected[k] != got[k]]),
    ) if names]
    return "; ".join(parts)


def _shapes(model: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


def config_text(domain: Domain) -> str:
    """``domain``'s config as YAML under a first key ``domain:`` naming it (:func:`~multigen.domain.domain_spec`):
    what an export's and a run's ``config.yaml`` hold."""
    return f"domain: {domain_spec(type(domain))}\n" + to_yaml(domain.cfg)


def export_model(model: nn.Module, domain: Domain, out_dir: str | Path) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/config.yaml`` (written aside, then renamed).

    Raises ``ValueError`` when ``model`` is not the network ``domain``'s config builds (the export would not load).
    """
    with torch.random.fork_rng(devices=[]):  # building the reference draws initial weights: leave the RNG as it was
        mismatch = _mismatch(_shapes(domain.build_model()), _shapes(model))
    if mismatch:
        raise ValueError(f"the model is not the one its {domain.name} config builds, so an export of it would not "
                         f"load: {mismatch}")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / WEIGHTS))
    (tmp / CONFIG).write_text(config_text(domain))
    replace_dir(tmp, out_dir)
    return out_dir


@dataclass
class Pretrained:
    """A model loaded from an export, with the domain object that knows how to use it."""

    model: nn.Module
    domain: Domain

    @property
    def config(self) -> Any:
        return self.domain.cfg

    def sample(self, n: int, **kwargs: Any) -> Tensor:
        """``n`` samples; keyword arguments go to the domain's ``sample``."""
        return self.domain.sample(self.model, n, **kwargs)


MOVED_KEYS = {("task", "guidance"): ("sample", "guidance")}
"""Config keys that moved since exports were first written (old place -> new place), so old exports load."""


EARLIER_DEFAULTS = {("video", "model", "reference"): "nearest", ("pointcloud", "model", "class_conditional"): False,
                    ("discrete", "model", "mlp"): "gelu", ("discrete", "model", "rotary"): False,
                    ("video", "sample", "guidance"): 1.0,
                    ("video", "sample", "guidance_interval"): [0.0, 1.0],
                    ("video", "sample", "unconditional_temperature"): None, ("discrete", "sample", "remask"): 0.0}
"""Keys whose default changed since exports were first written ``(domain, section, key) -> earlier default``: an
export without the key was trained before it existed, with the earlier value, not with today's default."""


def _fill_earlier_defaults(domain: str, raw: dict) -> None:
    for (name, section, key), value in EARLIER_DEFAULTS.items():
        if name == domain:
            raw.setdefault(section, {}).setdefault(key, value)


def _move_renamed_keys(raw: dict) -> None:
    for (old_section, old_key), (new_section, new_key) in MOVED_KEYS.items():
        section = raw.get(old_section)
        if isinstance(section, dict) and old_key in section:
            raw.setdefault(new_section, {}).setdefault(new_key, section.pop(old_key))


def load_pretrained(path: str | Path, device: str | torch.device = "cpu",
                    domain: str | type[Domain] | None = None) -> Pretrained:
    """Load an export directory written by :func:`export_model` (or the trainer) onto ``device``, in eval mode;
    with ``domain`` (``"video"``...), an export of another domain (neither that class nor a subclass of it, however
    the export names it) raises a ``ValueError`` naming both. ``domain`` may be the class itself: that also loads the
    export of a domain class that no import reaches (defined in a script run as ``__main__`` or in a function)."""
    path = Path(path)
    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} not found: {path} is not a multigen export directory")
    raw = read_yaml(path / CONFIG)
    if not isinstance(raw, dict) or "domain" not in raw:
        raise ValueError(f"{path / CONFIG} has no 'domain' key")
    _move_renamed_keys(raw)
    name = raw.pop("domain")
    asked = get_domain(domain) if isinstance(domain, str) else domain  # a name, or the class itself
    # the class itself, given for an export that names it as module:Class: a copy of it in a script run as __main__
    copied = (isinstance(domain, type) and asked.__module__ == "__main__" and ":" in str(name)
              and str(name).partition(":")[2] == asked.__qualname__)
    try:
        domain_cls = asked if asked is not None and (copied or names_domain(str(name), asked)) else get_domain(name)
    except UnknownDomainError as e:
        if asked is None:
            raise UnknownDomainError(f"{e} (an export of a domain class defined in a script or a function loads "
                                     f"with load_pretrained(path, domain=TheClass))") from None
        # not installed here: the class given itself where the export has its bare name (no import reaches such a
        # class), else certainly not the asked domain
        domain_cls = asked if isinstance(domain, type) and name == asked.name else None
    if asked is not None and not (domain_cls and issubclass(domain_cls, asked)):
        wanted = domain if isinstance(domain, str) else domain_spec(domain)
        raise ValueError(f"{path} holds a {name} model, not a {wanted} model")
    _fill_earlier_defaults(name, raw)
    try:
        built = domain_cls(load_config(domain_cls.config_class, values=raw))
    except ConfigError as e:
        raise ConfigError(f"{path / CONFIG}: {e}") from None
    except ValueError as e:  # the domain's own checks of how its settings go together
        raise ValueError(f"{path / CONFIG}: {e}") from None
    model = built.build_model()
    try:
        with safe_open(path / WEIGHTS, "pt") as f:
            mismatch = _mismatch(_shapes(model), {k: torch.Size(f.get_slice(k).get_shape()) for k in f.keys()})
    except SafetensorError as e:  # a file cut short, or not safetensors at all
        raise ValueError(f"{path / WEIGHTS} is not a readable safetensors file ({first_line(e)})") from None
    if mismatch:
        raise ValueError(f"{path / WEIGHTS} does not match the model its {CONFIG} builds: {mismatch}")
    load_model(model, str(path / WEIGHTS))
    # a damaged file can still parse: NaN weights give NaN samples, or a discrete model's argmax class 0 everywhere
    if bad := [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]:
        raise ValueError(f"{path / WEIGHTS} holds NaN or infinite weights ({', '.join(bad[:3])}"
                         f"{', ...' if len(bad) > 3 else ''}): a damaged export, or one of a run that diverged")
    return Pretrained(model.to(device).eval(), built)
