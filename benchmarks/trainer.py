"""Optimisation steps per second through the shared trainer: ``Trainer.step()`` of a domain config, timed after
warm-up steps with the periodic work (logging, sampling, checkpoints) left out, so the figure is the step itself:
data loading, forward, backward, clipping, the config's optimiser (``train.optimizer``), EMA and the on-device
non-finite check, with no host sync.

    python benchmarks/trainer.py --runs video:default discrete:default [--steps 300] [--override KEY=VALUE ...]
    python benchmarks/trainer.py --runs toy2d:tiny --steps 200          # a CPU check in seconds

``--override`` applies to every run (e.g. ``train.mixed_precision=bf16 train.compile=true``). Prints a table and
writes ``benchmarks/out/trainer.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from accelerate.state import AcceleratorState, GradientState

REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

from multigen.benchmarking import json_path, markdown_table, write_results  # noqa: E402
from multigen.cli import positive_int  # noqa: E402
from multigen.config import load_config  # noqa: E402
from multigen.domain import UnknownDomainError, get_domain  # noqa: E402
from multigen.trainer import Trainer  # noqa: E402


def config_file(domain: str, config: str) -> Path:
    """The shipped config ``configs/<domain>/<config>.yaml`` that a run of ``--runs`` names."""
    return REPO / "configs" / domain / f"{config}.yaml"


def steps_per_second(domain: str, config: str, overrides: list[str], steps: int, warmup: int) -> dict:
    """Steps/s of ``Trainer.step`` for ``configs/<domain>/<config>.yaml`` with ``overrides`` (fresh output dir)."""
    AcceleratorState._reset_state(True)  # one Accelerator per run in this process
    GradientState._reset_state()
    domain_cls = get_domain(domain)
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(domain_cls.config_class, config_file(domain, config), [
            *overrides, f"train.output_dir={out}", "train.tensorboard=false", "train.checkpoint_every=0",
            f"train.max_steps={warmup + steps}"])
        trainer = Trainer(domain_cls, cfg)
        trainer.resume()
        for _ in range(warmup):
            trainer.step()
        sync = torch.cuda.synchronize if trainer.accelerator.device.type == "cuda" else lambda: None
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            loss = trainer.step()
        sync()
        seconds = time.perf_counter() - start
        trainer.check_finite()
        t = cfg.train
        return {"domain": domain, "config": config, "device": str(trainer.accelerator.device),
                "batch": t.batch_size * t.grad_accum, "optimizer": t.optimizer, "mixed_precision": t.mixed_precision,
                "compile": t.compile,
                "steps": steps, "steps_per_s": steps / seconds, "ms_per_step": 1e3 * seconds / steps,
                "final_loss": loss.item()}


def domain_and_config(text: str) -> tuple[str, str]:
    """``"video:default"`` as ``("video", "default")``: an argparse ``type`` for ``--runs``."""
    domain, colon, config = text.partition(":")
    if not (domain and colon and config) or ":" in config:
        raise argparse.ArgumentTypeError(f"{text!r} is not DOMAIN:CONFIG (video:default, toy2d:tiny...)")
    return domain, config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", type=domain_and_config,
                        default=[("video", "default"), ("discrete", "default")],
                        help="DOMAIN:CONFIG pairs (configs/<domain>/<config>.yaml; default video:default "
                             "discrete:default)")
    parser.add_argument("--steps", type=positive_int, default=300, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (allocation, compilation)")
    parser.add_argument("--override", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run (e.g. train.mixed_precision=bf16)")
    parser.add_argument("--out", type=json_path, default="benchmarks/out/trainer.json")
    args = parser.parse_args()
    if args.warmup < 0:
        parser.error(f"--warmup: steps >= 0, got {args.warmup}")
    for domain, config in args.runs:  # every run's domain and config there before the first is timed
        try:
            get_domain(domain)
        except UnknownDomainError as e:
            parser.error(f"--runs {domain}:{config}: {e}")
        if not config_file(domain, config).is_file():
            parser.error(f"--runs {domain}:{config}: no configs/{domain}/{config}.yaml")
    rows = [steps_per_second(*run, args.override, args.steps, args.warmup) for run in args.runs]
    print(markdown_table([{"run": f"{r['domain']}:{r['config']}", "device": r["device"], "batch": r["batch"],
                           "optimizer": r["optimizer"], "precision": r["mixed_precision"], "compile": r["compile"],
                           "steps/s": f"{r['steps_per_s']:.1f}", "ms/step": f"{r['ms_per_step']:.2f}"} for r in rows]))
    write_results(args.out, {"overrides": args.override, "rows": rows})


if __name__ == "__main__":
    main()
