"""Typed configuration: dataclass schemas, YAML files and dotted command-line overrides.

A domain's config is a dataclass whose fields are dataclasses (``train``,
``diffusion``, ``model``, ...). :func:`load_config` merges, in order, the schema's
defaults, an optional YAML file and ``key.sub=value`` overrides, then checks every
field's type and its ``choices``/``min``/``unit_interval`` metadata. Any problem raises
:class:`ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar, get_type_hints

import numpy as np
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")
# what OmegaConf.merge raises for a value that does not fit: its own errors, and a bare TypeError for a mapping put
# where a list or tuple is ("Cannot merge incompatible container types")
MERGE_ERRORS = (OmegaConfBaseException, TypeError)


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message names it."""


def choice(default: str, *options: str) -> Any:
    """A string field restricted to ``options``."""
    return field(default=default, metadata={"choices": options})


def at_least(default: float | None, minimum: float) -> Any:
    """A numeric field with a lower bound (None, where the field's type allows it, is not checked; NaN and infinity
    fail)."""
    return field(default=default, metadata={"min": minimum})


def above(default: float | None, bound: float) -> Any:
    """A numeric field strictly above ``bound`` (None, where the field's type allows it, is not checked; NaN and
    infinity fail)."""
    return field(default=default, metadata={"above": bound})


def between(default: float | None, minimum: float, maximum: float) -> Any:
    """A numeric field in ``[minimum, maximum]`` (None, where the field's type allows it, is not checked)."""
    return field(default=default, metadata={"min": minimum, "max": maximum})


def nonempty(default: str) -> Any:
    """A string field that must hold more than blanks (a folder, say: empty would mean the current one)."""
    return field(default=default, metadata={"nonempty": True})


def speed_only(default: bool) -> Any:
    """A switch of how a network runs (its speed or memory) that keeps its weights and outputs (up to rounding): a run
    may resume with it changed."""
    return field(default=default, metadata={"speed_only": True})


def speed_only_keys(cfg: Any, prefix: str = "") -> set[str]:
    """The dotted keys of ``cfg``'s :func:`speed_only` fields."""
    keys: set[str] = set()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys |= speed_only_keys(value, f"{prefix}{f.name}.")
        elif f.metadata.get("speed_only"):
            keys.add(prefix + f.name)
    return keys


def unit_interval(default: tuple[float, float]) -> Any:
    """A ``(lo, hi)`` pair with ``0 <= lo <= hi <= 1``."""
    return field(default=default, metadata={"pair": ("[lo, hi] with 0 <= lo <= hi <= 1",
                                                     lambda lo, hi: 0 <= lo <= hi <= 1)})


def decay_rates(default: tuple[float, float]) -> Any:
    """A pair of rates each in ``[0, 1)`` (Adam's betas)."""
    return field(default=default, metadata={"pair": ("[b1, b2] with each in [0, 1)",
                                                     lambda b1, b2: 0 <= b1 < 1 and 0 <= b2 < 1)})


@dataclass
class TrainConfig:
    """Settings of the shared training loop (:mod:`multigen.trainer`)."""

    output_dir: str = nonempty("runs/default")
    max_steps: int = at_least(1000, 1)
    # > 0: the run ends at the first log step past this many minutes of training (sampling, evaluation, a
    # checkpoint and the export as at max_steps; a learning-rate decay is cut short there); 0: no limit
    max_minutes: float = at_least(0.0, 0.0)
    batch_size: int = at_least(64, 1)  # per process; the effective batch is this x processes x grad_accum
    grad_accum: int = at_least(1, 1)
    lr: float = at_least(1e-3, 0.0)
    weight_decay: float = at_least(0.0, 0.0)
    adam_betas: tuple[float, float] = decay_rates((0.9, 0.999))
    # muon: the network's hidden weight matrices (its nn.Linear weights and convolution kernels but the last
    # layer's) take Muon steps (multigen.optim, at the same lr and weight decay), every other parameter AdamW's
    optimizer: str = choice("adamw", "adamw", "muon")
    # muon: the learning rate of the parameters AdamW steps beside it (embeddings, the output layer, biases,
    # position tables) is lr times this (AdamW alone: every parameter at lr, this unused)
    adamw_lr_scale: float = at_least(1.0, 0.0)
    warmup_steps: int = at_least(0, 0)
    lr_decay: str = choice("none", "none", "cosine", "linear")  # after warmup: constant, or down to 0 at max_steps
    lr_decay_steps: int = at_least(0, 0)  # the decay spans the last this many steps (constant before); 0: all
    grad_clip: float = at_least(1.0, 0.0)  # 0 disables clipping
    ema_decay: float = between(0.999, 0.0, 1.0)
    mixed_precision: str = choice("no", "no", "fp16", "bf16")
    compile: bool = False  # torch.compile the network for training (checkpoints and exports keep plain keys)
    seed: int = 0
    cpu: bool = False  # force the CPU even when a GPU is present
    cpu_threads: int = at_least(0, 0)  # torch threads per process on a CPU; 0: the cores / local processes
    # minutes a process waits for the others (they wait while the main process samples and evaluates alone)
    process_timeout_min: int = at_least(60, 1)
    num_workers: int = at_least(0, 0)
    log_every: int = at_least(50, 1)
    sample_every: int = at_least(500, 0)  # 0: only at the end
    eval_every: int = at_least(0, 0)  # 0: only at the end
    checkpoint_every: int = at_least(500, 0)  # 0: never
    keep_checkpoints: int = at_least(2, 1)
    resume: bool = True  # continue from the latest complete checkpoint in output_dir
    tensorboard: bool = True


@dataclass
class DiffusionConfig:
    """Gaussian diffusion settings (:mod:`multigen.schedules`, :mod:`multigen.diffusion`)."""

    schedule: str = choice("cosine", "linear", "cosine", "sigmoid")
    timesteps: int = at_least(1000, 1)
    # The schedule's every parameter is recorded here, so an export rebuilds exactly the schedule it was
    # trained with even if a code default changes (multigen.schedules.NoiseSchedule has the same fields).
    beta_start: float = 1e-4  # linear
    beta_end: float = 0.02  # linear; must bring alpha_bar_T near 0 at the chosen timesteps
    cosine_s: float = 0.008  # cosine
    sigmoid_start: float = -3.0  # sigmoid
    sigmoid_end: float = 3.0
    sigmoid_tau: float = 1.0
    max_beta: float = 0.999  # upper clip of discrete betas
    parameterization: str = choice("v", "eps", "x0", "v")  # v stays well-conditioned where alpha -> 0
    loss_weighting: str = choice("uniform", "uniform", "snr", "min_snr")
    min_snr_gamma: float = above(5.0, 0.0)
    time_sampling: str = choice("uniform", "uniform", "stratified")  # training steps: independent or one per stratum
    clip_x0: float | None = above(None, 0.0)  # the largest |x0| the denoiser returns; None: no clipping


@dataclass
class SampleConfig:
    """Sampling settings used during training and by the command-line tools."""

    sampler: str = choice("dpm_solver_pp", "ddpm", "ddim", "dpm_solver_pp")
    steps: int = at_least(25, 1)
    spacing: str = choice("auto", "auto", "time", "log_snr", "karras")  # spread of the steps; auto: per sampler
    eta: float = between(0.0, 0.0, 1.0)  # DDIM's: 0 deterministic, 1 as ancestral DDPM
    # ddpm with a known part (completion, prediction): take every step this many times (RePaint's resampling);
    # unconditional sampling ignores it, other samplers refuse it
    resample: int = at_least(1, 1)
    # classifier-free guidance scale on the condition, for domains whose network has one (video: the observed
    # frames; class-conditional point clouds: the class); 1 is the conditional model itself, another value is an
    # error elsewhere
    guidance: float = at_least(1.0, 0.0)
    # guide only at diffusion times t in [lo, hi] (t = 1 is pure noise) and sample the conditional model alone at
    # the others (Kynkaanniemi et al., 2024); [0, 1] guides every step
    guidance_interval: tuple[float, float] = unit_interval((0.0, 1.0))
    # scales the starting noise and every noise a sampler draws for the generated part: 1 samples the model's
    # distribution, lower trades diversity for samples nearer the conditional mean (0: one central sample)
    temperature: float = at_least(1.0, 0.0)
    # the temperature of samples with nothing observed (None: `temperature`): a temperature tuned for prediction
    # or completion, where the observed part pins the sample down, collapses unconditional samples to one mean
    unconditional_temperature: float | None = at_least(None, 0.0)
    num: int = at_least(16, 1)  # samples drawn at every sample_every
    seed: int = 1234

    def sampler_arguments(self, observed: bool = True) -> dict[str, Any]:
        """The keyword arguments of :func:`multigen.samplers.sample` that these settings hold, for a sample with an
        ``observed`` part or, if not, an unconditional one (its temperature ``unconditional_temperature``)."""
        args = {name: getattr(self, name) for name in ("sampler", "steps", "spacing", "eta", "resample", "temperature")}
        if not observed and self.unconditional_temperature is not None:
            args["temperature"] = self.unconditional_temperature
        return args


def validate(obj: Any, prefix: str = "") -> None:
    """Check every field's ``choices``/``min``/``above``/``max``/``nonempty``/``pair`` metadata, recursively;
    :class:`ConfigError` names the key."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            validate(value, key + ".")
            continue
        options = f.metadata.get("choices")
        if options is not None and value not in options:
            raise ConfigError(f"{key}: must be one of {list(options)}, got {value!r}")
        minimum, maximum = f.metadata.get("min"), f.metadata.get("max")
        bound = f.metadata.get("above")
        if minimum is not None and value is not None and not value >= minimum:  # NaN fails too
            raise ConfigError(f"{key}: must be >= {minimum}, got {value!r}")
        if bound is not None and value is not None and not value > bound:
            raise ConfigError(f"{key}: must be > {bound}, got {value!r}")
        if maximum is not None and value is not None and value > maximum:
            raise ConfigError(f"{key}: must be <= {maximum}, got {value!r}")
        if (minimum, bound) != (None, None) and value == math.inf:
            raise ConfigError(f"{key}: must be finite, got {value!r}")
        if f.metadata.get("nonempty") and not value.strip():
            raise ConfigError(f"{key}: must not be empty, got {value!r}")
        if (pair := f.metadata.get("pair")) and not _is_pair(value, pair[1]):
            raise ConfigError(f"{key}: must be {pair[0]}, got {value!r}")


def _is_pair(value: Any, check: Callable[[float, float], bool]) -> bool:
    """Whether ``value`` is two real numbers that pass ``check``."""
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) and check(*value))


def _key_owner(schema: type, dotted: str) -> tuple[Any, str]:
    """The config dataclass holding the key ``dotted`` (``"data.categories"``) of ``schema`` (None where no section
    of that name is one) and the key's last part."""
    cls: Any = schema
    *parents, leaf = dotted.split(".")
    for part in parents:
        cls = get_type_hints(cls).get(part) if dataclasses.is_dataclass(cls) else None
    return (cls if dataclasses.is_dataclass(cls) else None), leaf


def _text_kind(schema: type, dotted: str) -> str | None:
    """``"str"`` or ``"list"`` where ``dotted`` (``"data.categories"``) names a plain ``str`` or ``list[str]`` field of
    ``schema``, else None."""
    cls, leaf = _key_owner(schema, dotted)
    hint = get_type_hints(cls).get(leaf) if cls else None
    return "str" if hint is str else "list" if hint == list[str] else None


def _unfit(schema: type, dotted: str, value: Any, e: Exception) -> ConfigError:
    """The error for ``value``, which OmegaConf could not put at the key ``dotted`` of ``schema``: a pair's own
    wording where the key is one (OmegaConf's names neither the length wanted nor the value, or prints a template),
    else OmegaConf's first line."""
    cls, leaf = _key_owner(schema, dotted)
    pair = next((f.metadata.get("pair") for f in dataclasses.fields(cls) if f.name == leaf), None) if cls else None
    return ConfigError(f"{dotted}: must be {pair[0]}, got {value!r}" if pair else
                       f"{dotted}: {_omegaconf_message(e)}")


def _at(data: Any, dotted: str) -> Any:
    """The value at ``dotted`` (``"train.adam_betas"``) in the nested mappings ``data``; None where there is none."""
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, Mapping) else None
    return data


def _as_typed(schema: type, loaded: Any, raw: Any, prefix: str = "") -> None:
    """Put into ``loaded`` (a YAML file's mapping) the text of its ``str`` and ``list[str]`` values as they were typed,
    from ``raw`` (the same file read with every scalar a string): YAML 1.1 would read ``03001627`` (a ShapeNet synset)
    as the octal number 787351 and ``no`` as false."""
    if not isinstance(loaded, dict) or not isinstance(raw, dict):
        return
    for key, value in loaded.items():
        dotted, typed = f"{prefix}{key}", raw.get(key)
        kind = _text_kind(schema, dotted)
        if kind == "str" and value is not None and isinstance(typed, str):
            loaded[key] = typed
        elif kind == "list" and isinstance(value, list) and None not in value and isinstance(typed, list):
            loaded[key] = typed
        elif isinstance(value, dict):
            _as_typed(schema, value, typed, dotted + ".")


def _omegaconf_message(e: Exception) -> str:
    return first_line(getattr(e, "msg", None) or e)


def _merge(schema: type, merged: Any, data: Mapping[str, Any]) -> Any:
    """``data`` (a config file's sections and keys) merged into ``merged`` (of ``schema``); a :class:`ConfigError`
    naming the dotted key of a value that does not fit (OmegaConf's own message names none for some, such as a
    tuple's length or a section given as one value)."""
    try:
        return OmegaConf.merge(merged, data)
    except MERGE_ERRORS as e:
        if key := getattr(e, "full_key", None):
            raise _unfit(schema, key, _at(data, key), e) from None
        for section, keys in data.items():  # find the value at fault, one at a time
            if section in merged and OmegaConf.is_dict(merged[section]):  # (a list-valued key is no section)
                if not isinstance(keys, Mapping):
                    raise ConfigError(f"{section}: a section of keys, got {keys!r}") from None
                parts = {f"{section}.{key}": {section: {key: value}} for key, value in keys.items()}
            else:
                parts = {section: {section: keys}}
            for dotted, part in parts.items():
                try:
                    OmegaConf.merge(merged, part)
                except MERGE_ERRORS as inner:
                    raise _unfit(schema, dotted, _at(part, dotted), inner) from None
        raise ConfigError(_omegaconf_message(e)) from None


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of ``error``'s message (at most ``limit`` characters), or its type's name when it has none:
    what a one-line error quotes of the error it replaces."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__


def read_yaml(path: Path) -> Any:
    """The contents of the YAML file ``path`` (OmegaConf's reading, as plain containers); a file that is not valid
    YAML (a tab, an unclosed bracket, bytes that are not UTF-8) is a :class:`ConfigError` naming it and the place."""
    try:
        return OmegaConf.to_container(OmegaConf.load(path))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())[:300]}") from None


def load_config(
    schema: type[T],
    file: str | Path | None = None,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
) -> T:
    """Build a validated ``schema`` instance from defaults, a YAML ``file``, ``values`` and ``overrides``.

    Raises:
        ConfigError: a missing file, an unknown key, a wrong type or value, or a
            malformed override; the message names the file or the dotted key.
        TypeError: ``schema`` is not a config dataclass (a domain's is ``get_domain(name).config_class``).
    """
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        raise TypeError(f"load_config: schema must be a config dataclass such as "
                        f"get_domain({schema!r}).config_class, got {schema!r}" if isinstance(schema, str) else
                        f"load_config: schema must be a config dataclass, got {schema!r}")
    try:
        merged = OmegaConf.structured(schema)
        if file is not None:
            path = Path(file)
            if path.is_dir():
                inside = path / "config.yaml"
                raise ConfigError(f"{path} is a folder, not a config file" + (f": give {inside}" if inside.is_file()
                                                                               else ""))
            if not path.is_file():
                raise ConfigError(f"config file not found: {path}")
            loaded, raw = read_yaml(path), yaml.load(path.read_text(), Loader=yaml.BaseLoader)
            if not isinstance(loaded, Mapping) and loaded is not None:
                raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
            _as_typed(schema, loaded, raw)
            try:
                merged = _merge(schema, merged, loaded or {})
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
        if values:
            merged = _merge(schema, merged, dict(values))
        for item in overrides:
            if "=" not in item or item.startswith("="):
                raise ConfigError(f"override {item!r} is not of the form key.sub=value")
            key, _, text = item.partition("=")
            kind = _text_kind(schema, key)
            try:
                parsed = OmegaConf.from_dotlist([item])
            except yaml.YAMLError as e:  # `*_labelIds.png` reads as a YAML alias: a string field takes it as typed
                if kind != "str":
                    raise ConfigError(f"{key}: {text!r} is not a YAML value ({first_line(e)})") from None
                parsed = None
            # a string field takes `no`, `1e-3` as typed, not as YAML's false, 0.001; a list of strings its items
            # (`[03001627]` is a synset, not the octal 787351)
            typed: Any = text if kind == "str" else yaml.load(text, Loader=yaml.BaseLoader) if kind == "list" else None
            if (kind == "str" and (parsed is None or not isinstance(OmegaConf.select(parsed, key), str))
                    or isinstance(typed, list)):
                for part in reversed(key.split(".")):
                    typed = {part: typed}
                parsed = OmegaConf.create(typed)
            try:
                merged = OmegaConf.merge(merged, parsed)
            except MERGE_ERRORS as e:  # some (a tuple's length, say) do not name the key themselves
                raise _unfit(schema, key, _at(OmegaConf.to_container(parsed), key), e) from None
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{key}: {_omegaconf_message(e)}" if key else _omegaconf_message(e)) from None
    validate(cfg)
    return cfg  # type: ignore[return-value]


def replaced(obj: T, values: Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> T:
    """A copy of the config object ``obj`` (a section such as ``cfg.sample``, or a whole config) with ``values``
    and ``overrides`` applied, checked as :func:`load_config` checks a file (types too: ``steps=2.5`` is an error,
    ``temperature=1`` is 1.0); NumPy and 0-dim tensor scalars among ``values`` count as the Python numbers they
    hold."""
    plain = {k: v.item() if isinstance(v, np.generic) or getattr(v, "ndim", None) == 0 else v
             for k, v in (values or {}).items()}
    return load_config(type(obj), values={**dataclasses.asdict(obj), **plain}, overrides=overrides)


def to_yaml(cfg: Any) -> str:
    """The config as YAML text (loadable again with :func:`load_config`)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def flatten(cfg: Any) -> dict[str, Any]:
    """``{"train.lr": 0.001, ...}`` with scalar values, e.g. for experiment trackers."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, Mapping):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)

    walk(OmegaConf.to_container(OmegaConf.structured(cfg)), "")
    return out
