"""Where a residual video model stands against its own reference: the denoiser's error per noise level.

For held-out clips, each task's true (scaled) residual ``r`` (clip minus the model's reference frames, times
``model.residual_scale``) is noised to level ``t`` (``x_t = alpha r + sigma eps``, one draw per level), and the
mean squared error of three x0 estimates over the generated frames is reported:

* ``network``: the model's denoiser, conditioned on the observed frames as in sampling;
* ``zero``: a zero residual, that is the reference frames themselves (the error is ``r``'s mean square);
* ``shrinkage``: ``c x_t`` with the best scalar ``c = alpha s^2 / (alpha^2 s^2 + sigma^2)`` for ``r``'s mean square
  ``s^2``, the exact denoiser of a Gaussian residual with that variance.

Where ``network`` is above ``zero`` the model's estimate of the residual is worse than none: at the top of the
schedule that estimate is its guess of the conditional mean, which PSNR rewards. Tasks: the evaluation's
(:meth:`Video.task_masks`): future prediction from ``eval.context`` observed frames, interpolation between the
first and last frame, and past prediction from the last ``eval.context`` frames.

    python benchmarks/video_levels.py EXPORT_DIR [--clips 64] [--levels 20 200 600 800 950] [--out ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
# benchmarks/video.py shares its name with the package measured here: import the package, not that script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

from multigen.benchmarking import json_path, load_export_of, markdown_table, write_results  # noqa: E402
from multigen.cli import available_device, positive_int  # noqa: E402
from video.conditioning import pack_condition, scaled_residual  # noqa: E402
from video.domain import Video  # noqa: E402

LEVELS = (20, 50, 100, 200, 400, 600, 800, 900, 950)


@torch.no_grad()
def level_errors(domain: Video, model: torch.nn.Module, clips: torch.Tensor, levels: list[int] | tuple[int, ...],
                 seed: int = 0) -> list[dict]:
    """One row per task and level of ``clips`` ``(n, T, C, H, W)`` in ``[-1, 1]``: the mean squared x0 error
    of the ``network``, ``zero`` and ``shrinkage`` estimates of the scaled residual over the generated frames."""
    m, diffusion = domain.cfg.model, domain.diffusion
    if not m.residual:
        raise ValueError("this export is not a residual model (model.residual=false): it has no reference")
    for level in levels:
        if not 1 <= level <= diffusion.timesteps:
            raise ValueError(f"level {level} is outside the schedule's 1..{diffusion.timesteps}")
    device = next(model.parameters()).device
    clips = clips.to(device)
    n, T = clips.shape[:2]
    g = torch.Generator(device=device).manual_seed(seed)
    rows = []
    for task, frame_mask in domain.task_masks(T, device).items():
        mask = frame_mask.expand(n, T)
        residual, ref = scaled_residual(clips, mask, m.reference, m.residual_scale)
        cond = pack_condition(clips, mask, ref if m.reference_input else None)
        weight = (~mask)[:, :, None, None, None].to(clips.dtype).expand_as(clips)

        def mse(error: torch.Tensor) -> float:
            return ((error.square() * weight).sum() / weight.sum()).item()

        s2 = mse(residual)
        denoise = diffusion.denoiser(lambda x, t: model(x, t, cond, None))
        for level in levels:
            steps = torch.full((n,), level, device=device)
            alpha, sigma = diffusion.coefficients(steps, residual)
            noise = torch.randn(residual.shape, generator=g, device=device)
            x_t = alpha * residual + sigma * noise
            x0 = denoise(x_t, steps.double() / diffusion.timesteps)
            a, s = alpha.flatten()[0].item(), sigma.flatten()[0].item()
            c = a * s2 / (a * a * s2 + s * s)
            rows.append({"task": task, "level": level, "alpha": a, "network": mse(x0 - residual), "zero": s2,
                         "shrinkage": mse(c * x_t - residual)})
    return rows


def table(rows: list[dict]) -> str:
    """The rows of :func:`level_errors` as a markdown table."""
    return markdown_table([{"task": r["task"], "level t": r["level"], "alpha": f"{r['alpha']:.3f}",
                            "network": f"{r['network']:.5f}", "zero residual (the reference)": f"{r['zero']:.5f}",
                            "shrinkage c x_t": f"{r['shrinkage']:.5f}"} for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", help="a residual video model's export directory")
    parser.add_argument("--clips", type=positive_int, default=64, help="held-out clips")
    parser.add_argument("--levels", nargs="+", type=positive_int, default=list(LEVELS), help="noise levels t in 1..T")
    parser.add_argument("--device", type=available_device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0, help="the noise draws")
    parser.add_argument("--out", type=json_path, default="benchmarks/out/video_levels.json")
    args = parser.parse_args()
    pretrained = load_export_of(Video, args.export, args.device)
    domain, model = pretrained.domain, pretrained.model
    val = domain.build_dataset("val")
    clips = torch.stack([val[i] for i in range(min(args.clips, len(val)))])
    try:  # the export and the levels checked before any work
        rows = level_errors(domain, model, clips, args.levels, args.seed)
    except ValueError as e:
        parser.error(f"{args.export}: {e}")
    print(table(rows))
    write_results(args.out, {"export": args.export, "clips": len(clips), "results": rows})


if __name__ == "__main__":
    main()
