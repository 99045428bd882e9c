"""``multigen-discrete``: sample, infill and score text, tokens and label maps with an exported D3PM model.

    multigen-discrete sample --checkpoint EXPORT --num N [--length L] [--steps S] [--prompt TEXT]
                             [--infill TEXT --mask-char _] [--temperature T] [--min-p P] [--remask R]
                             [--out DIR [--infill-map MAP --hole-id 255]]
    multigen-discrete eval   --checkpoint EXPORT --data FILE [--steps S | --any-order | --orders K]

``--prompt`` keeps TEXT as the start of every sample; ``--infill`` keeps every character of TEXT except the mask
characters, which are generated. Grid models (label maps, digits) write their samples to ``--out DIR``: one image a
sample (label maps as label images whose pixel values are the class ids, palette PNGs up to 256 classes, which
``eval --data DIR`` reads back), and ``DIR.png`` beside the folder showing them all; ``--infill-map MAP`` keeps
every pixel of the label image MAP except those of ``--hole-id`` (255), which are generated. A label-map model's
``eval --data`` is a folder of label images, one of them, or a ``.npy`` (N, H, W); digit models are not scored here.
``eval`` prints the negative ELBO in bits per token (bits per character for text models, per pixel for
label maps) with its standard error over the scored sequences: every one of the T terms (S with ``--steps``) is
kept, but each is a one-sample Monte Carlo estimate, so the figure is an unbiased estimate of the bound, not its
exact value. ``--orders K`` (absorbing models) prints the tighter bound importance-weighted over K random orders
instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset

from multigen.cli import add_export_arguments, load_export, output_folder, positive_int, run_command, seeded_generator
from multigen.samplers import Known

from .data import TokenWindows, read_text, read_tokens
from .domain import mean_and_stderr, save_grid_picture
from .labels import LabelMaps, check_ids, read_label_image, read_label_maps, write_label_image


def _known(domain, args: argparse.Namespace, length: int) -> Known | None:
    """The given tokens (``mask`` and ``values`` ``(num, length)``) from ``--prompt`` or ``--infill``."""
    if args.prompt is None and args.infill is None:
        return None
    if domain.tokenizer is None:
        raise ValueError("--prompt and --infill need a text model")
    text = args.prompt if args.prompt is not None else args.infill
    if len(text) > length:
        raise ValueError(f"the {'prompt' if args.prompt is not None else 'infill text'} has {len(text)} characters; "
                         f"the samples have {length} (set --length)")
    given = torch.zeros(length, dtype=torch.bool)
    values = torch.zeros(length, dtype=torch.long)
    if args.prompt is not None:
        given[: len(text)] = True
        values[: len(text)] = domain.tokenizer.encode(text, source="--prompt")
    else:
        keep = torch.tensor([c != args.mask_char for c in text], dtype=torch.bool)
        kept = "".join(c for c in text if c != args.mask_char)
        ids = domain.tokenizer.encode(kept, source="--infill")
        given[: len(text)] = keep
        values[: len(text)][keep] = ids
    return Known(given.expand(args.num, -1).to(args.device), values.expand(args.num, -1).to(args.device))


def cmd_sample(args: argparse.Namespace) -> Path | None:
    p = load_export(args, "discrete")
    domain = p.domain
    if domain.grid:
        return _sample_grids(p, args)
    if args.out is not None or args.infill_map is not None:
        raise ValueError("--out and --infill-map are for grid models (label maps, digits); text and token samples "
                         "are printed")
    if len(args.mask_char) != 1:
        raise ValueError(f"--mask-char must be one character, got {args.mask_char!r}")
    limit = domain.cfg.data.length
    if args.length and args.length > limit:
        raise ValueError(f"--length {args.length} exceeds the model's maximum sequence length {limit}")
    length = args.length or (len(args.infill) if args.infill else limit)
    if length > limit:  # an infill text sets the length when --length is not given
        raise ValueError(f"the infill text has {length} characters, more than the model's maximum sequence length "
                         f"{limit}")
    known = _known(domain, args, length)
    g = seeded_generator(args)
    with torch.no_grad():
        tokens = domain.sample(p.model, args.num, known=known, steps=args.steps, temperature=args.temperature,
                               min_p=args.min_p, remask=args.remask, length=length, generator=g,
                               progress=True)
    texts = domain.decode(tokens) if domain.tokenizer else [" ".join(map(str, r.tolist())) for r in tokens]
    for i, text in enumerate(texts):
        print(f"--- sample {i} ---\n{text}")


def _sample_grids(p, args: argparse.Namespace) -> Path:
    """``--num`` grids as ``sample_000.png``... in the folder ``--out`` (refused where samples already are), and all
    of them in one picture beside it, ``<out>.png``."""
    domain = p.domain
    if args.out is None:
        raise ValueError(f"this model draws {domain.cfg.data.source} grids: name a folder for them with --out")
    if args.prompt is not None or args.infill is not None or args.length:
        raise ValueError("--prompt, --infill and --length are for text and token models; this one draws "
                         f"{domain.cfg.data.source} grids of shape {domain.sample_shape()}")
    known = _known_map(domain, Path(args.infill_map), args.hole_id) if args.infill_map is not None else None
    out = Path(args.out)
    if out.suffix.lower() == ".png":
        raise ValueError(f"--out {out} names a picture; it is the folder for the samples (their overview is written "
                         f"beside it as <folder>.png)")
    out = output_folder(out)
    if any(out.glob("sample_*.png")):
        raise ValueError(f"{out} already holds samples (sample_*.png); name a new folder")
    with torch.no_grad():
        grids = domain.sample(p.model, args.num, known=known, steps=args.steps, temperature=args.temperature,
                              min_p=args.min_p, remask=args.remask, generator=seeded_generator(args),
                              progress=True).cpu()
    pictures = domain.picture(grids)
    for i, (grid, picture) in enumerate(zip(grids, pictures)):
        if domain.cfg.data.source == "labels":
            write_label_image(grid, out / f"sample_{i:03d}.png", domain.data_vocab)
        else:
            save_grid_picture(picture[None], out / f"sample_{i:03d}.png")
    print(f"wrote {len(grids)} samples to {out}")
    out = out.resolve()
    return save_grid_picture(pictures, out.with_name(out.name + ".png"))


def _known_map(domain, path: Path, hole_id: int) -> Known:
    """The pixels of the label image ``path`` to keep: all but those of ``hole_id``, after the image is resized and
    cut as held-out maps are (``mask`` and ``values`` ``(size, size)``)."""
    if domain.cfg.data.source != "labels":
        raise ValueError(f"--infill-map is for label-map models; this one draws {domain.cfg.data.source} grids")
    m = LabelMaps([read_label_image(path)], domain.cfg.data.size, random_crop=False)[0]
    hole = m == hole_id
    if not hole.any():
        raise ValueError(f"{path} has no pixel of --hole-id {hole_id} (after it is cut to {tuple(m.shape)}): "
                         f"nothing to generate")
    values = m.masked_fill(hole, 0)
    check_ids([values], [str(path)], domain.data_vocab)
    return Known(~hole, values)


def cmd_eval(args: argparse.Namespace) -> None:
    p = load_export(args, "discrete")
    domain = p.domain
    d = domain.cfg.data
    if args.pattern is not None and d.source != "labels":
        raise ValueError(f"--pattern picks label images; this is a {d.source} model")
    if d.source == "labels":
        if args.length:
            raise ValueError(f"--length is for text and token models; label maps are scored as {d.size}x{d.size} "
                             f"centred squares")
        maps, names = read_label_maps(args.data, args.pattern or d.pattern)
        check_ids(maps, names, d.vocab_size)
        items: Dataset = LabelMaps(maps, d.size, random_crop=False)
    elif d.source in ("text", "tokens"):
        tokens = (domain.tokenizer.encode(read_text(args.data), source=args.data) if d.source == "text"
                  else read_tokens(args.data, d.vocab_size))
        items = TokenWindows(tokens, args.length or d.length, source=args.data)
    else:
        raise ValueError("eval reads text or token files and label maps; this is a digit-grid model")
    data = torch.stack([items[i] for i in range(len(items))])  # type: ignore[arg-type]
    if args.max_sequences:
        data = data[: args.max_sequences]
    if (args.any_order or args.orders > 1) and domain.cfg.process.transition != "absorbing":
        raise ValueError(f"--any-order and --orders need an absorbing model; this one is "
                         f"{domain.cfg.process.transition}")
    bits = domain.elbo_bits(p.model, data, args.batch_size, steps=args.steps, progress=True, any_order=args.any_order,
                            orders=args.orders)
    mean, stderr = mean_and_stderr(bits)
    unit = {"text": "bits/char", "labels": "bits/pixel"}.get(d.source, "bits/token")
    spread = (f" ± {stderr:.4f}", "; ± one standard error over sequences") if len(data) > 1 else ("", "")
    scored = f"over {data.numel()} tokens in {len(data)} sequence(s)"
    if args.orders > 1:
        print(f"{args.data}: {mean:.4f}{spread[0]} {unit} (the bound importance-weighted over {args.orders} random "
              f"orders a sequence, {scored}: above the negative log-likelihood of the model that reveals one token "
              f"per step in a random order, in expectation, and tighter than its ELBO{spread[1]})")
        return
    chain = ("continuous time, one random order per sequence" if args.any_order
             else f"{args.steps or domain.cfg.process.timesteps} steps")
    print(f"{args.data}: {mean:.4f}{spread[0]} {unit} (negative ELBO {scored}, {chain}; every term a one-sample "
          f"Monte Carlo estimate, so unbiased, not exact{spread[1]})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multigen-discrete", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="generate, continue a prompt, or infill masked characters")
    add_export_arguments(p)
    p.add_argument("--num", type=positive_int, default=4)
    p.add_argument("--length", type=positive_int, help="tokens per sample (default: the model's length)")
    p.add_argument("--steps", type=int,
                   help="denoising steps, at most the model's timesteps unless it is of the masked objective (then "
                        "more run a finer chain); 0: every timestep (default: config)")
    p.add_argument("--temperature", type=float, help="scales the model's x0 logits (default: config)")
    p.add_argument("--min-p", type=float, help="drops each token's classes less likely than this share of its most "
                                               "likely one; 0: none (default: config)")
    p.add_argument("--remask", type=float, help="absorbing models: the most a visible token is masked again a step, "
                                                "to be redrawn in a fuller context (ReMDM); 0: never (default: config; "
                                                "unset there, 0.1 for absorbing chains)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="grid models: the folder for the samples' images")
    p.add_argument("--infill-map", help="label-map models: a label image whose --hole-id pixels are generated, the "
                                        "rest kept (resized and cut to the model's size as held-out maps are)")
    p.add_argument("--hole-id", type=int, default=255,
                   help="the --infill-map value that marks a pixel to generate (default %(default)s)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--prompt", help="text every sample starts with")
    group.add_argument("--infill", help="text whose --mask-char characters are generated, the rest kept")
    p.add_argument("--mask-char", default="_", help="the --infill character that marks a position to generate "
                                                     "(default %(default)s)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="negative ELBO in bits per token of a file (an unbiased estimate, with its s.e.)")
    add_export_arguments(p)
    p.add_argument("--data", required=True, help="a UTF-8 text file (text models), a 1-D .npy token array, or "
                                                 "label maps: a folder of label images or a .npy (N, H, W)")
    p.add_argument("--pattern", help="label maps: the names of the label images in the folder (default: the "
                                     "model's data.pattern)")
    p.add_argument("--length", type=positive_int, help="tokens per scored sequence (default: the model's length)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--max-sequences", type=positive_int, help="score only the first N sequences")
    p.add_argument("--steps", type=int,
                   help="score the chain that sampling with this many steps runs (default: every timestep)")
    p.add_argument("--any-order", action="store_true",
                   help="absorbing models: score the continuous-time bound instead (one token revealed per step)")
    p.add_argument("--orders", type=positive_int, default=1,
                   help="absorbing models: above 1, the continuous-time bound importance-weighted over this many "
                        "random orders a sequence (tighter; this many times the model calls)")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv), "multigen-discrete")


if __name__ == "__main__":
    sys.exit(main())
