"""Command line for the shared trainer.

    accelerate launch multigen/train.py --domain NAME [--config FILE|NAME] [key.sub=value ...]
    python multigen/train.py --domain NAME ...
    multigen-train --domain NAME ...

``--config tiny`` means ``configs/<domain>/tiny.yaml`` of the source checkout;
without ``--config`` the domain's schema defaults are used (``configs/<domain>/default.yaml``
lists them).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

if __name__ == "__main__" and __package__ in (None, ""):
    # Run as a file: put the checkout root, not multigen/, first on the path.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from multigen.cli import PATH_ERRORS  # noqa: E402
from multigen.config import ConfigError, load_config, read_yaml, to_yaml  # noqa: E402
from multigen.domain import (DataError, Domain, UnknownDomainError, available_domains, domain_spec,  # noqa: E402
                             get_domain, names_domain)

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"


def resolve_config_file(domain: str, config: str | None) -> Path | None:
    """``--config`` as a name under ``configs/<domain>/`` or as a path. A bare name (no folder, no ``.yaml``) is a
    shipped config's first, whatever the current folder holds (``./NAME`` names a file or folder of that name
    there); otherwise a path."""
    if config is None:
        return None
    path, named = Path(config), CONFIG_ROOT / domain / f"{config}.yaml"
    bare = path.suffix not in (".yaml", ".yml") and not any(sep in config for sep in ("/", os.sep))
    if bare and named.is_file():
        if path.exists():
            warnings.warn(f"--config {config}: the shipped {named}, not the {'folder' if path.is_dir() else 'file'} "
                          f"{config!r} here (./{config} names that)", stacklevel=2)
        return named
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    if ":" in domain:  # a module:Class domain has no folder of named configs
        raise ConfigError(f"config {config!r} is not a file (named configs are the checkout's, for its own domains: "
                          f"give {domain}'s config as a path)")
    raise ConfigError(f"config {config!r} is neither a file nor a name in {CONFIG_ROOT / domain}")


def read_config(domain_cls: type[Domain], file: Path | None, overrides: list[str], training: bool = True) -> Any:
    """The run's config: ``domain_cls``'s defaults, ``file`` and ``overrides``. ``file`` may be an export's
    ``config.yaml``, whose first key names its domain (it must be ``domain_cls``'s): to train anew as it was. To be
    ``training`` on it, the run that wrote it must be gone or ``train.output_dir`` given (it would resume it)."""
    raw = read_yaml(file) if file is not None and file.is_file() else None
    if not (isinstance(raw, dict) and "domain" in raw):
        return load_config(domain_cls.config_class, file, overrides)
    if not names_domain(str(raw["domain"]), domain_cls):
        raise ConfigError(f"{file} is the config of a {raw['domain']} export, not of a {domain_spec(domain_cls)} "
                          f"model")
    try:
        cfg = load_config(domain_cls.config_class, None, overrides, values={k: v for k, v in raw.items()
                                                                            if k != "domain"})
    except ConfigError as e:
        raise ConfigError(f"{file}: {e}") from None
    run = Path(cfg.train.output_dir)
    given = any(o.partition("=")[0] == "train.output_dir" for o in overrides)
    if training and not given and run.is_dir() and any(run.iterdir()):
        raise ConfigError(f"{file} is the config of the run in {run}, which is still there: training with it would "
                          f"resume that run and replace its export. Give train.output_dir=<a new folder> to train "
                          f"anew (or that folder itself to go on with it)")
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="multigen-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", required=True, help="domain name (%(prog)s --domain list shows them)")
    parser.add_argument("--config", help="YAML file, or a name under configs/<domain>/ (e.g. tiny)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted config overrides")
    args = parser.parse_intermixed_args(argv)  # overrides before --config too

    if args.domain == "list":
        print("\n".join(available_domains()))
        return 0
    try:
        domain_cls = get_domain(args.domain)
        cfg = read_config(domain_cls, resolve_config_file(args.domain, args.config), args.overrides,
                          training=not args.print_config)
        if args.print_config:
            domain_cls(cfg)  # the domain's own checks of how its settings go together, as a run makes them
    except (ConfigError, UnknownDomainError) as e:
        print(f"multigen-train: error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0

    from multigen.checkpoints import latest_checkpoint
    from multigen.trainer import NonFiniteLossError, train

    handles_signals = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if handles_signals else None
    # what every process meets together (a signal to the launch, the loss they agree is not finite) is told once
    first = os.environ.get("RANK", "0") == "0"
    try:
        train(domain_cls, cfg)
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM: what was saved is complete (checkpoints are renamed into place)
        newest = latest_checkpoint(Path(cfg.train.output_dir) / "checkpoints")
        if first:
            print(f"multigen-train: {'terminated (SIGTERM)' if isinstance(e, Terminated) else 'interrupted'}; "
                  + (f"the same command resumes from {newest}" if newest else "before the first checkpoint"),
                  file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except NonFiniteLossError as e:
        if first:
            print(f"multigen-train: error: {e}", file=sys.stderr)
        return 1
    except (ConfigError, DataError, *PATH_ERRORS) as e:  # a setting, input or folder the run cannot use: named
        print(f"multigen-train: error: {e}", file=sys.stderr)
        return 2
    finally:
        if handles_signals:  # None: a handler installed from C, which Python cannot put back
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, what a cluster's scheduler sends a job before it kills it: raised where the run is, as Ctrl-C is."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


if __name__ == "__main__":
    sys.exit(main())
