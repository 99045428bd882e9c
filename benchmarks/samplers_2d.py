"""Sampler accuracy against the number of function evaluations, with the exact denoiser of a 2-D mixture.

Data: 8 Gaussians on a circle of radius 1.5, stretched along the circle (std 0.3
tangential, 0.05 radial) with unequal weights (1 : 2 : ... : 8). The denoiser is the
exact ``E[x0 | x_t]`` (:mod:`multigen.testing`), so every error below is the sampler's
own discretisation error plus sampling noise. Each sampler calls the denoiser once per
step (NFE = steps) on its default grid spacing; all runs start from the same ``x_T``
and noise seed, in float64.

Errors of ``--num`` samples against the mixture: sliced 2-Wasserstein to a fixed,
independent reference sample, and the Euclidean / Frobenius error of the mean /
covariance against their exact values. The noise floor is the same numbers for fresh
samples of the mixture itself (mean and std over ``FLOOR_DRAWS`` of them): what an
exact sampler would score.

    python benchmarks/samplers_2d.py [--num 20000] [--schedule cosine] [--nfe 5 10 ...] [--device cpu]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import Tensor

from multigen.benchmarking import json_path, markdown_table, write_results
from multigen.cli import available_device, positive_int
from multigen.metrics import sliced_wasserstein
from multigen.samplers import DEFAULT_SPACING, sample
from multigen.schedules import SCHEDULES, NoiseSchedule
from multigen.testing import gaussian_mixture_denoiser, sample_gaussian_mixture

RUNS = {"ddpm": ("ddpm", 0.0), "ddim": ("ddim", 0.0), "ddim_eta1": ("ddim", 1.0),
        "dpm_solver_pp": ("dpm_solver_pp", 0.0)}
"""Column name -> (library sampler, eta)."""
FLOOR_DRAWS = 10


def mixture() -> tuple[Tensor, Tensor, Tensor]:
    """Weights ``(8,)``, means ``(8, 2)`` and covariances ``(8, 2, 2)`` of the benchmark data."""
    angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    radial = torch.stack([angle.cos(), angle.sin()], dim=1)
    tangential = torch.stack([-angle.sin(), angle.cos()], dim=1)
    covs = 0.05**2 * radial[:, :, None] * radial[:, None, :] + 0.3**2 * tangential[:, :, None] * tangential[:, None, :]
    weights = torch.arange(1, 9, dtype=torch.float64)
    return weights / weights.sum(), 1.5 * radial, covs


def errors(x: Tensor, reference: Tensor, mean: Tensor, cov: Tensor) -> dict[str, float]:
    """Sliced W2 of ``x`` to ``reference`` and its mean / covariance errors against the exact moments."""
    x = x.double().cpu()
    return {
        "sw2": sliced_wasserstein(x, reference),
        "mean_err": float((x.mean(0) - mean).norm()),
        "cov_err": float((torch.cov(x.T) - cov).norm()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=positive_int, default=20000, help="samples per run")
    parser.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    parser.add_argument("--nfe", type=positive_int, nargs="+", default=[5, 10, 20, 50, 100, 250, 1000])
    parser.add_argument("--device", type=available_device, default="cpu", help="cpu or cuda")
    parser.add_argument("--out", type=json_path, default="benchmarks/out/samplers_2d.json")
    args = parser.parse_args()
    if too_many := [n for n in args.nfe if n > 1000]:
        parser.error(f"--nfe {too_many}: at most the schedule's 1000 levels")
    if args.num < 2:
        parser.error(f"--num: at least 2 samples (their covariance is scored), got {args.num}")

    schedule = NoiseSchedule(args.schedule, 1000)
    weights, means, covs = mixture()
    mean = weights @ means
    cov = torch.einsum("k,kij->ij", weights, covs + means[:, :, None] * means[:, None, :]) - torch.outer(mean, mean)
    reference = sample_gaussian_mixture(weights, means, covs, args.num, torch.Generator().manual_seed(1))
    draws = [errors(sample_gaussian_mixture(weights, means, covs, args.num, torch.Generator().manual_seed(2 + i)),
                    reference, mean, cov) for i in range(FLOOR_DRAWS)]
    floor = {f"{key}_{stat.__name__}": stat(d[key] for d in draws)
             for key in draws[0] for stat in (statistics.mean, statistics.stdev)}

    exact = gaussian_mixture_denoiser(weights, means, covs, schedule)
    calls = 0

    def denoiser(x_t: Tensor, t: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        return exact(x_t, t)

    device = torch.device(args.device)
    results: dict[str, dict[int, dict[str, float]]] = {name: {} for name in RUNS}
    for name, (sampler, eta) in RUNS.items():
        for nfe in args.nfe:
            calls = 0
            start = time.perf_counter()
            x = sample(denoiser, (args.num, 2), schedule, sampler=sampler, steps=nfe, eta=eta, device=device,
                       dtype=torch.float64, generator=torch.Generator(device).manual_seed(0))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
            results[name][nfe] = {**errors(x, reference, mean, cov), "seconds": seconds, "denoiser_calls": calls}
            print(f"{name:>14} NFE {nfe:>4}: SW2 {results[name][nfe]['sw2']:.4f}  {seconds:6.1f} s", flush=True)

    print(f"\nSliced W2 to the mixture, {args.num} samples, {args.schedule} schedule (T = 1000)\n")
    rows = [{"NFE": nfe, **{n: f"{results[n][nfe]['sw2']:.4f}" for n in RUNS}} for nfe in args.nfe]
    print(markdown_table([*rows, {"NFE": "noise floor", **{n: f"{floor['sw2_mean']:.4f}" for n in RUNS}}]))
    print(f"\nnoise floor: SW2 of {FLOOR_DRAWS} exact samples, {floor['sw2_mean']:.4f} ± {floor['sw2_stdev']:.4f}")

    write_results(args.out, {
        "device": str(device), "schedule": args.schedule, "timesteps": schedule.timesteps, "num": args.num,
        "data": {"weights": weights.tolist(), "means": means.tolist(), "covs": covs.tolist()},
        "spacing": {name: DEFAULT_SPACING[sampler] for name, (sampler, _) in RUNS.items()},
        "noise_floor": floor, "results": results})


if __name__ == "__main__":
    main()
