"""Shape completion and generation with an exported point-cloud model, and partial scans to try it on.

    multigen-complete --checkpoint EXPORT --input PARTIAL --num K --out OUT_DIR
    multigen-pointcloud sample   --checkpoint EXPORT --num N --out OUT_DIR
    multigen-pointcloud complete ...  (the same as multigen-complete)
    multigen-pointcloud scan     --input MESH --out scan.ply [--view X Y Z]

``scan`` makes a partial to try completion on: the points of a mesh (or cloud) that a depth
sensor looking from ``--view`` (a direction from the shape's centre) would see.

PARTIAL is ``.ply/.npy/.xyz/.obj/.off/.stl`` (meshes are sampled) or a ``.pt`` file holding a
torch_geometric ``Data`` (its ``pos``). The partial is
mapped into the model's frame (``--normalize data``: with the centre and scale recorded
from the training data, for models trained with global normalisation; ``partial``: centred
on its bounding box, its half-diagonal scaled to ``--partial-radius``; ``none``: taken as
is; ``auto``, the default: ``data`` when recorded, else ``partial``), completed, and the
generated points are mapped back. Every output ``.ply`` holds every input
point unchanged followed by the generated points; ``completions.pt`` holds them all as a
torch_geometric ``Batch`` (``pos``, ``batch``, ``observed``; ``samples.pt`` for ``sample``);
``completions.png`` shows the partial in red and the generated points in blue. ``--start T`` below 1
starts each completion from the nearest training shape holding the partial, noised to diffusion time
``T`` (retrieval, then diffusion: the model's ``task.completion_start`` by default).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from multigen import Known
from multigen.cli import (add_export_arguments, add_sampler_arguments, diffusion_time, load_export, output_folder,
                          positive_float, positive_int, run_command, seeded_generator)

from .domain import GENERATED_COLOR, PARTIAL_COLOR
from .io import PointCloudError, read_points, render_clouds, write_ply, write_plys
from .ops import farthest_point_sample, gather_points
from .pyg import to_batch
from .views import visible_points, viewpoint_towards


def _to_model_frame(points: np.ndarray, how: str, radius: float, normalizer,
                    source: str = "the partial") -> tuple[np.ndarray, float]:
    """``(centre (3,), scale)`` with model-frame points ``(points - centre) / scale``."""
    if how == "auto":
        how = "data" if normalizer.mode == "global" else "partial"
    if how == "data":
        if normalizer.mode != "global":
            raise PointCloudError("--normalize data needs a model trained with data.normalization=global")
        return normalizer.centre.double().numpy(), normalizer.scale
    if how == "none":
        return np.zeros(3), 1.0
    lo, hi = points.min(0), points.max(0)
    half_diagonal = float(np.linalg.norm(hi - lo)) / 2
    if half_diagonal == 0:
        raise PointCloudError(f"{source}: all {len(points)} points coincide, and --normalize partial scales the "
                              f"partial by its extent (give --normalize none or data for points already in place)")
    return (lo + hi) / 2, half_diagonal / radius


def _check_class(args: argparse.Namespace, names: list[str]) -> None:
    """``--class`` needs a class-conditional model (``names``: its classes)."""
    if args.cls is not None and not names:
        raise PointCloudError(f"--class {args.cls}: this model is not class-conditional (model.class_conditional=false,"
                              f" or fewer than two classes)")


def cmd_complete(args: argparse.Namespace) -> Path:
    out = output_folder(args.out)
    p = load_export(args, "pointcloud")
    _check_class(args, p.domain.class_names)
    d, task = p.domain.cfg.data, p.domain.cfg.task
    limit = args.max_partial or task.partial_points
    if not 0 < limit < d.points:
        raise PointCloudError(f"--max-partial must be between 1 and {d.points - 1} (the model's cloud size)")
    # a mesh is sampled to `limit` surface points; a .ply is its points (a scan may be stored triangulated)
    partial = read_points(args.input, num_points=limit, ply_as_points=True)
    if p.domain.cfg.task.completion == 0:
        print("note: this model was trained for generation only (task.completion=0); completions keep the partial "
              "exactly but were not trained for it")
    centre, scale = _to_model_frame(partial, args.normalize, args.partial_radius, p.domain.normalizer, args.input)
    observed = torch.from_numpy((partial - centre) / scale).float()
    if len(observed) > limit:
        print(f"note: {args.input} has {len(observed)} points; conditioning on {limit} of them chosen by farthest "
              f"point sampling (every input point is still written to the outputs)")
        observed = gather_points(observed[None], farthest_point_sample(observed[None], limit))[0]
    P = len(observed)
    values = torch.zeros(args.num, d.points, 3)
    values[:, :P] = observed
    mask = torch.zeros(args.num, d.points, dtype=torch.bool)
    mask[:, :P] = True
    with torch.no_grad():
        done = p.domain.sample(p.model, args.num, known=Known(mask.to(args.device), values.to(args.device)),
                               condition=args.cls, steps=args.steps, sampler=args.sampler, guidance=args.guidance,
                               guidance_interval=args.guidance_interval, generator=seeded_generator(args),
                               progress=True, start=args.start)
    generated = done[:, P:].double().cpu().numpy() * scale + centre
    # a dense scan would hide the generated points: draw it faint when it outnumbers them
    partial_rgba = np.array([[*PARTIAL_COLOR, min(1.0, max(0.15, generated.shape[1] / len(partial)))]] * len(partial))
    clouds, colors = [], []
    dtype = np.result_type(partial.dtype, np.float32)  # an integer or float16 scan must not round what is generated
    for i, g in enumerate(generated):
        cloud = np.concatenate([partial.astype(dtype), g.astype(dtype)])
        write_ply(out / f"completion_{i:03d}.ply", cloud)
        clouds.append(cloud)
        colors.append(np.concatenate([partial_rgba, np.array([[*GENERATED_COLOR, 1.0]] * len(g))]))
    observed = torch.arange(len(clouds[0])) < len(partial)
    torch.save(to_batch(torch.from_numpy(np.stack(clouds)), observed.expand(len(clouds), -1)), out / "completions.pt")
    render_clouds([partial, *clouds], out / "completions.png", colors=[partial_rgba, *colors],
                  titles=["partial", *[f"completion {i}" for i in range(len(clouds))]])
    return out


def cmd_sample(args: argparse.Namespace) -> Path:
    out = output_folder(args.out)
    p = load_export(args, "pointcloud")
    g, names = seeded_generator(args), p.domain.class_names
    _check_class(args, names)
    # a class-conditional model's classes are drawn here (unless given), so that each sample's can be named
    labels = p.domain.sample_labels(args.num, args.cls, True, g, torch.device(args.device)) if names else None
    with torch.no_grad():
        clouds = p.domain.sample(p.model, args.num, condition=labels, steps=args.steps, sampler=args.sampler,
                                 guidance=args.guidance, guidance_interval=args.guidance_interval, generator=g,
                                 progress=True).float().cpu()
    clouds = p.domain.normalizer.invert(clouds).numpy()  # in the training data's units (global normalization)
    write_plys(out, clouds)
    torch.save(to_batch(torch.from_numpy(clouds)), out / "samples.pt")
    titles = [f"sample {i}" for i in range(len(clouds))]
    if labels is not None:
        titles = [f"{title}: {names[k]}" for title, k in zip(titles, labels.tolist())]
        print("classes: " + ", ".join(f"sample {i} {names[k]}" for i, k in enumerate(labels.tolist())))
    render_clouds(list(clouds), out / "samples.png", titles=titles)
    return out


def cmd_scan(args: argparse.Namespace) -> Path:
    if Path(args.out).suffix.lower() != ".ply":
        raise PointCloudError(f"--out {args.out}: the scan is written as .ply")
    points = read_points(args.input, num_points=args.points, seed=args.seed, need_extent=True)
    direction = np.random.default_rng(args.seed).normal(size=3) if args.view is None else np.array(args.view)
    eye = viewpoint_towards(points, direction)
    scan = points[visible_points(points, eye)]
    print(f"{args.input}: {len(scan)} of {len(points)} points visible from {np.round(eye, 4).tolist()}")
    out = write_ply(args.out, scan)
    colors = np.array([PARTIAL_COLOR] * len(scan))
    render_clouds([points, scan], out.with_suffix(".png"), colors=[np.array([GENERATED_COLOR] * len(points)), colors],
                  titles=["input", "scan"])
    return out


def _common(p: argparse.ArgumentParser) -> None:
    add_export_arguments(p)
    add_sampler_arguments(p, guidance_help="class-conditional models: classifier-free guidance scale on --class "
                                           "(default: the model's)")
    p.add_argument("--num", type=positive_int, default=4)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--class", dest="cls", metavar="NAME",
                   help="class-conditional models (model.class_conditional): the class of every output (default: "
                        "sample draws each one's class in the training proportions, complete uses none)")


def _complete_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--input", required=True,
                   help="partial cloud: .ply/.npy/.xyz, a PyG Data .pt, or a mesh .obj/.off/.stl")
    p.add_argument("--normalize", choices=["auto", "data", "partial", "none"], default="auto",
                   help="data: the training data's recorded centre/scale (input in the data's units); partial: fit "
                        "the partial's bounding box into the model's frame; none: input is in it; auto: data when "
                        "the model recorded them, else partial")
    p.add_argument("--partial-radius", type=positive_float, default=0.8,
                   help="--normalize partial: half-diagonal of the partial in the model's frame")
    p.add_argument("--max-partial", type=positive_int, help="most input points conditioned on (default: the model's)")
    p.add_argument("--start", type=diffusion_time, metavar="T",
                   help="below 1: start from the nearest of the model's training shapes holding the partial, noised "
                        "to diffusion time T (its training data must be at hand: built in, or data.root); 1: from "
                        "noise (default: the model's task.completion_start)")
    p.set_defaults(func=cmd_complete)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multigen-pointcloud", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sample", help="generate shapes")
    _common(p)
    p.set_defaults(func=cmd_sample)
    _complete_args(sub.add_parser("complete", help="complete a partial scan"))
    p = sub.add_parser("scan", help="the part of a mesh or cloud visible from one viewpoint, as a .ply")
    p.add_argument("--input", required=True, help="a mesh (.obj/.off/.stl/.ply, sampled) or points (.npy/.xyz/.ply)")
    p.add_argument("--out", required=True, help="output .ply (a .png view is written next to it)")
    p.add_argument("--view", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="direction from the shape's centre to the sensor (default: random by --seed)")
    p.add_argument("--points", type=positive_int, default=8192, help="points sampled from a mesh's surface")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_scan)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv), "multigen-pointcloud")


def build_complete_parser() -> argparse.ArgumentParser:
    """``multigen-complete``: ``multigen-pointcloud complete`` as a command of its own."""
    parser = argparse.ArgumentParser(prog="multigen-complete", description="Complete a partial point cloud.")
    _complete_args(parser)
    return parser


def complete_main(argv: list[str] | None = None) -> int:
    return run_command(build_complete_parser().parse_args(argv), "multigen-complete")


if __name__ == "__main__":
    sys.exit(main())
