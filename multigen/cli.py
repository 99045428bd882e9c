"""What the domains' command lines (``multigen-video``, ``multigen-pointcloud``, ``multigen-discrete``) share:
the options naming an export and its sampler, loading that export, the seeded generator, and turning errors into
one line."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .export import Pretrained, load_pretrained
from .samplers import SAMPLERS

# errors a path given on the command line causes (missing, a file where a folder should be, no permission): one line
PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """``--checkpoint`` (an export directory) and ``--device`` (default: cuda when present, else cpu)."""
    p.add_argument("--checkpoint", required=True, help="export directory (model.safetensors + config.yaml)")
    p.add_argument("--device", type=available_device, default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where to run (default: %(default)s, cuda when present)")


def load_export(args: argparse.Namespace, domain: str) -> Pretrained:
    """The export of :func:`add_export_arguments`' ``--checkpoint`` on ``--device``; an error unless it holds a
    ``domain`` model."""
    return load_pretrained(args.checkpoint, args.device, domain=domain)


def available_device(text: str) -> str:
    """An argparse ``type``: a torch device this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``...)."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:1, mps...)") from None
    if device.type != "cpu" and not (torch.accelerator.is_available()
                                     and torch.accelerator.current_accelerator().type == device.type):
        raise argparse.ArgumentTypeError(f"{text}: this machine has no {device.type} device (use cpu)")
    return text


def add_sampler_arguments(p: argparse.ArgumentParser, guidance_help: str) -> None:
    """``--sampler``, ``--steps``, ``--guidance`` (described by ``guidance_help``), ``--guidance-interval`` and
    ``--seed``; every one but the seed defaults to the model's config (``None`` here)."""
    p.add_argument("--sampler", choices=sorted(SAMPLERS), help="default: the model's config")
    p.add_argument("--steps", type=int, help="sampler steps (default: the model's config)")
    p.add_argument("--guidance", type=float, help=guidance_help)
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LO", "HI"),
                   help="guide only at diffusion times t in [LO, HI], 1 being pure noise (default: the model's)")
    p.add_argument("--seed", type=int, default=0)


def positive_int(text: str) -> int:
    """An argparse ``type``: an integer >= 1 (argparse reports anything else as a bad value of its option)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite number > 0."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def diffusion_time(text: str) -> float:
    """An argparse ``type``: a diffusion time in ``(0, 1]``."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return value


def output_folder(path: str | Path) -> Path:
    """``path`` as a folder that exists (made now, before the work that fills it), else a ``ValueError`` naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot make the output folder {path}: {e.strerror or e}") from None
    return path


def seeded_generator(args: argparse.Namespace) -> torch.Generator:
    """A generator on ``args.device`` seeded with ``args.seed``."""
    return torch.Generator(device=args.device).manual_seed(args.seed)


def run_command(args: argparse.Namespace, prog: str) -> int:
    """Run ``args.func(args)``: a returned path is printed as ``wrote PATH``; one of :data:`PATH_ERRORS` (a
    missing file, a folder that cannot be written) or a ``ValueError`` (the domains' input errors are ones) is
    printed as ``PROG: error: ...`` and returns 2, argparse's code for a bad command line."""
    func: Callable[[argparse.Namespace], Any] = args.func
    try:
        result = func(args)
    except (*PATH_ERRORS, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if isinstance(result, Path):
        print(f"wrote {result}")
    return 0
