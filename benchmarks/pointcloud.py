"""Point-cloud cost and quality: denoiser train steps, point ops against their loop references,
Chamfer/EMD against exact, and 1-NNA against sampler steps.

* Train steps (each config in its own process, so peak memory is its own): seconds per
  optimiser step and peak memory at 2 048 points for ``configs/pointcloud/{tiny,default,gpu}``.
* Ops: each op of :mod:`pointcloud.ops` against the plain-loop reference it is tested
  equal to (:mod:`pointcloud.reference`), at a size the loops finish (1 024 points), and
  the vectorised op alone at the model's size (a batch of 2 048-point clouds).
* Metrics: Chamfer chunked against the dense ``(B, N, M)`` form; Sinkhorn EMD against the
  exact assignment (time and relative gap).
* ``--quality EXPORT_DIR``: MMD/COV/1-NNA (Chamfer) of a trained model's samples against
  held-out shapes for each sampler setting, next to a Gaussian blob of the data.
* ``--completion EXPORT_DIR``: completion of held-out partial views against the nearest training
  shape, paired per view and per family, and the distance of both to the true surface.
* ``--denoising EXPORT_DIR``: mean squared distance of the denoiser's x0 estimate to the
  true surface at small noise levels (what makes samples crisp or fuzzy), procedural shapes.

    python benchmarks/pointcloud.py [--device cpu|cuda] [--configs tiny default gpu] [--batch 8]
    python benchmarks/pointcloud.py --quality runs/pointcloud/export [--shapes 64] [--samplers ddim:50 ...]
        [--temperatures 1 0.9]
    python benchmarks/pointcloud.py --denoising runs/pointcloud/export [--shapes 64]
    python benchmarks/pointcloud.py --completion runs/pointcloud-completion/export [--shapes 64] [--bank 4000]
        [--sample steps=100 resample=3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "configs" / "pointcloud"
# This script shares its name with the package it measures: import the package, not the script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

from multigen.benchmarking import (  # noqa: E402
    beside, json_path, load_export_of, markdown_table, override_sample_settings, quality_by_sampler, sampler_setting,
    time_train_steps, timed, write_results,
)
from multigen.cli import available_device, diffusion_time, positive_int  # noqa: E402
from pointcloud import ops, reference  # noqa: E402
from pointcloud.metrics import emd_approx, emd_exact  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

SAMPLER_SETTINGS = [("ddpm", 250), ("ddpm", 100), ("ddim", 50), ("dpm_solver_pp", 50), ("dpm_solver_pp", 25)]


def train_step_setup(config: str, device: str, batch: int, points: int):
    """``configs/pointcloud/<config>.yaml`` at ``points`` points: its config, domain, network on ``device``, one
    batch as the trainer's data loader makes it (partial views drawn on the CPU, outside the step) and the
    autocast dtype (bf16 on CUDA when the config trains in it, else None)."""
    from multigen.config import load_config
    from pointcloud.domain import PointCloud, PointCloudConfig

    cfg = load_config(PointCloudConfig, CONFIG_DIR / f"{config}.yaml",
                      [f"data.points={points}", "data.pool=0", f"train.batch_size={batch}"])
    domain = PointCloud(cfg)
    model = domain.build_model().to(device)
    data = domain.build_dataset("train")
    clouds = {k: v.to(device) for k, v in domain.collate_fn([data[i] for i in range(batch)]).items()}
    dtype = torch.bfloat16 if cfg.train.mixed_precision == "bf16" and device == "cuda" else None
    return cfg, domain, model, clouds, dtype


def measure_config(config: str, device: str, batch: int, points: int, steps: int) -> dict:
    """Train-step time and peak memory of ``configs/pointcloud/<config>.yaml`` at ``points`` points."""
    cfg, domain, model, clouds, dtype = train_step_setup(config, device, batch, points)
    seconds, peak = time_train_steps(lambda: domain.training_loss(model, clouds), model.parameters(), device,
                                     dtype, steps)
    with torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None), OpCount() as count:
        domain.training_loss(model, clouds).backward()
    return {"config": config, "device": device, "points": points, "batch": batch,
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "step_seconds": seconds,
            "clouds_per_second": batch / seconds, "peak_memory_MB": peak / 2**20,
            "ops_per_forward_backward": count.ops}


class OpCount(TorchDispatchMode):
    """Counts the ATen ops that run, views left out: about one kernel launch each on a GPU."""

    VIEWS = {"view", "_unsafe_view", "unsqueeze", "squeeze", "select", "slice", "t", "transpose", "permute",
             "expand", "detach", "alias", "as_strided", "split", "unbind"}

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += func.overloadpacket.__name__ not in self.VIEWS
        return func(*args, **(kwargs or {}))


def profile_step(config: str, device: str, batch: int, points: int, trace: Path, rows: int = 30) -> None:
    """Print ``torch.profiler``'s table of one forward+backward of ``config`` (after 2 unprofiled ones), by
    device time, and write its Chrome trace to ``trace``."""
    from torch.profiler import ProfilerActivity, profile

    cfg, domain, model, clouds, dtype = train_step_setup(config, device, batch, points)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])

    def step() -> None:
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None):
            domain.training_loss(model, clouds).backward()
        if device == "cuda":
            torch.cuda.synchronize()

    step(), step()
    with profile(activities=activities) as prof:
        step()
    print(prof.key_averages().table(sort_by=f"self_{'cuda' if device == 'cuda' else 'cpu'}_time_total",
                                    row_limit=rows))
    trace.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(trace))
    print(f"wrote {trace}")


def off_surface_rows(export: str, device: str, num_shapes: int, steps: tuple[int, ...] = (10, 30, 100, 300),
                     seed: int = 0) -> list[dict]:
    """How far the denoiser's x0 estimate lies from the true surface at small noise levels.

    For held-out procedural shapes, noise is added at each of ``steps`` (of T); the mean squared distance
    from each point of the x0 estimate to a dense sampling of the shape's mesh is set against that of the
    noisy cloud divided by alpha (an exact denoiser would bring it to the clean clouds' value) and against a
    model-free local denoiser: each point of that cloud replaced by the mean of its ``k`` nearest points
    (itself included), the best of k = 4, 6, 8, 12, 16 per step.
    """
    from pointcloud.domain import PointCloud
    from pointcloud.shapes import ProceduralShapes

    p = load_export_of(PointCloud, export, device)
    domain, model = p.domain, p.model
    data = domain.build_dataset("val")
    if not isinstance(data, ProceduralShapes):
        raise SystemExit(f"--denoising needs a model trained on the procedural shapes; {export} was not")
    n = min(num_shapes, len(data))
    clean = torch.stack([data[i] for i in range(n)]).to(device)
    surface = torch.stack([data.surface(i) for i in range(n)]).to(device)

    def off_surface(cloud: torch.Tensor) -> float:
        return ops.knn(cloud.contiguous(), surface, 1)[0][..., 0].mean().item()

    observed = torch.zeros(clean.shape[:2], dtype=torch.bool, device=device)
    denoise = domain.diffusion.denoiser(domain.network(model, clean * domain.scale, observed))
    g = torch.Generator(device=device).manual_seed(seed)
    floor = off_surface(clean)

    def best_knn_mean(cloud: torch.Tensor, ks: tuple[int, ...] = (4, 6, 8, 12, 16)) -> float:
        """The lowest off-surface error of ``cloud`` with each point replaced by the mean of its k nearest."""
        neighbours = ops.gather_points(cloud, ops.knn(cloud, cloud, max(ks))[1])  # (n, N, max k, 3), nearest first
        return min(off_surface(neighbours[:, :, :k].mean(2)) for k in ks)

    rows = [{"step": 0, "noisy_over_alpha": floor, "knn_mean": floor, "model": floor}]
    for step in steps:
        t = torch.full((n,), step, device=device)
        alpha, sigma = domain.diffusion.coefficients(t, clean)
        x_t = alpha * clean * domain.scale + sigma * torch.randn(clean.shape, generator=g, device=device)
        with torch.no_grad():
            x0 = denoise(x_t, domain.diffusion.schedule.model_time(t))
        noisy = x_t / alpha / domain.scale
        rows.append({"step": step, "noisy_over_alpha": off_surface(noisy),
                     "knn_mean": best_knn_mean(noisy),
                     "model": off_surface(x0 / domain.scale)})
    return rows


def completion_rows(export: str, device: str, num_shapes: int, bank: int, sample: list[str] = (),
                    seed: int = 0, start: float | None = None) -> list[dict]:
    """Completion of held-out partial views against the nearest of ``bank`` training shapes, per family, and
    against that shape holding the observed points as a completion does (``with_partial``).

    Both are scored by Chamfer to the held-out cloud (as in training's evaluation), paired per view
    (mean difference, its standard error, the share of views the model wins), and by the mean squared
    distance of their points to the true surface (a dense sampling of the mesh): what the sampling of
    the reference cloud does not blur. For the model's generated points the median of that distance and
    the share of it that comes from their worst 10% (stray points) are also given. ``sample``
    overrides fields of the export's sample config, e.g. ``["steps=100", "resample=3"]``; ``start`` its
    ``task.completion_start`` (None: kept). A completion that starts from the nearest training shape searches
    the same ``bank`` as the baselines.
    """
    from pointcloud.domain import PointCloud, with_partial
    from pointcloud.metrics import chamfer
    from pointcloud.shapes import ProceduralShapes
    from pointcloud.views import partial_masks

    p = load_export_of(PointCloud, export, device)
    domain, model = p.domain, p.model
    override_sample_settings(domain, sample)
    domain.cfg.task.completion_bank = bank
    if start is not None:
        domain.cfg.task.completion_start = start
    data = domain.build_dataset("val")
    if not isinstance(data, ProceduralShapes):
        raise SystemExit(f"--completion needs a model trained on the procedural shapes; {export} was not")
    n = min(num_shapes, len(data))
    shapes = torch.stack([data[i] for i in range(n)])
    surface = torch.stack([data.surface(i) for i in range(n)])
    mask = partial_masks(shapes, domain.cfg.task.partial_points, seed=seed)
    g = torch.Generator(device=device).manual_seed(seed)
    domain.training_bank(bank)  # built before the clock starts
    began = time.perf_counter()
    with torch.no_grad():
        done = domain.complete(model, shapes, mask, g)
    seconds = time.perf_counter() - began
    partials = [s[m] for s, m in zip(shapes, mask)]
    nearest = domain.nearest_training_shapes(partials, bank)
    kept = torch.stack([with_partial(c, part) for c, part in zip(nearest, partials)])
    bank = min(bank, len(domain.build_dataset("train")))
    to_surface = lambda c: ops.knn(c.contiguous(), surface, 1)[0][..., 0]  # noqa: E731  (n, N)
    model_cd, near_cd, kept_cd = chamfer(done, shapes), chamfer(nearest, shapes), chamfer(kept, shapes)
    model_off, near_off = to_surface(done), to_surface(nearest)
    families = [data.family(i) for i in range(n)]
    s = domain.cfg.sample
    sampler = f"{s.sampler}-{s.steps}" + (f" x{s.resample} passes" if s.resample > 1 else "")
    if domain.cfg.task.completion_start < 1:
        sampler += f" from the nearest shape at t = {domain.cfg.task.completion_start:g}"
    rows = []
    for fam in ["all", *(dict.fromkeys(families) if len(set(families)) > 1 else [])]:
        idx = torch.tensor([i for i in range(n) if fam in ("all", families[i])])
        diff, diff_kept = model_cd[idx] - near_cd[idx], model_cd[idx] - kept_cd[idx]
        generated = model_off[idx][~mask[idx]]
        worst = generated.sort().values[int(0.9 * len(generated)):]
        rows.append({
            "family": fam, "views": len(idx), "model_chamfer": model_cd[idx].mean().item(),
            "nearest_chamfer": near_cd[idx].mean().item(), "paired_diff": diff.mean().item(),
            "paired_se": (diff.std() / len(idx) ** 0.5).item() if len(idx) > 1 else None,  # None: one view
            "model_wins": (diff < 0).float().mean().item(),
            "nearest_with_partial_chamfer": kept_cd[idx].mean().item(), "paired_diff_with_partial":
                diff_kept.mean().item(), "paired_se_with_partial": (diff_kept.std() / len(idx) ** 0.5).item()
                if len(idx) > 1 else None,
            "model_to_surface": model_off[idx].mean().item(), "nearest_to_surface": near_off[idx].mean().item(),
            "generated_to_surface_median": generated.median().item(),
            "generated_worst_10pct_share": (worst.sum() / generated.sum()).item(),
            "bank": bank, "seconds": seconds, "sampler": sampler,
        })
    return rows


def op_rows(device: str, batch: int, points: int = 2048) -> list[dict]:
    """Each op against its loop reference (one cloud of up to 1 024 points, on the CPU), and alone on
    ``device`` at the model's size (``batch`` clouds of ``points``; FPS to half of them, on CUDA both the
    Triton kernel and the PyTorch loop)."""
    g = torch.Generator().manual_seed(0)
    n = min(1024, points)
    small = torch.rand(1, n, 3, generator=g) * 2 - 1
    centres = small[:, : n // 8]
    feats = torch.randn(1, 32, n, generator=g)
    R = 16
    vox = ops.normalize_coords(small.transpose(1, 2), R).round().long()
    cases = {
        f"farthest point sampling ({n} -> {n // 8})": (lambda: ops.farthest_point_sample(small, n // 8),
                                                      lambda: reference.fps_loop(small, n // 8)),
        f"kNN ({n // 8} queries, k = 16)": (lambda: ops.knn(centres, small, 16),
                                           lambda: reference.knn_loop(centres, small, 16)),
        f"ball query ({n // 8} centres, r = 0.2, k = 32)": (lambda: ops.ball_query(centres, small, 0.2, 32),
                                                           lambda: reference.ball_query_loop(centres, small, 0.2, 32)),
        "voxelize (32 channels, 16^3)": (lambda: ops.voxelize(feats, small.transpose(1, 2), R),
                                         lambda: reference.voxelize_loop(feats, vox, R)),
    }
    rows = []
    for name, (fast, loop) in cases.items():
        t_fast, t_loop = timed(fast, "cpu", repeats=10), timed(loop, "cpu", repeats=1, warmup=0)
        rows.append({"op": name, "vectorised_ms": t_fast * 1e3, "loop_ms": t_loop * 1e3, "speedup": t_loop / t_fast})

    big = (torch.rand(batch, points, 3, generator=g) * 2 - 1).to(device)
    big_feats = torch.randn(batch, 64, points, generator=g).to(device)
    grid, norm = ops.voxelize(big_feats, big.transpose(1, 2), 32)
    half = points // 2
    fps = "Triton" if device == "cuda" and ops._triton_available() else "PyTorch loop"
    at_scale = {
        f"farthest point sampling ({points} -> {half}), {fps}": lambda: ops.farthest_point_sample(big, half),
        **({f"farthest point sampling ({points} -> {half}), PyTorch loop":
            lambda: ops.farthest_point_sample_torch(big, half)} if fps == "Triton" else {}),
        f"kNN ({half} queries, k = 16)": lambda: ops.knn(big[:, :half], big, 16),
        f"ball query ({half} centres, r = 0.1, k = 32)": lambda: ops.ball_query(big[:, :half], big, 0.1, 32),
        "voxelize (64 channels, 32^3)": lambda: ops.voxelize(big_feats, big.transpose(1, 2), 32),
        "trilinear devoxelize (64 channels, 32^3)": lambda: ops.trilinear_devoxelize(grid, norm),
    }
    for name, fn in at_scale.items():
        rows.append({"op": name, "batch": batch, "points": points, "vectorised_ms": timed(fn, device) * 1e3})
    return rows


def metric_rows(device: str, sizes: tuple[int, ...] = (256, 1024, 2048)) -> list[dict]:
    """Chamfer chunked vs dense; Sinkhorn EMD vs exact assignment, with the relative gap, at ``sizes`` points."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for n in sizes:
        x = (torch.rand(4, n, 3, generator=g) * 2 - 1).to(device)
        y = (torch.rand(4, n, 3, generator=g) * 2 - 1).to(device)
        start = time.perf_counter()
        exact = emd_exact(x, y)
        exact_ms = (time.perf_counter() - start) * 1e3
        if device == "cuda":
            emd_approx(x, y)  # warm-up
        start = time.perf_counter()
        approx = emd_approx(x, y)  # (B,) read below: the device has finished when the gap is printed
        approx = approx.cpu()
        sinkhorn_ms = (time.perf_counter() - start) * 1e3
        rows.append({
            "points": n, "pairs": 4,
            "chamfer_chunked_ms": timed(lambda: ops.chamfer_distance(x, y), device) * 1e3,
            "chamfer_dense_ms": timed(lambda: reference.chamfer_dense(x, y), device) * 1e3,
            "chamfer_dense_matrix_MB": 4 * n * n * 3 * 4 / 2**20,  # the (B, N, M, 3) difference tensor
            "emd_exact_ms": exact_ms,
            "emd_sinkhorn_ms": sinkhorn_ms,
            "emd_relative_gap": ((approx - exact.cpu()).abs() / exact.cpu()).max().item(),
        })
    return rows


def cloud_size(text: str) -> int:
    """An argparse ``type``: points a cloud, at least 16 (the domain's ``data.points`` bound)."""
    value = positive_int(text)
    if value < 16:
        raise argparse.ArgumentTypeError(f"must be at least 16, got {value}")
    return value


def spread(se: float | None) -> str:
    """A paired difference's standard error for the table; none of one view."""
    return "–" if se is None else f"{se:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", type=available_device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", default=["tiny", "default", "gpu"])
    parser.add_argument("--batch", type=positive_int, default=8, help="clouds per train step and per op call")
    parser.add_argument("--points", type=cloud_size, default=2048, help="points a cloud (at least 16)")
    parser.add_argument("--steps", type=positive_int, default=3)
    parser.add_argument("--metric-points", type=positive_int, nargs="+",
                        help="cloud sizes of the Chamfer/EMD table (default: those of 256 1024 2048 up to --points)")
    parser.add_argument("--quality", metavar="EXPORT_DIR", help="sample quality against sampler steps")
    parser.add_argument("--samplers", nargs="+", type=sampler_setting, default=SAMPLER_SETTINGS,
                        metavar="SAMPLER:STEPS", help="--quality: the sampler settings to compare")
    parser.add_argument("--temperatures", nargs="+", type=float, default=[1.0],
                        help="--quality: sampling temperatures (sample.temperature) for each sampler setting")
    parser.add_argument("--shapes", type=positive_int, default=64,
                        help="--quality, --denoising, --completion: held-out shapes")
    parser.add_argument("--denoising", metavar="EXPORT_DIR",
                        help="off-surface error of the x0 estimate at small noise (procedural shapes)")
    parser.add_argument("--completion", metavar="EXPORT_DIR",
                        help="completion of held-out partial views against the nearest training shape")
    parser.add_argument("--bank", type=positive_int, default=4000, help="--completion: training shapes searched")
    parser.add_argument("--sample", nargs="+", default=[], metavar="KEY=VALUE",
                        help="--completion: override the export's sample settings, e.g. steps=100 resample=3")
    parser.add_argument("--start", type=diffusion_time,
                        help="--completion: start each completion from the nearest training shape noised to this "
                             "diffusion time, or 1 from noise (default: the export's task.completion_start)")
    parser.add_argument("--profile", metavar="CONFIG", help="print torch.profiler's table of one train step and "
                        "write its Chrome trace beside --out (pointcloud_<CONFIG>_trace.json)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one config, print JSON
    parser.add_argument("--out", type=json_path, default="benchmarks/out/pointcloud.json",
                        help="the JSON (--quality, --completion and --denoising write it with _quality, _completion "
                             "or _denoising before .json)")
    args = parser.parse_args()
    for name in [*args.configs, *([args.profile] if args.profile else [])]:
        if not (CONFIG_DIR / f"{name}.yaml").is_file():
            parser.error(f"no config {name!r} in {CONFIG_DIR}")
    if args.one:
        print(json.dumps(measure_config(args.one, args.device, args.batch, args.points, args.steps)))
        return
    if args.profile:
        profile_step(args.profile, args.device, args.batch, args.points,
                     args.out.with_name(f"pointcloud_{args.profile}_trace.json"))
        return

    if args.quality:
        from pointcloud.domain import PointCloud

        rows = quality_by_sampler(args.quality, args.device, args.samplers, args.temperatures, domain=PointCloud,
                                  num_shapes=args.shapes)
        print(markdown_table([{
            "sampler": r["sampler"], "steps": r["steps"], "temperature": f"{r['temperature']:g}",
            "MMD-CD": f"{r['MMD-CD']:.4f}", "COV-CD": f"{r['COV-CD']:.2f}", "1-NNA-CD": f"{r['1-NNA-CD']:.2f}",
            "blob MMD-CD": f"{r['baseline_gaussian/MMD-CD']:.4f}",
            "blob COV-CD": f"{r['baseline_gaussian/COV-CD']:.2f}",
            "blob 1-NNA-CD": f"{r['baseline_gaussian/1-NNA-CD']:.2f}", "seconds": f"{r['seconds']:.0f}"}
            for r in rows]))
        write_results(beside(args.out, "quality"), {"export": args.quality, "device": args.device,
                                                    "shapes": rows[0]["num_shapes"], "results": rows})
        return

    if args.completion:
        rows = completion_rows(args.completion, args.device, args.shapes, args.bank, args.sample, start=args.start)
        print(markdown_table([{
            "family": r["family"], "views": r["views"], "completion Chamfer": f"{r['model_chamfer']:.4f}",
            "nearest training shape": f"{r['nearest_chamfer']:.4f}",
            "paired difference": f"{r['paired_diff']:+.4f} ± {spread(r['paired_se'])}",
            "model closer": f"{100 * r['model_wins']:.0f}%",
            "nearest, partial kept": f"{r['nearest_with_partial_chamfer']:.4f}",
            "paired difference to it": f"{r['paired_diff_with_partial']:+.4f} ± {spread(r['paired_se_with_partial'])}",
            "to surface: model / nearest": f"{r['model_to_surface']:.4f} / {r['nearest_to_surface']:.4f}",
            "generated points: median, worst 10% share":
                f"{r['generated_to_surface_median']:.5f}, {100 * r['generated_worst_10pct_share']:.0f}%"}
            for r in rows]))
        print(f"nearest of {rows[0]['bank']} training shapes; {rows[0]['sampler']}; completions took "
              f"{rows[0]['seconds']:.0f} s")
        write_results(beside(args.out, "completion"), {"export": args.completion, "results": rows})
        return

    if args.denoising:
        rows = off_surface_rows(args.denoising, args.device, args.shapes)
        print(markdown_table([{"t": r["step"] or "clean", "noisy / alpha": f"{r['noisy_over_alpha']:.5f}",
                               "kNN mean (best k)": f"{r['knn_mean']:.5f}", "x0 estimate": f"{r['model']:.5f}"}
                              for r in rows]))
        write_results(beside(args.out, "denoising"), {"export": args.denoising, "results": rows})
        return

    train, failed = [], []
    for config in args.configs:
        cmd = [sys.executable, __file__, "--one", config, "--device", args.device, "--steps", str(args.steps),
               "--batch", str(args.batch), "--points", str(args.points)]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if result.returncode != 0:
            failed.append(config)
            print(f"{config}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
            continue
        train.append(json.loads(result.stdout.strip().splitlines()[-1]))
    print(markdown_table([{
        "config": r["config"], "params": f"{r['params_M']:.2f} M", "points": r["points"], "batch": r["batch"],
        "s/step": f"{r['step_seconds']:.3f}", "clouds/s": f"{r['clouds_per_second']:.2f}",
        "peak memory": f"{r['peak_memory_MB']:.0f} MB", "ops per forward+backward": r["ops_per_forward_backward"]}
        for r in train]))
    result = {"device": args.device, "train": train}
    write_results(args.out, result)  # after each part: a run stopped from outside keeps what it measured

    op_table = result["ops"] = op_rows(args.device, args.batch, args.points)
    write_results(args.out, result)
    print("\n" + markdown_table([{
        "op": f"{r['op']}{' x' + str(r['batch']) if 'batch' in r else ''}",
        "vectorised (ms)": f"{r['vectorised_ms']:.2f}",
        "loop reference (ms)": f"{r['loop_ms']:.0f}" if "loop_ms" in r else "–",
        "speed-up": f"{r['speedup']:.0f}x" if "loop_ms" in r else "–"} for r in op_table]))

    sizes = args.metric_points or [n for n in (256, 1024, 2048) if n <= args.points] or [args.points]
    metrics = result["metrics"] = metric_rows(args.device, tuple(sizes))
    print("\n" + markdown_table([{
        "points": r["points"],
        "Chamfer chunked / dense (ms)": f"{r['chamfer_chunked_ms']:.1f} / {r['chamfer_dense_ms']:.1f}",
        "dense difference tensor": f"{r['chamfer_dense_matrix_MB']:.0f} MB",
        "EMD exact / Sinkhorn (ms)": f"{r['emd_exact_ms']:.0f} / {r['emd_sinkhorn_ms']:.0f}",
        "Sinkhorn gap": f"{100 * r['emd_relative_gap']:.2f}%"} for r in metrics]))
    write_results(args.out, result)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (the reasons are above)")


if __name__ == "__main__":
    main()
