"""The one training loop every domain uses, built on Hugging Face Accelerate.

Read top to bottom: set up Accelerate, the model, its EMA copy, the optimiser and
a resumable data stream; resume from the newest complete checkpoint; then per
optimiser step accumulate gradients, stop on a non-finite loss, clip, step,
update the EMA, and periodically log, sample, evaluate and checkpoint; finally
export the EMA weights.

Output directory layout (``train.output_dir``)::

    config.yaml                  the resolved config of the run
    log.jsonl                    training loss, learning rate and evaluation metrics, one JSON record a line
    logs/                        TensorBoard event files
    samples/step_000500.png      what the EMA model draws (domain-specific format)
    checkpoints/step_500/        Accelerate state (written as .tmp_step_500, then renamed)
    export/                      model.safetensors (EMA) + config.yaml, for load_pretrained
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, send_to_device, set_seed
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from .config import flatten, to_yaml
from .domain import Domain
from .export import export_model

log = logging.getLogger("multigen")
CHECKPOINT = re.compile(r"^step_(\d+)$")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; nothing was updated or saved at that step."""


@dataclass
class TrainState:
    """Counters saved with every checkpoint."""

    step: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


class ShardedStreamSampler(Sampler[int]):
    """An endless stream of dataset indices: epoch ``e`` is a permutation seeded by ``seed + e``.

    Process ``rank`` of ``world`` takes every ``world``-th index of each epoch, and
    the stream starts ``start`` indices in, so a resumed run reads exactly the
    data an uninterrupted one would have.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0) -> None:
        if size < world:
            raise ValueError(f"dataset of {size} items cannot be split over {world} processes")
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.per_rank = size // world
        self.start = start

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.size, generator=g)[: self.per_rank * self.world]
            yield from perm[self.rank :: self.world][offset:].tolist()
            epoch, offset = epoch + 1, 0


def lr_factor(step: int, warmup: int, max_steps: int, decay: str) -> float:
    """Multiplier of ``train.lr`` at optimiser step ``step`` (0-based): linear warmup over ``warmup`` steps,
    then constant (``decay="none"``) or a half cosine reaching 0 at ``max_steps`` (``"cosine"``)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if decay == "none":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None (temp dirs are ignored)."""
    if not checkpoint_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in checkpoint_dir.iterdir() if (m := CHECKPOINT.match(p.name))]
    return max(found)[1] if found else None


def save_checkpoint(accelerator: Accelerator, checkpoint_dir: Path, step: int, keep: int) -> Path:
    """``save_state`` to a temp name, rename to ``step_<N>`` and prune to the newest ``keep``."""
    final = checkpoint_dir / f"step_{step}"
    tmp = checkpoint_dir / f".tmp_step_{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        done = sorted((int(m.group(1)), p) for p in checkpoint_dir.iterdir() if (m := CHECKPOINT.match(p.name)))
        for _, old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_log(output_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``<output_dir>/log.jsonl`` (loss, learning rate, ``eval/*`` metrics), in order."""
    return [json.loads(line) for line in (Path(output_dir) / "log.jsonl").read_text().splitlines()]


def _write_samples(domain: Domain, model: torch.nn.Module, path: Path, accelerator: Accelerator) -> Path:
    s = domain.cfg.sample
    g = torch.Generator(device=accelerator.device).manual_seed(s.seed)  # same noise every time: comparable
    with accelerator.autocast():
        samples = domain.sample(model, s.num, generator=g)
    samples = samples.cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    return domain.save_samples(samples.float() if samples.is_floating_point() else samples, path)


def train(domain_cls: type[Domain], cfg: Any) -> Path:
    """Train ``domain_cls`` with ``cfg`` (resuming if a checkpoint exists); return the export directory."""
    t = cfg.train
    out = Path(t.output_dir)
    accelerator = Accelerator(
        # With no accelerator present, processes started by torchrun or `accelerate launch --multi_gpu`
        # form a CPU (gloo) group; Accelerate only does that when told it runs on the CPU.
        cpu=t.cpu or not torch.accelerator.is_available(),
        mixed_precision=t.mixed_precision,
        log_with="tensorboard" if t.tensorboard else None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    main = accelerator.is_main_process
    if accelerator.device.type == "cpu":
        # `accelerate launch` sets OMP_NUM_THREADS=1 unless told --cpu; share the cores between local processes.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        torch.set_num_threads(t.cpu_threads or max(1, (os.cpu_count() or 1) // local))
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg))

    set_seed(t.seed)  # identical initial weights on every process
    domain = domain_cls(cfg)
    model = domain.build_model()
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True).eval()
    ema.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=tuple(t.adam_betas), weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, t.warmup_steps, t.max_steps, t.lr_decay))
    raw_model = model
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.to(accelerator.device)
    state = TrainState()
    accelerator.register_for_checkpointing(scheduler, ema, state)

    checkpoint_dir = out / "checkpoints"
    resume_from = latest_checkpoint(checkpoint_dir) if t.resume else None
    if resume_from is not None:
        accelerator.load_state(str(resume_from))  # weights, optimiser, EMA, schedule, step and RNG states
        accelerator.print(f"resumed from {resume_from} at step {state.step}")
    else:
        set_seed(t.seed, device_specific=True)  # independent noise on every process

    train_set: Dataset = domain.build_dataset("train")
    val_set: Dataset | None = None
    sampler = ShardedStreamSampler(
        len(train_set),  # type: ignore[arg-type]
        seed=t.seed,
        rank=accelerator.process_index,
        world=accelerator.num_processes,
        start=state.step * t.grad_accum * t.batch_size,
    )
    loader = DataLoader(
        train_set,
        batch_size=t.batch_size,
        sampler=sampler,
        num_workers=t.num_workers,
        collate_fn=domain.collate_fn,
        drop_last=True,
        pin_memory=accelerator.device.type == "cuda",
        generator=torch.Generator().manual_seed(t.seed),  # keeps DataLoader seeding off the global RNG
    )
    data = iter(loader)

    if t.tensorboard:
        accelerator.init_trackers("multigen", config=flatten(cfg))
    if main:
        n_params = sum(p.numel() for p in raw_model.parameters())
        accelerator.print(
            f"{domain.name}: {n_params / 1e6:.2f}M parameters, {accelerator.num_processes} process(es) on "
            f"{accelerator.device}, effective batch {t.batch_size * t.grad_accum * accelerator.num_processes}"
        )

    bar = tqdm(total=t.max_steps, initial=state.step, disable=not main, desc=f"train {domain.name}", dynamic_ncols=True)
    model.train()
    while state.step < t.max_steps:
        total = torch.zeros((), device=accelerator.device)
        for micro in range(t.grad_accum):
            batch = send_to_device(next(data), accelerator.device)
            last = micro == t.grad_accum - 1
            with nullcontext() if last else accelerator.no_sync(model):
                loss = domain.training_loss(model, batch)
                accelerator.backward(loss / t.grad_accum)
            total += loss.detach().float()
        mean_loss = accelerator.reduce(total / t.grad_accum, reduction="mean")
        if not torch.isfinite(mean_loss):
            last_ckpt = latest_checkpoint(checkpoint_dir)
            raise NonFiniteLossError(
                f"non-finite training loss ({mean_loss.item()}) at step {state.step + 1}; no update was applied. "
                f"Last checkpoint: {last_ckpt or 'none'}. Try a lower train.lr, train.grad_clip or "
                f"train.mixed_precision=no."
            )
        if t.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update_parameters(raw_model)
        state.step += 1
        step = state.step
        bar.update(1)

        if step % t.log_every == 0 or step == t.max_steps:
            logs = {"loss": mean_loss.item(), "lr": scheduler.get_last_lr()[0]}
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            accelerator.log(logs, step=step)
            if main:
                _append_jsonl(out / "log.jsonl", {"step": step, **logs})
        if main and ((t.sample_every and step % t.sample_every == 0) or step == t.max_steps):
            _write_samples(domain, ema.module, out / "samples" / f"step_{step:06d}", accelerator)
        if main and ((t.eval_every and step % t.eval_every == 0) or step == t.max_steps):
            val_set = val_set if val_set is not None else domain.build_dataset("val")
            with accelerator.autocast():
                metrics = domain.evaluate(ema.module, val_set)
            if metrics:
                logs = {f"eval/{k}": v for k, v in metrics.items()}
                accelerator.log(logs, step=step)
                _append_jsonl(out / "log.jsonl", {"step": step, **logs})
                bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if t.checkpoint_every and (step % t.checkpoint_every == 0 or step == t.max_steps):
            save_checkpoint(accelerator, checkpoint_dir, step, t.keep_checkpoints)
    bar.close()

    export_dir = out / "export"
    if main:
        export_model(ema.module, domain, export_dir)
        accelerator.print(f"exported EMA weights and config to {export_dir}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return export_dir
