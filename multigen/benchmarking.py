"""Timing, memory and result files shared by the scripts in ``benchmarks/``.

CPU memory is the process's peak resident set size (run each measurement in its own
process when it must be its own); CUDA memory is the allocator's peak.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str = "cpu", repeats: int = 5, warmup: int = 1) -> float:
    """Mean seconds per call of ``fn`` over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def matmul_tflops(device: str, n: int = 8192, dtype: torch.dtype = torch.bfloat16, repeats: int = 10) -> float:
    """TFLOP/s of an ``n x n`` by ``n x n`` matrix product in ``dtype`` (``2 n^3`` FLOPs, random data, 3 warm-ups):
    the practical peak that model FLOPs utilisation is measured against (about 790 in bf16 on an H200)."""
    g = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, generator=g, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / timed(lambda: a @ b, device, repeats=repeats, warmup=3) / 1e12


def peak_memory(device: str) -> int:
    """Peak bytes: the CUDA allocator's since its last reset, or this process's peak RSS on the CPU."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_train_steps(loss_fn: Callable[[], torch.Tensor], params, device: str, dtype: torch.dtype | None,
                     steps: int) -> tuple[float, int]:
    """Seconds per AdamW step of ``loss_fn`` (autocast to ``dtype`` when given; 2 warm-up steps) and peak bytes."""
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return timed(step, device, repeats=steps, warmup=0), peak_memory(device)


def quality_by_sampler(export: str | Path, device: str, settings: list[tuple[str, int]],
                       temperatures: Sequence[float] = (1.0,), domain: type | None = None,
                       **eval_settings: Any) -> list[dict]:
    """The domain's held-out ``evaluate`` of the model in ``export`` for each ``(sampler, steps)`` and
    sampling temperature, with ``eval_settings`` overriding counts of its ``eval`` config (e.g. ``num_clips=8``;
    at most the held-out set's size, the count each row records). Every setting is checked first: a bad one exits
    naming it before any evaluation. With ``domain`` (a domain class), an export of another domain exits naming it
    (:func:`load_export_of`)."""
    from .export import load_pretrained

    p = load_pretrained(export, device=device) if domain is None else load_export_of(domain, export, device)
    val = p.domain.build_dataset("val")
    counts = {key: min(value, len(val)) for key, value in eval_settings.items()}  # what is evaluated
    for key, value in counts.items():
        setattr(p.domain.cfg.eval, key, value)
    chosen = []
    for (sampler, steps), temperature in itertools.product(settings, temperatures):
        try:  # every setting checked, as a user's call, before the first evaluation
            chosen.append(p.domain.sample_settings(sampler=sampler, steps=steps, temperature=temperature))
        except ValueError as e:
            raise SystemExit(f"{sampler}:{steps} at temperature {temperature}: {e}") from None
    rows = []
    for setting in chosen:
        p.domain.cfg.sample = setting
        start = time.perf_counter()
        with torch.no_grad():
            metrics = p.domain.evaluate(p.model, val)
        rows.append({"sampler": setting.sampler, "steps": setting.steps, "temperature": setting.temperature,
                     **counts, "seconds": time.perf_counter() - start, **metrics})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def load_export_of(domain_class: type, path: str | Path, device: str) -> Any:
    """The export at ``path`` (:func:`~multigen.export.load_pretrained`, in eval mode); an export of another domain
    than ``domain_class``'s, or an unreadable one, exits naming it."""
    from .export import load_pretrained

    try:
        return load_pretrained(path, device, domain=domain_class.name)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"{e}") from None


def override_sample_settings(domain: Any, overrides: Sequence[str]) -> None:
    """Replace ``domain.cfg.sample`` by itself with ``overrides`` (``"steps=100"``, ``"guidance=2"``) applied and
    validated, each and together as the domain's sampling checks them (:meth:`sample_settings`: ``resample`` with
    another sampler than ddpm, more steps than the schedule's); a bad one exits naming it (``--sample``, the
    scripts' option for them)."""
    from .config import replaced

    try:
        domain.cfg.sample = replaced(domain.cfg.sample, overrides=list(overrides))
        domain.sample_settings()
    except ValueError as e:  # a ConfigError too
        raise SystemExit(f"--sample: {e}") from None


def sampler_setting(text: str) -> tuple[str, int]:
    """``"ddim:50"`` as ``("ddim", 50)``: an argparse ``type`` for choosing sampler settings."""
    from .samplers import SAMPLERS

    name, _, steps = text.partition(":")
    if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not SAMPLER:STEPS with SAMPLER one of {sorted(SAMPLERS)}")
    return name, int(steps)


def json_path(text: str) -> Path:
    """An argparse ``type`` for ``--out``: the path of a ``.json`` file that can be written (not a folder, no file
    on its way, a writable folder), checked before the work that fills it."""
    path = Path(text)
    if path.suffix.lower() != ".json":
        raise argparse.ArgumentTypeError(f"{text}: name a .json file")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder")
    folder = next(parent for parent in path.parents if parent.exists())  # the nearest one there
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {folder} is a file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: cannot write into {folder}")
    return path


def beside(path: Path, part: str) -> Path:
    """The result file of a script's ``part`` next to its ``--out``: ``out/video.json`` -> ``out/video_part.json``."""
    return path.with_name(f"{path.stem}_{part}{path.suffix}")


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float as None (JSON's null: strict parsers refuse ``NaN`` and ``Infinity``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def table_cell(value: Any) -> str:
    """``value`` as one markdown table cell: a float to 4 significant digits, a dict as ``key value`` pairs, ``None``
    empty; a ``|`` (which would split the cell) becomes ``/`` and a newline a space."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {table_cell(v)}" for k, v in value.items())
    return str(value).replace("|", "/").replace("\n", " ")


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """``rows`` as a markdown table (no trailing newline): one column per name in ``columns`` (default: every key of
    the rows, in the order they first appear), the column names as its header; a row's missing key is an empty
    cell, and each value and name goes through :func:`table_cell` (format a number before to show it otherwise)."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    if not rows or not columns:
        return "(no rows)"
    lines = ["| " + " | ".join(table_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(table_cell(r.get(c)) for c in columns) + " |" for r in rows])


def write_results(path: str | Path, results: dict) -> Path:
    """``results`` as strict JSON at ``path`` (a NaN or infinity as null), with the date, torch version, thread
    count, the machine's GPU (None: none) and command line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
              "threads": torch.get_num_threads(),
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "command": " ".join(["python", *sys.argv])}
    path.write_text(json.dumps(_json_safe({**header, **results}), indent=2, allow_nan=False))
    print(f"wrote {path}")
    return path
