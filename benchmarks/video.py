"""Video model cost: parameters, train-step time and peak memory for the shipped configs.

Each config is measured in a fresh subprocess (so peak memory is its own): a few
optimiser steps of the masked-conditioning loss on moving-digit clips, timed after
warm-up. On CUDA the peak is ``torch.cuda.max_memory_allocated``; on the CPU it is
the process's peak resident set size.

With ``--peer``, each config is also measured for lucidrains' ``video-diffusion-pytorch``
(``Unet3D`` + its ``GaussianDiffusion`` loss) with the same channel multipliers, clip
size and batch, its ``dim`` chosen to match our parameter count. Install it without
its dependencies (they would replace the CPU torch):
``pip install --no-deps video-diffusion-pytorch einops-exts rotary-embedding-torch``.
It imports ``torchvision`` only for its data utilities; when torchvision is missing
a stand-in module is registered so that the network can be built.

With ``--quality EXPORT_DIR``, a trained model's held-out future prediction and
interpolation (PSNR/SSIM, MCVD best/mean of samples, next to copy-last-frame and linear
blend) is measured for each sampler setting (DDPM 250, DDIM 50, DPM-Solver++ 10/25).

    python benchmarks/video.py [--device cpu|cuda] [--configs tiny default gpu] [--batch N] [--peer] [--out ...]
    python benchmarks/video.py --quality runs/video/export [--clips 8] [--samplers ddim:50 ...] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
# This script shares its name with the package it measures: import the package, not the script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

from multigen.benchmarking import quality_by_sampler, sampler_setting, time_train_steps, write_results  # noqa: E402


def video_config(config: str, batch: int | None):
    from multigen.config import load_config
    from video.domain import VideoConfig

    overrides = [f"train.batch_size={batch}"] if batch else []
    return load_config(VideoConfig, REPO / "configs" / "video" / f"{config}.yaml", overrides)


def measure(config: str, device: str, batch: int | None, steps: int, peer: bool = False) -> dict:
    """Time ``steps`` training steps of ``configs/video/<config>.yaml`` (ours, or the peer at equal size)."""
    from video.domain import Video

    cfg = video_config(config, batch)
    domain = Video(cfg)
    model = domain.build_model().to(device)
    ours = sum(p.numel() for p in model.parameters())
    data = domain.build_dataset("train")
    clips = torch.stack([data[i] for i in range(cfg.train.batch_size)]).to(device)
    dtype = torch.bfloat16 if cfg.train.mixed_precision == "bf16" and device == "cuda" else None
    if peer:
        model, loss_fn = peer_model(cfg, ours, clips)
        model.to(device)
    else:
        loss_fn = lambda: domain.training_loss(model, clips)  # noqa: E731
    seconds, peak = time_train_steps(loss_fn, model.parameters(), device, dtype, steps)
    d = cfg.data
    return {
        "config": config, "model": "video-diffusion-pytorch Unet3D" if peer else "multigen SpaceTimeUNet",
        "device": device, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "clip": f"{d.frames}x{d.channels}x{d.size}x{d.size}", "batch": cfg.train.batch_size,
        "step_seconds": seconds, "clips_per_second": cfg.train.batch_size / seconds, "peak_memory_MB": peak / 2**20,
    }


def peer_model(cfg, target_params: int, clips: torch.Tensor):
    """lucidrains' Unet3D with our channel multipliers and the ``dim`` whose size is closest to ours."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # only its data utilities (never called here) need torchvision

        class Absent(types.ModuleType):
            def __getattr__(self, name: str):
                if name.startswith("__"):
                    raise AttributeError(name)
                return lambda *args, **kwargs: None

        stub = Absent("torchvision")
        stub.transforms, stub.utils = Absent("transforms"), Absent("utils")
        sys.modules["torchvision"] = stub
    from video_diffusion_pytorch import GaussianDiffusion, Unet3D

    d, mults = cfg.data, tuple(cfg.model.channel_mults)

    def build(dim: int):
        return Unet3D(dim=dim, dim_mults=mults, channels=d.channels)

    size = lambda dim: sum(p.numel() for p in build(dim).parameters())  # noqa: E731
    dim = min(range(8, 257, 8), key=lambda k: abs(size(k) - target_params))
    diffusion = GaussianDiffusion(build(dim), image_size=d.size, num_frames=d.frames, channels=d.channels,
                                  timesteps=cfg.diffusion.timesteps, loss_type="l2")
    videos = (clips.transpose(1, 2) + 1) / 2  # ours (B, T, C, H, W) in [-1, 1]; theirs (B, C, T, H, W) in [0, 1]
    return diffusion, lambda: diffusion(videos)


SAMPLER_SETTINGS = [("ddpm", 250), ("ddim", 50), ("dpm_solver_pp", 10), ("dpm_solver_pp", 25)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", default=["tiny", "default", "gpu"])
    parser.add_argument("--batch", type=int, help="override every config's batch size")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--peer", action="store_true", help="also measure video-diffusion-pytorch at equal size")
    parser.add_argument("--quality", metavar="EXPORT_DIR", help="sample quality against sampler steps")
    parser.add_argument("--samplers", nargs="+", type=sampler_setting, default=SAMPLER_SETTINGS,
                        metavar="SAMPLER:STEPS", help="--quality: the sampler settings to compare")
    parser.add_argument("--clips", type=int, default=8, help="--quality: held-out clips")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one config, print JSON
    parser.add_argument("--out", default="benchmarks/out/video.json")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.device, args.batch, args.steps, args.peer)))
        return

    if args.quality:
        rows = quality_by_sampler(args.quality, args.device, args.samplers, num_clips=args.clips)
        print("| sampler | steps | future PSNR best / mean | copy-last PSNR | future SSIM best | copy-last SSIM | "
              "interp PSNR best / mean | linear-blend PSNR | seconds |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['sampler']} | {r['steps']} | {r['future/psnr_best']:.2f} / {r['future/psnr_mean']:.2f} | "
                  f"{r['future/baseline_psnr']:.2f} | {r['future/ssim_best']:.3f} | {r['future/baseline_ssim']:.3f} | "
                  f"{r['interp/psnr_best']:.2f} / {r['interp/psnr_mean']:.2f} | {r['interp/baseline_psnr']:.2f} | "
                  f"{r['seconds']:.0f} |")
        write_json(args, rows)
        return

    rows = []
    for config in args.configs:
        for peer in [False, True] if args.peer else [False]:
            cmd = [sys.executable, __file__, "--one", config, "--device", args.device, "--steps", str(args.steps)]
            cmd += (["--batch", str(args.batch)] if args.batch else []) + (["--peer"] if peer else [])
            result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if result.returncode != 0:
                print(f"{config}{' (peer)' if peer else ''}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    print("| config | model | clip (TxCxHxW) | params | batch | s/step | clips/s | peak memory |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['model']} | {r['clip']} | {r['params_M']:.2f} M | {r['batch']} | "
              f"{r['step_seconds']:.3f} | {r['clips_per_second']:.2f} | {r['peak_memory_MB']:.0f} MB |")
    write_json(args, rows)


def write_json(args: argparse.Namespace, rows: list[dict]) -> None:
    write_results(args.out, {"results": rows})


if __name__ == "__main__":
    main()
