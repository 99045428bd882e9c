"""Sampler accuracy against the number of function evaluations, with the exact denoiser of a mixture.

Data: the 1-D mixture 0.3 N(-1, 0.05) + 0.7 N(1, 0.05) (two sharp, unequal modes),
cosine schedule with T = 1000. Every sampler calls the denoiser once per step, so
NFE = steps. Error: the Kolmogorov distance (max |CDF difference|) to the data.
Deterministic samplers are scored exactly, without sampling noise, by pushing a fine
grid of x_T through the (monotone) map; stochastic ones from ``--num`` samples, whose
own sampling floor (~0.87/sqrt(num)) is printed alongside.

    python benchmarks/samplers.py [--num 20000] [--schedule cosine|linear] [--out benchmarks/out/samplers.json]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from multigen.benchmarking import json_path, markdown_table, write_results
from multigen.cli import positive_int
from multigen.samplers import DEFAULT_SPACING, ddim, ddpm, dpm_solver_pp, sampling_grid
from multigen.schedules import NoiseSchedule
from multigen.testing import gaussian_mixture_denoiser

WEIGHTS = torch.tensor([0.3, 0.7], dtype=torch.float64)
MEANS = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
VAR = 0.05


def data_cdf(x: torch.Tensor) -> torch.Tensor:
    return sum(WEIGHTS[k] * 0.5 * (1 + torch.erf((x - MEANS[k, 0]) / math.sqrt(2 * VAR))) for k in range(2))


def exact_error(sampler, denoiser, grid) -> float:
    """Kolmogorov distance of a deterministic sampler's output distribution, via its monotone map."""
    z = torch.linspace(-5, 5, 20001, dtype=torch.float64)[:, None]
    x = sampler(denoiser, z, grid)[:, 0]
    phi = 0.5 * (1 + torch.erf(z[:, 0] / math.sqrt(2)))
    return float((phi - data_cdf(x)).abs().max())


def sampled_error(sampler, denoiser, grid, num: int, seed: int, **kw) -> float:
    """Kolmogorov-Smirnov statistic of ``num`` samples against the data CDF."""
    noise = torch.randn(num, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = sampler(denoiser, noise, grid, generator=torch.Generator().manual_seed(seed + 1), **kw)[:, 0].sort().values
    emp = torch.arange(1, num + 1, dtype=torch.float64) / num
    cdf = data_cdf(x)
    return float(torch.maximum(emp - cdf, cdf - emp + 1 / num).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=positive_int, default=20000, help="samples for the stochastic samplers")
    parser.add_argument("--schedule", choices=["cosine", "linear"], default="cosine")
    parser.add_argument("--nfe", type=positive_int, nargs="+", default=[5, 10, 20, 50, 100, 250, 1000])
    parser.add_argument("--out", type=json_path, default="benchmarks/out/samplers.json")
    args = parser.parse_args()
    if too_many := [n for n in args.nfe if n > 1000]:
        parser.error(f"--nfe {too_many}: at most the schedule's 1000 levels")

    schedule = NoiseSchedule(args.schedule, 1000)
    denoiser = gaussian_mixture_denoiser(WEIGHTS, MEANS, torch.full((2, 1, 1), VAR, dtype=torch.float64), schedule)
    runs = {
        "ddpm": lambda g: sampled_error(ddpm, denoiser, g, args.num, 0),
        "ddim_eta1": lambda g: sampled_error(ddim, denoiser, g, args.num, 0, eta=1.0),
        "ddim": lambda g: exact_error(ddim, denoiser, g),
        "dpm_solver_pp": lambda g: exact_error(dpm_solver_pp, denoiser, g),
    }
    spacing = {"ddpm": "time", "ddim_eta1": "time", "ddim": DEFAULT_SPACING["ddim"],
               "dpm_solver_pp": DEFAULT_SPACING["dpm_solver_pp"]}
    table: dict[str, dict[int, float]] = {name: {} for name in runs}
    table["dpm_solver_pp (time grid)"] = {}
    seconds: dict[str, float] = {}
    for name, run in runs.items():
        start = time.perf_counter()
        for nfe in args.nfe:
            table[name][nfe] = run(sampling_grid(schedule, nfe, spacing[name]))
        seconds[name] = time.perf_counter() - start
    for nfe in args.nfe:
        table["dpm_solver_pp (time grid)"][nfe] = exact_error(dpm_solver_pp, denoiser, sampling_grid(schedule, nfe))

    floor = 0.87 / math.sqrt(args.num)
    print(markdown_table([{"NFE": nfe, **{n: f"{table[n][nfe]:.4f}" for n in table}} for nfe in args.nfe]))
    print(f"\nKolmogorov distance to the data ({args.schedule} schedule); ddpm and ddim_eta1 use {args.num} samples "
          f"(their sampling floor is ~{floor:.4f}); ddim and dpm_solver_pp are exact.")

    write_results(args.out, {"device": "cpu", "schedule": args.schedule, "num": args.num, "sampling_floor": floor,
                             "spacing": spacing, "kolmogorov_error": table, "seconds": seconds})


if __name__ == "__main__":
    main()
