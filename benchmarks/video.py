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

With ``--quality EXPORT_DIR``, a trained model's held-out future prediction, interpolation
and past prediction (PSNR/SSIM, MCVD best/mean of samples, next to copy-last-frame, linear
blend and copy-first-frame, and each one moved along the clip's motion) is measured for each
sampler setting (DDPM 250, DDIM 50, DPM-Solver++ 10/25).

    python benchmarks/video.py [--device cpu|cuda] [--configs tiny default gpu] [--batch N] [--peer] [--out ...]
    python benchmarks/video.py --quality runs/video/export [--clips 8] [--samplers ddim:50 ...] [--temperatures 1 0.5]
    python benchmarks/video.py --mfu [--variants ...] [--batches 8 16 32 64] [--budget S] [--dry-run] [--out ...]

With ``--mfu`` (:func:`mfu_rows`, also called by ``benchmarks/gpu.py``), the gpu config's model FLOPs
utilisation: FLOPs per training step from ``torch.utils.flop_counter``, seconds per bf16 AdamW step, against
the bf16 rate of an 8192^3 matrix product timed in the same process, for each speed lever (channels-last
activations, the temporal attention's bias folded for flash, ``torch.compile``) and batch.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
# This script shares its name with the package it measures: import the package, not the script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

from multigen.benchmarking import (  # noqa: E402
    json_path, markdown_table, quality_by_sampler, sampler_setting, time_train_steps, write_results,
)
from multigen.cli import available_device, positive_int  # noqa: E402


def video_config(config: str, batch: int | None, overrides: list[str] | tuple[str, ...] = ()):
    from multigen.config import load_config
    from video.domain import VideoConfig

    overrides = ([f"train.batch_size={batch}"] if batch is not None else []) + list(overrides)
    return load_config(VideoConfig, REPO / "configs" / "video" / f"{config}.yaml", overrides)


def measure(config: str, device: str, batch: int | None, steps: int, peer: bool = False,
            overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Time ``steps`` training steps of ``configs/video/<config>.yaml`` with ``overrides`` (ours, or the peer at equal
    size)."""
    from video.domain import Video

    cfg = video_config(config, batch, overrides)
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
        "config": " ".join([config, *overrides]),
        "model": "video-diffusion-pytorch Unet3D" if peer else "multigen SpaceTimeUNet",
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
    try:
        from video_diffusion_pytorch import GaussianDiffusion, Unet3D
    except ImportError:
        raise SystemExit("--peer needs video-diffusion-pytorch: pip install --no-deps video-diffusion-pytorch "
                         "einops-exts rotary-embedding-torch (--no-deps: its torchvision would replace the CPU "
                         "torch)") from None

    d, mults = cfg.data, tuple(cfg.model.channel_mults)

    def build(dim: int):
        return Unet3D(dim=dim, dim_mults=mults, channels=d.channels)

    size = lambda dim: sum(p.numel() for p in build(dim).parameters())  # noqa: E731
    dim = min(range(8, 257, 8), key=lambda k: abs(size(k) - target_params))
    diffusion = GaussianDiffusion(build(dim), image_size=d.size, num_frames=d.frames, channels=d.channels,
                                  timesteps=cfg.diffusion.timesteps, loss_type="l2")
    videos = (clips.transpose(1, 2) + 1) / 2  # ours (B, T, C, H, W) in [-1, 1]; theirs (B, C, T, H, W) in [0, 1]
    return diffusion, lambda: diffusion(videos)


# Model FLOPs utilisation of the gpu config: variant -> (model overrides, torch.compile). Each lever is a switch.
MFU_VARIANTS = {  # in the order measured: the baseline and the expected best first
    "eager": ([], False),
    "compile+channels_last+fold_bias": (["model.channels_last=true", "model.fold_frame_bias=true"], True),
    "channels_last": (["model.channels_last=true"], False),
    "fold_bias": (["model.fold_frame_bias=true"], False),
    "compile": ([], True),
    "compile+channels_last": (["model.channels_last=true"], True),
    "checkpointing": (["model.gradient_checkpointing=true"], False),  # memory, not speed
}
MFU_BATCHES = (8, 16, 32, 64)
DRY_RUN_VARIANTS = ["eager", "compile+channels_last+fold_bias"]  # every code path, in seconds


def step_flops(cfg, batch: int = 1) -> float:
    """FLOPs of one training step (loss and backward) at ``batch`` clips: ``torch.utils.flop_counter`` on one
    step on the meta device (shapes only: no memory, seconds). Every counted op (convolutions, matmuls,
    attention) works per clip, so a step costs ``batch`` times the step at batch 1 (checked by the tests)."""
    from torch.utils.flop_counter import FlopCounterMode

    from video.domain import Video

    domain = Video(cfg)
    with torch.device("meta"):
        model = domain.build_model()
    d = cfg.data
    counter = FlopCounterMode(display=False)
    with counter:
        domain.training_loss(model, torch.zeros(batch, d.frames, d.channels, d.size, d.size, device="meta")).backward()
    return float(counter.get_total_flops())


def mfu_rows(
    device: str = "cuda",
    peak_tflops: float | None = None,
    dry_run: bool = False,
    batches: tuple[int, ...] | None = None,
    variants: list[str] | None = None,
    steps: int = 5,
    budget_s: float | None = 100.0,
    compile_seconds: float | None = None,
) -> list[dict]:
    """Model FLOPs utilisation of ``configs/video/gpu.yaml``'s training step for each variant and batch.

    Per row: FLOPs per step (:func:`step_flops` at batch 1, times the batch), seconds per step (bf16 autocast on CUDA,
    AdamW, after 2 warm-up steps, which include compiling), achieved TFLOP/s and MFU against ``peak_tflops``
    (default: an 8192^3 bf16 matrix product timed here), and peak memory. For each batch of ``batches``
    (default 8, 16, 32, 64), the ``variants`` (:data:`MFU_VARIANTS`, all by default) in that order; a variant
    that runs out of memory is not tried at larger batches. Compiled models are compiled afresh (static
    shapes) for every batch. Rows that would not end within ``budget_s`` seconds of the start are returned
    as skipped (None: no limit; a compiled row is assumed to need ``compile_seconds``, by default 60 s, then as
    long as the longest compile seen), so that a caller with a time box gets what fits: the baseline and the
    expected best first.
    ``dry_run``: the tiny config at batch 1, one timed step, a 256^3 peak, by default only
    :data:`DRY_RUN_VARIANTS`, and ``torch.compile(backend="eager")`` (the plumbing in seconds on a CPU; its
    figures mean nothing).
    """
    from multigen.benchmarking import matmul_tflops

    start = time.perf_counter()
    steps = 1 if dry_run else steps
    cuda = device.startswith("cuda")
    config = "tiny" if dry_run else "gpu"
    batches = tuple(batches or ((1,) if dry_run else MFU_BATCHES))
    variants = list(variants or (DRY_RUN_VARIANTS if dry_run else MFU_VARIANTS))
    unknown = sorted(set(variants) - set(MFU_VARIANTS))
    if unknown:
        raise ValueError(f"unknown MFU variant(s) {unknown}; choose from {list(MFU_VARIANTS)}")
    if peak_tflops is None:
        peak_tflops = matmul_tflops(device, n=256 if dry_run else 8192, dtype=torch.bfloat16 if cuda else torch.float32)
    per_clip = per_clip_flops(config)  # times the batch: see step_flops
    dtype = torch.bfloat16 if cuda else None
    rows = []
    # a compiled row needs this much budget left (then: the longest seen)
    compile_seconds = 0.0 if dry_run else 60.0 if compile_seconds is None else compile_seconds
    out_of_memory: set[str] = set()
    for batch in batches:
        for name in variants:
            if name in out_of_memory:
                continue
            overrides, compiled = MFU_VARIANTS[name]
            row = {"config": config, "variant": name, "batch": batch, "device": device, "tflop_per_step":
                   per_clip * batch / 1e12, "peak_tflops": peak_tflops}
            needed = compile_seconds if compiled else 0.0
            if budget_s is not None and time.perf_counter() - start + needed > budget_s:
                rows.append({**row, "status": f"skipped: the {budget_s:.0f} s budget"})
                continue
            try:
                row.update(_mfu_step(config, overrides, compiled, batch, device, dtype, steps, dry_run))
            except torch.OutOfMemoryError:
                row["status"] = "out of memory"
            _release(device)  # after the except clause: its traceback no longer holds the step's tensors
            if row.get("status"):
                rows.append(row)
                out_of_memory.add(name)
                continue
            if compiled:
                compile_seconds = max(compile_seconds, row["warmup_seconds"])
            row["tflops"] = row["tflop_per_step"] / row["step_seconds"]
            row["mfu_percent"] = 100 * row["tflops"] / peak_tflops
            rows.append({**row, "status": "ok"})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


@functools.lru_cache
def per_clip_flops(config: str) -> float:
    """:func:`step_flops` of ``configs/video/<config>.yaml`` at batch 1 (seconds each: counted once a process)."""
    return step_flops(video_config(config, None))


def _mfu_step(config: str, overrides: list[str], compiled: bool, batch: int, device: str, dtype, steps: int,
              dry_run: bool) -> dict:
    """Seconds per training step and peak memory of one MFU variant (random clips: speed ignores content)."""
    from video.domain import Video

    cfg = video_config(config, batch, overrides)
    domain = Video(cfg)
    model = domain.build_model().to(device)
    d = cfg.data
    g = torch.Generator(device=device).manual_seed(0)
    clips = torch.rand(batch, d.frames, d.channels, d.size, d.size, generator=g, device=device) * 2 - 1
    net = model
    if compiled:
        torch._dynamo.reset()  # a fresh static-shape compile (no recompile limit across rows)
        net = torch.compile(model, dynamic=False, backend="eager" if dry_run else "inductor")
    t0 = time.perf_counter()
    seconds, peak = time_train_steps(lambda: domain.training_loss(net, clips), model.parameters(), device, dtype,
                                     steps)
    total = time.perf_counter() - t0
    return {"step_seconds": seconds, "clips_per_second": batch / seconds, "peak_memory_MB": peak / 2**20,
            "warmup_seconds": total - seconds * steps}


def _release(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def mfu_table(rows: list[dict]) -> str:
    """The rows of :func:`mfu_rows` as a markdown table (a skipped variant: its FLOPs and status only)."""
    table_rows = []
    for r in rows:
        row = {"variant": r["variant"], "batch": r["batch"], "TFLOP/step": f"{r['tflop_per_step']:.2f}"}
        if r["status"] == "ok":
            row.update({"s/step": f"{r['step_seconds']:.3f}", "TFLOP/s": f"{r['tflops']:.1f}",
                        "MFU": f"{r['mfu_percent']:.1f} %", "peak memory": f"{r['peak_memory_MB']:.0f} MB",
                        "warm-up s": f"{r['warmup_seconds']:.0f}"})
        table_rows.append({**row, "status": r["status"]})
    return markdown_table(table_rows, ["variant", "batch", "TFLOP/step", "s/step", "TFLOP/s", "MFU", "peak memory",
                                       "warm-up s", "status"])


def quality_table(rows: list[dict]) -> str:
    """The rows of :func:`quality_by_sampler` as a markdown table: PSNR (dB) best / mean of the samples of a clip,
    SSIM of the best, each task's trivial baseline and its motion-compensated reference (the trivial baseline's
    frames moved along the clip's global motion)."""
    def pair(r: dict, task: str) -> str:
        return f"{r[task + '/psnr_best']:.2f} / {r[task + '/psnr_mean']:.2f}"

    return markdown_table([{
        "sampler": r["sampler"], "steps": r["steps"], "temperature": f"{r['temperature']:g}",
        "future PSNR best / mean": pair(r, "future"), "copy-last PSNR": f"{r['future/baseline_psnr']:.2f}",
        "future motion-ref PSNR": f"{r['future/baseline_motion_psnr']:.2f}",
        "future SSIM best": f"{r['future/ssim_best']:.3f}", "copy-last SSIM": f"{r['future/baseline_ssim']:.3f}",
        "interp PSNR best / mean": pair(r, "interp"), "linear-blend PSNR": f"{r['interp/baseline_psnr']:.2f}",
        "interp motion-ref PSNR": f"{r['interp/baseline_motion_psnr']:.2f}",
        "past PSNR best / mean": pair(r, "past"), "copy-first PSNR": f"{r['past/baseline_psnr']:.2f}",
        "past motion-ref PSNR": f"{r['past/baseline_motion_psnr']:.2f}",
        "seconds": f"{r['seconds']:.0f}"} for r in rows])


SAMPLER_SETTINGS = [("ddpm", 250), ("ddim", 50), ("dpm_solver_pp", 10), ("dpm_solver_pp", 25)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", type=available_device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", default=["tiny", "default", "gpu"])
    parser.add_argument("--batch", type=positive_int, help="override every config's batch size")
    parser.add_argument("--steps", type=positive_int, default=3)
    parser.add_argument("--peer", action="store_true", help="also measure video-diffusion-pytorch at equal size")
    parser.add_argument("--override", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for every config measured (e.g. model.gradient_checkpointing=true)")
    parser.add_argument("--quality", metavar="EXPORT_DIR", help="sample quality against sampler steps")
    parser.add_argument("--samplers", nargs="+", type=sampler_setting, default=SAMPLER_SETTINGS,
                        metavar="SAMPLER:STEPS", help="--quality: the sampler settings to compare")
    parser.add_argument("--temperatures", nargs="+", type=float, default=[1.0],
                        help="--quality: sampling temperatures (sample.temperature) for each sampler setting")
    parser.add_argument("--clips", type=positive_int, default=8, help="--quality: held-out clips")
    parser.add_argument("--mfu", action="store_true", help="model FLOPs utilisation of the gpu config (mfu_rows)")
    parser.add_argument("--variants", nargs="+", choices=list(MFU_VARIANTS), help="--mfu: the variants (default all)")
    parser.add_argument("--batches", nargs="+", type=positive_int, help="--mfu: the batch sweep (default 8 16 32 64)")
    parser.add_argument("--budget", type=float, help="--mfu: start no row after this many seconds (default none)")
    parser.add_argument("--dry-run", action="store_true", help="--mfu: the tiny config at batch 1, in seconds")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one config, print JSON
    parser.add_argument("--out", type=json_path, default="benchmarks/out/video.json")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.device, args.batch, args.steps, args.peer, args.override)))
        return
    if args.mfu:
        rows = mfu_rows(args.device, dry_run=args.dry_run, batches=args.batches, variants=args.variants,
                        budget_s=args.budget)
        print(mfu_table(rows))
        write_json(args, rows)
        return

    if args.quality:
        from video.domain import Video

        rows = quality_by_sampler(args.quality, args.device, args.samplers, args.temperatures, domain=Video,
                                  num_clips=args.clips)
        print(quality_table(rows))
        write_json(args, rows, export=args.quality, clips=rows[0]["num_clips"])
        return

    rows, failed = [], []
    for config in args.configs:
        for peer in [False, True] if args.peer else [False]:
            cmd = [sys.executable, __file__, "--one", config, "--device", args.device, "--steps", str(args.steps)]
            cmd += (["--batch", str(args.batch)] if args.batch is not None else []) + (["--peer"] if peer else [])
            cmd += ["--override", *args.override] if args.override else []
            result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if result.returncode != 0:
                failed.append(f"{config}{' (peer)' if peer else ''}")
                print(f"{failed[-1]}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            write_json(args, rows)  # after each row: a run stopped from outside keeps what it measured
    print(markdown_table([{"config": r["config"], "model": r["model"], "clip (TxCxHxW)": r["clip"],
                           "params": f"{r['params_M']:.2f} M", "batch": r["batch"],
                           "s/step": f"{r['step_seconds']:.3f}", "clips/s": f"{r['clips_per_second']:.2f}",
                           "peak memory": f"{r['peak_memory_MB']:.0f} MB"} for r in rows]))
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (the reasons are above)")


def write_json(args: argparse.Namespace, rows: list[dict], **settings: object) -> None:
    write_results(args.out, {"device": args.device, **settings, "results": rows})


if __name__ == "__main__":
    main()
