"""``multigen-video``: predict, interpolate and sample videos with an exported video model.

    multigen-video predict     --checkpoint EXPORT --input VIDEO --context K --frames N [--past] --out OUT
    multigen-video interpolate --checkpoint EXPORT --input VIDEO --between M --out OUT
    multigen-video sample      --checkpoint EXPORT --num N --frames F --out OUT_DIR

VIDEO is a video file, a ``.gif``, a uint8 ``.npy`` ``(T, H, W, C)`` or a folder of frame images;
OUT is ``.mp4``, ``.gif``, ``.npy`` (uint8 ``(T, H, W, C)``) or a new folder (a path without a
suffix) of PNG frames. Input frames are resized and centre-cropped to the model's size; observed
frames appear unchanged in the output (bit-exactly in ``.npy`` and PNG frames when the input
already has the model's size).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from multigen.cli import (add_export_arguments, add_sampler_arguments, load_export, output_folder, positive_int,
                          run_command, seeded_generator)

from .data import frames_to_clip
from .io import count_frames, read_video, save_clip_grid, to_uint8, writable, write_video
from .sampling import VideoSampleConfig, extend_autoregressive, extend_hierarchical, interpolate


def _settings(args: argparse.Namespace, domain) -> VideoSampleConfig:
    """The model's sampling settings with the command line's ``--sampler``, ``--steps``, ``--guidance``,
    ``--guidance-interval``, ``--temperature``, ``--frame-delay``, ``--context-noise``."""
    return domain.sample_settings(sampler=args.sampler, steps=args.steps, guidance=args.guidance,
                                  guidance_interval=args.guidance_interval, temperature=args.temperature,
                                  frame_delay=args.frame_delay, context_noise=args.context_noise)


def _options(args: argparse.Namespace, domain) -> dict:
    """What every generation call takes besides the settings: the RNG and the model's residual mode."""
    return {"generator": seeded_generator(args), **domain.model_options()}


def _read_clip(args: argparse.Namespace, domain, indices: list[int] | None = None) -> torch.Tensor:
    """``(1, T, C, size, size)`` on ``args.device``: the frames of ``args.input`` at ``indices`` (None: all)."""
    d = domain.cfg.data
    frames = read_video(args.input, indices)
    return frames_to_clip(frames, d.size, d.channels).to(args.device)[None]


def cmd_predict(args: argparse.Namespace) -> Path:
    writable(args.out)
    p = load_export(args, "video")
    K, window = args.context, p.domain.cfg.data.frames
    stride = args.stride or p.domain.cfg.data.stride
    n = count_frames(args.input)
    available = (n - 1) // stride + 1  # frames at the model's rate: every stride-th, from the first (or last)
    rate = f" taken every {stride}" if stride > 1 else ""
    if not 0 < K <= available:
        raise ValueError(f"--context {K} must be between 1 and the {available} frames{rate} of {args.input}")
    if args.frames <= K:
        raise ValueError(f"--frames {args.frames} must exceed --context {K}")
    # decode only the context: the first K frames at the model's rate (with --past, the last K)
    clip = _read_clip(args, p.domain, [n - 1 - stride * i for i in reversed(range(K))] if args.past
                      else [stride * i for i in range(K)])
    keep = min(K, window - 1)  # the frames a window can condition on: those nearest the generated ones
    if keep < K:
        print(f"note: the model's window is {window} frames; conditioning on the {'first' if args.past else 'last'} "
              f"{keep} context frames")
    if args.past:  # the last K frames; a window conditions on the first `keep` of them
        near, rest = clip[:, :keep], clip[:, keep:]
    else:
        near, rest = clip[:, K - keep : K], clip[:, : K - keep]
    extend = extend_hierarchical if args.mode == "hierarchical" else extend_autoregressive
    with torch.no_grad():
        new = extend(p.model, p.domain.diffusion, near, args.frames - (K - keep), window, _settings(args, p.domain),
                     progress=True, past=args.past, **_options(args, p.domain))
    video = torch.cat([new, rest] if args.past else [rest, new], dim=1)
    return write_video(args.out, to_uint8(video[0]), fps=args.fps)


def cmd_interpolate(args: argparse.Namespace) -> Path:
    writable(args.out)
    p = load_export(args, "video")
    clip = _read_clip(args, p.domain)
    if clip.shape[1] < 2:
        raise ValueError(f"{args.input} has {clip.shape[1]} frame(s); interpolation needs at least 2")
    with torch.no_grad():
        video = interpolate(p.model, p.domain.diffusion, clip, args.between, _settings(args, p.domain),
                            window=p.domain.cfg.data.frames, progress=False, **_options(args, p.domain))
    return write_video(args.out, to_uint8(video[0]), fps=args.fps)


def cmd_sample(args: argparse.Namespace) -> Path:
    out = output_folder(args.out)
    p = load_export(args, "video")
    d = p.domain.cfg.data
    empty = torch.zeros(args.num, 0, d.channels, d.size, d.size, device=args.device)
    settings = _settings(args, p.domain)
    # generation: the keyframes' window and the gaps filled between them, all at the unconditional temperature
    # (or --temperature); the config's temperature is tuned for prediction
    t = args.temperature if args.temperature is not None else settings.sampler_arguments(observed=False)["temperature"]
    settings = dataclasses.replace(settings, temperature=t, unconditional_temperature=t)
    # every output checked before the work that fills it (a folder of PNG frames must not hold frames already)
    paths = [writable(out / (f"sample_{i:03d}" if args.format == "png" else f"sample_{i:03d}.{args.format}"))
             for i in range(args.num)]
    with torch.no_grad():
        videos = extend_hierarchical(p.model, p.domain.diffusion, empty, args.frames or d.frames, d.frames, settings,
                                     progress=True, **_options(args, p.domain))
    for path, v in zip(paths, videos):
        write_video(path, to_uint8(v), fps=args.fps)
    save_clip_grid(videos.float().cpu(), out / "grid", fps=args.fps)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multigen-video", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        add_export_arguments(p)
        add_sampler_arguments(p, guidance_help="classifier-free guidance scale on the observed frames (default: the "
                                               "model's)")
        p.add_argument("--temperature", type=float,
                       help="sampling noise scale: below 1 is less diverse and nearer the mean (default: the "
                            "config's temperature; for `sample`, its unconditional_temperature, for every frame)")
        p.add_argument("--frame-delay", type=int,
                       help="models trained with task.per_frame: start each generated frame this many dpm_solver_pp "
                            "steps after the one before it, counting from the observed frames (default: the model's)")
        p.add_argument("--context-noise", type=float,
                       help="models trained with task.context_noise: show the network the observed frames noised to "
                            "this diffusion time, at most the trained one (default: the model's)")
        p.add_argument("--fps", type=positive_int, default=8, help="frame rate of an .mp4 or .gif output (default 8)")

    p = sub.add_parser("predict", help="continue a video from its first frames (or, with --past, its last ones "
                                       "backward)")
    common(p)
    p.add_argument("--input", required=True,
                   help="video: a file (.mp4/.m4v/.avi/.webm/.mov/.mkv/.gif/.npy) or a folder of frame images")
    p.add_argument("--context", type=int, required=True,
                   help="observed frames taken from the start of --input (with --past: from its end)")
    p.add_argument("--frames", type=int, required=True, help="total frames of the output, context included")
    p.add_argument("--mode", choices=["autoregressive", "hierarchical"], default="autoregressive")
    p.add_argument("--past", action="store_true", help="predict the frames before the context instead of after it")
    p.add_argument("--stride", type=positive_int,
                   help="take every this-many-th frame of --input as the context (default: the model's data.stride, "
                        "the frame rate it was trained at)")
    p.add_argument("--out", required=True, help=".mp4, .gif, .npy, or a new folder (no suffix) of PNG frames")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("interpolate", help="insert frames between every pair of input frames")
    common(p)
    p.add_argument("--input", required=True, help="keyframes: a video file (.mp4/.m4v/.avi/.webm/.mov/.mkv/.gif), a "
                                                  "uint8 .npy (T, H, W, C) or a folder of frame images")
    p.add_argument("--between", type=int, default=3, help="frames inserted between consecutive input frames (a gap "
                   "longer than the model's window: evenly spaced frames first, then the gaps between them)")
    p.add_argument("--out", required=True, help=".mp4, .gif, .npy, or a new folder (no suffix) of PNG frames")
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser("sample", help="unconditional videos (longer than the window: keyframes then infilling)")
    common(p)
    p.add_argument("--num", type=positive_int, default=4)
    p.add_argument("--frames", type=positive_int, help="frames per video (default: the model's window)")
    p.add_argument("--format", choices=["gif", "mp4", "npy", "png"], default="gif",
                   help="png: a folder of PNG frames a sample (default %(default)s)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv), "multigen-video")


if __name__ == "__main__":
    sys.exit(main())
