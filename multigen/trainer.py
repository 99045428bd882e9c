"""The one training loop every domain uses, built on Hugging Face Accelerate.

:func:`train` reads top to bottom: :class:`Trainer` sets up (Accelerate, the domain fitted to its data, the model,
its EMA copy, the optimiser), resumes from the newest complete checkpoint (then checks its held-out data, writes the
run's config, or with a resumed run's first checkpoint, and does the samples and evaluation the checkpoint's run was
stopped before), then repeats one optimisation step (accumulate gradients, clip, step, update the EMA) and the
periodic work (log, sample, evaluate, checkpoint), and finally exports the EMA weights.

The optimisation step never waits on the accelerator. A non-finite loss (or, without fp16's loss scaler, a
non-finite gradient under a finite loss) is noticed on the device, where it turns that step and every later one
into a no-op: parameters, optimiser state (its step count included), EMA weights and count stay bit-identical.
The periodic work reads that flag before it logs or saves anything and raises :class:`NonFiniteLossError` naming
the first bad step, with the step counter (and with it the learning rate, a function of the step) set back to
before it.

Output directory layout (``train.output_dir``)::

    config.yaml                  the resolved config of the run (after the domain's fit: the export's config)
    log.jsonl                    loss, learning rate, gradient norm, evaluation metrics: one JSON record a line
    logs/                        TensorBoard event files
    samples/step_000500.png      what the EMA model draws (domain-specific format)
    samples/step_000500/         point clouds: one PLY a sample
    checkpoints/step_500/        Accelerate state + multigen.json (written as .tmp_step_500, then renamed)
    export/                      model.safetensors (EMA) + config.yaml, for load_pretrained
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import pickle
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import (InitProcessGroupKwargs, ProjectConfiguration, gather_object, load, send_to_device,
                               set_seed)
from accelerate.utils.constants import RNG_STATE_NAME
from safetensors import SafetensorError
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from .checkpoints import (check_resumable, check_same_network, latest_checkpoint, save_checkpoint,
                          set_aside_earlier_run)
from .config import ConfigError, TrainConfig, first_line, flatten, read_yaml, replaced
from .domain import DataError, Domain, domain_spec, names_domain
from .export import config_text, export_model
from .optim import Muon, hidden_matrices

log = logging.getLogger("multigen")


class NonFiniteLossError(RuntimeError):
    """The training loss or its gradients became NaN or infinite; nothing was updated or saved from that step on."""


@dataclass
class TrainState:
    """Counters saved with every checkpoint."""

    step: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


class ShardedStreamSampler(Sampler[int]):
    """An endless stream of dataset indices: epoch ``e`` is a permutation seeded by ``seed + e`` (cut to a multiple
    of ``world``).

    Process ``rank`` of ``world`` takes every ``world``-th index of each epoch, from the ``rank``-th, and the
    stream starts after the first ``start`` indices of all processes together (the items drawn so far), so a
    resumed run reads exactly the data an uninterrupted one would have, and one resumed on another number of
    processes goes on with the items not drawn yet.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0) -> None:
        if size < world:  # a DataError: the command line reports it in one line
            raise DataError(f"the training set has {size} item(s), too few to split over {world} processes")
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.per_rank = size // world
        self.start = start

    def __iter__(self) -> Iterator[int]:
        epoch, drawn = divmod(self.start, self.per_rank * self.world)
        offset = max(0, -(-(drawn - self.rank) // self.world))  # this rank's first position at or after `drawn`
        while True:
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.size, generator=g)[: self.per_rank * self.world]
            yield from perm[self.rank :: self.world][offset:].tolist()
            epoch, offset = epoch + 1, 0


def lr_factor(step: int, warmup: int, max_steps: int, decay: str, decay_steps: int = 0) -> float:
    """Multiplier of ``train.lr`` at optimiser step ``step`` (0-based): linear warmup over ``warmup`` steps, then
    constant (``decay="none"``), or constant until the last ``decay_steps`` steps (0: every step after the warmup)
    and from there a half cosine (``"cosine"``) or a straight line (``"linear"``) reaching 0 at ``max_steps``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if decay == "none":
        return 1.0
    start = warmup if decay_steps == 0 else max(warmup, max_steps - decay_steps)
    progress = min(1.0, max(0, step - start) / max(1, max_steps - start))
    return 1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """``record`` as one line of strict JSON: a value that is not finite (a standard error of one sequence) is
    written as null, not as the bare ``NaN`` that JSON has no word for."""
    finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
    with open(path, "a") as f:
        f.write(json.dumps(finite, allow_nan=False) + "\n")


def _cut_log(path: Path, step: int) -> None:
    """Keep the records of ``path`` (a run's ``log.jsonl``) up to ``step``, where a resumed run goes on: it logs the
    steps after it again. A line cut short as the run was killed goes too. Rewritten under a temporary name."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    _write_text(path, "".join(kept))


def _due(every: int, step: int, end: bool) -> bool:
    """Whether work done every ``every`` steps (0: only at the end) falls on ``step``, ``end`` telling if it is the
    last."""
    return bool(every and step % every == 0) or end


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` under a temporary name, then rename it: a killed run leaves the old file or the
    new one, never half of it."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def read_log(output_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``<output_dir>/log.jsonl`` (loss, learning rate, gradient norm, ``eval/*``
    metrics), in order."""
    return [json.loads(line) for line in (Path(output_dir) / "log.jsonl").read_text().splitlines()]


def _write_samples(domain: Domain, model: torch.nn.Module, path: Path, accelerator: Accelerator) -> Path:
    s = domain.cfg.sample
    g = torch.Generator(device=accelerator.device).manual_seed(s.seed)  # same noise every time: comparable
    with accelerator.autocast():
        samples = domain.sample(model, s.num, generator=g)
    samples = samples.cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    return domain.save_samples(samples.float() if samples.is_floating_point() else samples, path)


class EMA(nn.Module):
    """Exponential moving average of a model's parameters (its buffers are copied), updated on the device.

    ``module`` is the averaged copy: sample, evaluate and export it. The first counted update takes the
    model's weights (to rounding), later ones move ``1 - decay`` of the way towards them; ``n_averaged``
    counts the updates.
    The state dict (``module.*``, ``n_averaged``) is the one of ``torch.optim.swa_utils.AveragedModel``,
    which earlier runs checkpointed.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.register_buffer("n_averaged", torch.zeros((), dtype=torch.long, device=next(model.parameters()).device))

    @torch.no_grad()
    def update(self, model: nn.Module, skip: Tensor) -> None:
        """Average ``model``'s weights in, unless the 0-dim bool ``skip`` (on the device) is true; no host sync."""
        weight = torch.where(skip, 0.0, torch.where(self.n_averaged == 0, 1.0, 1.0 - self.decay))
        mine = list(self.module.parameters())
        delta = torch._foreach_sub([p.detach() for p in model.parameters()], mine)
        torch._foreach_mul_(delta, weight)
        torch._foreach_add_(mine, delta)  # + 0 where skipped: the same values (a -0.0 would read +0.0)
        for b_mine, b_model in zip(self.module.buffers(), model.buffers()):
            b_mine.copy_(torch.where(skip, b_mine, b_model))
        self.n_averaged += ~skip


def stream_seed(*parts: Any) -> int:
    """A 32-bit seed drawn from ``parts`` (e.g. seed, process, step): distinct parts, unrelated streams."""
    return random.Random(":".join(map(str, parts))).getrandbits(32)


def seed_worker(worker_id: int, seed: int, rank: int, start_step: int) -> None:
    """A data-loader worker's ``worker_init_fn``: PyTorch seeds worker ``i`` with one base seed + ``i``, the same
    on every process and at every start, so workers' random draws (a partial view, a subsample) would repeat across
    processes and after each resume; these seeds differ by process and start step."""
    torch.manual_seed(stream_seed(seed, rank, start_step, worker_id))


class Trainer:
    """One training run: set up by the constructor, then :meth:`resume`, repeated :meth:`step` and
    :meth:`periodic`, and :meth:`export` (see :func:`train`, which runs them in that order)."""

    def __init__(self, domain_cls: type[Domain], cfg: Any) -> None:
        """Set up Accelerate, the domain (fitted to its data), the model, its EMA copy, the optimisers (AdamW; with
        ``train.optimizer=muon`` also Muon for the hidden matrices), and the device-side record of non-finite
        losses and gradients. ``cfg`` is checked as a config file is, and copied (a config built in Python too)."""
        if not isinstance(getattr(domain_cls, "name", None), str):
            raise TypeError(f"train: {domain_cls.__qualname__} has no name; a domain class needs one, name = \"...\" "
                            f"(what its config, samples and exports call it)")
        if not isinstance(cfg, domain_cls.config_class):
            raise TypeError(f"train: cfg must be a {domain_cls.config_class.__name__}, the {domain_spec(domain_cls)} "
                            f"domain's config_class, got {type(cfg).__name__}")
        if not isinstance(getattr(cfg, "train", None), TrainConfig):
            raise TypeError(f"train: {type(cfg).__name__} has no train section; a domain's config_class needs one, "
                            f"train: TrainConfig = field(default_factory=TrainConfig) (multigen.config)")
        cfg = replaced(cfg)  # checked as a config file is, and copied
        t = self.t = cfg.train
        on_cpu = t.cpu or not torch.accelerator.is_available()
        if on_cpu and t.mixed_precision == "fp16":
            raise ConfigError("train.mixed_precision=fp16 on a CPU: Accelerate has no fp16 autocast or loss scaler "
                              "there and would train in fp32 without a word; use bf16 or no")
        if t.optimizer == "muon" and t.mixed_precision == "fp16":
            raise ConfigError("train.optimizer=muon with train.mixed_precision=fp16: Accelerate's loss scaler "
                              "steps one optimiser; use bf16 or no, or train.optimizer=adamw")
        self.out = Path(t.output_dir)
        self.checkpoint_dir = self.out / "checkpoints"
        self.accelerator = acc = Accelerator(
            # With no accelerator present, processes started by torchrun or `accelerate launch --multi_gpu`
            # form a CPU (gloo) group; Accelerate only does that when told it runs on the CPU.
            cpu=on_cpu,
            mixed_precision=t.mixed_precision,
            log_with="tensorboard" if t.tensorboard else None,
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs")),
            # the other processes wait in a collective while the main one samples and evaluates alone
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(minutes=t.process_timeout_min))],
        )
        self.main = acc.is_main_process
        launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")  # `accelerate config` or launch's flag
        if launched != "no" and launched != t.mixed_precision:
            acc.print(f"accelerate asked for mixed precision {launched}; train.mixed_precision={t.mixed_precision} "
                      f"decides (set it to change)")
        if acc.device.type == "cpu":
            # `accelerate launch` sets OMP_NUM_THREADS=1 unless told --cpu; share the cores between local processes.
            local = int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes))
            torch.set_num_threads(t.cpu_threads or max(1, (os.cpu_count() or 1) // local))

        self.domain = domain_cls(cfg)
        self.measures = domain_cls.evaluate is not Domain.evaluate  # a domain without metrics logs none
        self.domain.fit()  # vocabulary, normalisation: into the config before it is written
        # a run that does not resume (train.resume=false, or no checkpoint to resume from: deleted to save space, or
        # never written) starts over beside nothing an earlier run wrote there, and deletes none of it
        resumes = t.resume and latest_checkpoint(self.checkpoint_dir) is not None
        if resumes and not (self.out / "config.yaml").is_file():  # every check of what is resumed reads it
            raise ConfigError(f"{self.out} holds checkpoints but no config.yaml, which says what domain, network and "
                              f"process they are of: put it back, or set a new train.output_dir, or "
                              f"train.resume=false to start over there")
        if resumes:
            earlier = read_yaml(self.out / "config.yaml")
            if "domain" in earlier and not names_domain(str(earlier["domain"]), domain_cls):  # (older runs: no key)
                raise ConfigError(f"{self.out} holds checkpoints of a {earlier['domain']} run, not of a "
                                  f"{domain_spec(domain_cls)} one: set a new train.output_dir, or train.resume=false "
                                  f"to start over there")
            before = earlier["train"]["max_steps"]
            if changes := check_same_network(self.out / "config.yaml", cfg):
                if t.lr_decay != "none" and t.max_steps != before:  # the decay's end moves with max_steps
                    rises = ": the learning rate rises again where the decay had brought it down"
                    changes += (f" (train.lr_decay={t.lr_decay} now ends at the new train.max_steps"
                                f"{rises if t.max_steps > before else ''})")
                acc.print(f"resuming with settings changed since the checkpoints were written: {changes}")
        if self.main and not resumes and (aside := set_aside_earlier_run(self.out)):
            why = "train.resume=false" if not t.resume else f"no checkpoint in {self.checkpoint_dir} to resume from"
            acc.print(f"{why}: moved the earlier run's files in {self.out} to {aside}")
        acc.wait_for_everyone()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)

        set_seed(t.seed)  # identical initial weights on every process
        self.raw_model = self.domain.build_model()
        self.ema = EMA(self.raw_model, t.ema_decay)
        # oneDNN's bf16 convolutions on CPUs with native bf16 (AVX512-BF16) gave non-finite weight gradients at
        # random (the point-cloud network's Conv3d, torch 2.13; its forward was exact), so bf16 steps of a network
        # with convolutions on a CPU run on PyTorch's own kernels (0 bad gradients in 32 runs, against 2-3 in 16
        # with oneDNN). Others keep oneDNN: its bf16 matrix products are 15x faster (text default: 56 against 829
        # ms a step, where fp32 takes 84-95).
        self.bf16_convolutions_on_cpu = acc.device.type == "cpu" and t.mixed_precision == "bf16" and any(
            isinstance(m, nn.modules.conv._ConvNd) for m in self.raw_model.modules())
        # Both optimisers can skip an update on the device (`found_inf`, as GradScaler sets it for fused AdamW),
        # leaving all their state alone; both follow one learning-rate schedule (set_learning_rate).
        matrices = hidden_matrices(self.raw_model) if t.optimizer == "muon" else []
        muon = {id(p) for p in matrices}
        optimizers: list[torch.optim.Optimizer] = [torch.optim.AdamW(
            [p for p in self.raw_model.parameters() if id(p) not in muon], lr=t.lr, betas=tuple(t.adam_betas),
            weight_decay=t.weight_decay, fused=True)]
        self.lr_scales = [1.0]  # of train.lr, per optimiser
        if matrices:
            optimizers.append(Muon(matrices, lr=t.lr, weight_decay=t.weight_decay))
            self.lr_scales = [t.adamw_lr_scale, 1.0]
        self.model, *self.optimizers = acc.prepare(self.raw_model, *optimizers)
        # training_loss gets the compiled module; checkpoints, the EMA and exports keep the uncompiled one's keys
        self.net = torch.compile(self.model) if t.compile else self.model
        self.ema.to(acc.device)
        self.state = TrainState()
        acc.register_for_checkpointing(self.ema, self.state)
        # steps skipped since the first non-finite loss or gradient (a tail of the run), and that step's loss and
        # gradient norm
        self.skipped = torch.zeros((), dtype=torch.long, device=acc.device)
        self.first_bad_loss = torch.zeros((), device=acc.device)
        self.first_bad_norm = torch.zeros((), device=acc.device)
        self.grad_norm = torch.full((), math.nan, device=acc.device)  # the last step's, before clipping
        self.val_set: Dataset | None = None

    def resume(self) -> None:
        """Load the newest complete checkpoint if ``train.resume`` (weights, optimiser, EMA, step and RNG
        states; the learning rate follows the step), check the held-out data (:meth:`check_held_out_data`) and
        build the training set, write ``config.yaml`` (the export's config; a resumed run with its first checkpoint),
        start the data stream where the run left off, and do the samples and evaluation due at the step resumed from
        that its run did not finish (:meth:`finish_interrupted_step`)."""
        t, acc = self.t, self.accelerator
        resume_from = latest_checkpoint(self.checkpoint_dir) if t.resume else None
        seen = gather_object([resume_from and resume_from.name])  # one per process
        if len(set(seen)) > 1:
            raise ConfigError(f"the processes find different newest checkpoints in {self.checkpoint_dir} ("
                              f"{', '.join(f'process {i}: {c}' for i, c in enumerate(seen))}): train.output_dir "
                              f"must be one folder that every machine shares")
        self.samples_per_step = t.batch_size * t.grad_accum * acc.num_processes
        consumed = 0  # training items drawn by all processes so far (batches and processes may have changed)
        if resume_from is not None:
            info = check_resumable(resume_from, t.optimizer, t.max_steps)
            written_by = info.get("processes", acc.num_processes)
            try:
                if acc.process_index < written_by:  # read first: load_state logs one it cannot read, and goes on
                    load(resume_from / f"{RNG_STATE_NAME}_{acc.process_index}.pkl")
                acc.load_state(str(resume_from))
            except (SafetensorError, pickle.UnpicklingError, EOFError, KeyError, RuntimeError, FileNotFoundError) as e:
                if isinstance(e, torch.OutOfMemoryError):
                    raise
                if str(e).startswith("Error(s) in loading state_dict"):  # every checkpoint of the run alike
                    keys = " ".join(" ".join(str(e).splitlines()[1:]).split())
                    raise ConfigError(f"{resume_from} holds the weights of another network than this code builds "
                                      f"({keys[:400]}{'...' if len(keys) > 400 else ''}): its code changed since; set "
                                      f"a new train.output_dir, or train.resume=false to start over there") from e
                # a file damaged on disk or lost, or weights of another network (whose config.yaml is gone)
                raise ConfigError(f"{resume_from} could not be loaded ({type(e).__name__}: {first_line(e)}): move "
                                  f"it out of {self.checkpoint_dir} to resume from the one before it, or set "
                                  f"train.resume=false") from e
            acc.print(f"resumed from {resume_from} at step {self.state.step}")
            if self.main:
                _cut_log(self.out / "log.jsonl", self.state.step)
            consumed = info.get("consumed", self.state.step * self.samples_per_step)
            regrouped = []
            if written_by != acc.num_processes:
                regrouped.append(f"the checkpoint was written by {written_by} process(es), this run has "
                                 f"{acc.num_processes}")
                if acc.process_index >= written_by:  # no random state saved for it: its own, unrelated stream
                    set_seed(stream_seed(t.seed, acc.process_index, self.state.step))
            drew = info.get("samples_per_step") or None  # a step, in the run that wrote it (older ones: unknown)
            if drew is None and consumed != self.state.step * self.samples_per_step:
                drew = f"{consumed / self.state.step:g} (on average)"
            if drew is not None and drew != self.samples_per_step:  # another batch, accumulation or process count
                regrouped.append(f"its run drew {drew} training items a step, this run draws {self.samples_per_step}")
            if regrouped:
                acc.print(f"{'; '.join(regrouped)}: the data goes on where it stopped, but the run is no longer "
                          f"bit-exact to one that was not resumed")
        else:
            set_seed(t.seed, device_specific=True)  # independent noise on every process
        self.set_learning_rate()
        self.consumed_at, self.step_at = consumed, self.state.step  # items drawn at this start, and its step
        self.check_held_out_data()
        train_set = self.domain.build_dataset("train")
        sampler = ShardedStreamSampler(  # (checks that every process has an item)
            len(train_set),  # type: ignore[arg-type]
            seed=t.seed,
            rank=acc.process_index,
            world=acc.num_processes,
            start=consumed,
        )
        # config.yaml describes the checkpoints: a fresh run writes it after the data checks (a run stopped by its
        # data leaves nothing for the next one to set aside), a resumed one with its first checkpoint (a resume that
        # fails before one, on its data or a non-finite loss, leaves the config its checkpoints were written with)
        self.pending_config = config_text(self.domain) if self.main else None
        if resume_from is None:
            self.write_config()
        loader = DataLoader(
            train_set,
            batch_size=t.batch_size,
            sampler=sampler,
            num_workers=t.num_workers,
            collate_fn=self.domain.collate_fn,
            drop_last=True,
            pin_memory=acc.device.type == "cuda",
            generator=torch.Generator().manual_seed(t.seed),  # keeps DataLoader seeding off the global RNG
            worker_init_fn=partial(seed_worker, seed=t.seed, rank=acc.process_index, start_step=self.state.step),
        )
        self.data = iter(loader)

        if t.tensorboard:  # a resumed run hides the events logged after its checkpoint, as log.jsonl drops them
            acc.init_trackers("multigen", config=flatten(self.domain.cfg),
                              init_kwargs={"tensorboard": {"purge_step": self.state.step + 1}} if resume_from else {})
        n_params = sum(p.numel() for p in self.raw_model.parameters())
        acc.print(
            f"{self.domain.name}: {n_params / 1e6:.2f}M parameters, {acc.num_processes} process(es) on "
            f"{acc.device}, effective batch {self.samples_per_step}"
        )
        self.bar = tqdm(total=t.max_steps, initial=self.state.step, disable=not self.main,
                        desc=f"train {self.domain.name}", dynamic_ncols=True)
        self.model.train()
        self.started = time.monotonic()
        if resume_from is not None:
            self.finish_interrupted_step()

    def write_config(self) -> None:
        """Write the run's ``config.yaml`` if it is still to be written (main process; under a temporary name, then
        renamed)."""
        if self.pending_config is not None:
            _write_text(self.out / "config.yaml", self.pending_config)
            self.pending_config = None

    def finish_interrupted_step(self) -> None:
        """The samples and evaluation due at the step resumed from, if they are missing: the run that wrote its
        checkpoint was stopped before them (they follow the checkpoint: see :meth:`periodic`), or they were not due
        under its settings."""
        if not self.main:
            return
        t, step = self.t, self.state.step
        end = step == t.max_steps
        sample = _due(t.sample_every, step, end) and not any(
            (self.out / "samples").glob(f"step_{step:06d}*"))
        log = self.out / "log.jsonl"
        evaluated = log.is_file() and any(r["step"] == step and any(k.startswith("eval/") for k in r)
                                          for r in read_log(self.out))
        evaluate = _due(t.eval_every, step, end) and self.measures and not evaluated
        if sample or evaluate:
            what = " and ".join(["samples"] * sample + ["evaluation"] * evaluate)
            self.bar.write(f"step {step}: its {what} {'are' if sample else 'is'} missing; "
                           f"doing {'them' if sample else 'it'} now")
            self.sample_and_evaluate(step, sample, evaluate, end)

    def check_held_out_data(self) -> None:
        """Build the held-out split on the main process and read what evaluation needs of it before training
        (:meth:`~multigen.domain.Domain.check_held_out`), so that a bad one (missing, empty, unreadable) stops the
        run at once, on every process, not at its final evaluation."""
        error: Exception | None = None
        if self.main:
            try:
                self.val_set = self.domain.build_dataset("val")
                if len(self.val_set) == 0:  # type: ignore[arg-type]
                    raise DataError(f"{self.domain.name}: the held-out split has no items")
                self.domain.check_held_out(self.val_set)
            except Exception as e:  # re-raised below, once every process knows
                error = e
        found = gather_object([None if error is None else f"{type(error).__name__}: {error}"])
        if error is not None:
            raise error
        if any(found):
            raise DataError(f"the main process cannot use the held-out data: {next(m for m in found if m)}")

    def out_of_time(self) -> bool:
        """Whether ``train.max_minutes`` (> 0) have passed since :meth:`resume` on any process (all agree)."""
        t, acc = self.t, self.accelerator
        over = torch.tensor(float(time.monotonic() - self.started > 60 * t.max_minutes), device=acc.device)
        return bool(acc.reduce(over, reduction="sum") > 0)

    def set_learning_rate(self) -> None:
        """Set every optimiser's learning rate for the next step: ``train.lr`` times :func:`lr_factor` of the step
        count (a function of the step alone, so nothing of it is checkpointed), AdamW's times
        ``train.adamw_lr_scale`` beside Muon."""
        t = self.t
        self.lr = t.lr * lr_factor(self.state.step, t.warmup_steps, t.max_steps, t.lr_decay, t.lr_decay_steps)
        for optimizer, scale in zip(self.optimizers, self.lr_scales):
            for group in optimizer.param_groups:
                group["lr"] = self.lr * scale

    def step(self) -> Tensor:
        """One optimisation step over ``train.grad_accum`` micro-batches, with no host sync; returns the mean
        loss (0-dim, on the device). From a non-finite loss or gradient on, steps leave every state as it was."""
        t, acc = self.t, self.accelerator
        total = torch.zeros((), device=acc.device)
        onednn = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = onednn and not self.bf16_convolutions_on_cpu
        try:
            for micro in range(t.grad_accum):
                batch = send_to_device(next(self.data), acc.device, non_blocking=True)
                with nullcontext() if micro == t.grad_accum - 1 else acc.no_sync(self.model):
                    loss = self.domain.training_loss(self.net, batch)
                    acc.backward(loss / t.grad_accum)
                total += loss.detach().float()
        finally:
            torch.backends.mkldnn.enabled = onednn
        mean_loss = acc.reduce(total / t.grad_accum, reduction="mean")

        bad = ~torch.isfinite(mean_loss)
        if acc.scaler is not None:
            # fp16: GradScaler sets the optimiser's found_inf from the gradients alone (an overflow skips that step
            # and lowers the scale, as loss scaling should); after a bad loss, make them non-finite
            grads = [p.grad for p in self.raw_model.parameters() if p.grad is not None]
            torch._foreach_mul_(grads, torch.where(bad | (self.skipped > 0), float("nan"), 1.0))
        # the norm before clipping, kept on the device for the next log step (max_norm inf: measured, not clipped)
        norm = acc.clip_grad_norm_(self.model.parameters(), t.grad_clip or math.inf)
        self.grad_norm = self.grad_norm if norm is None else norm
        if acc.scaler is None and norm is not None:  # a finite loss can still have NaN or infinite gradients
            bad = bad | ~torch.isfinite(norm)
        first = bad & (self.skipped == 0)
        self.first_bad_loss = torch.where(first, mean_loss, self.first_bad_loss)
        self.first_bad_norm = torch.where(first, self.grad_norm, self.first_bad_norm)
        skip = bad | (self.skipped > 0)
        self.skipped += skip
        for optimizer in self.optimizers:
            if acc.scaler is None:  # where 1, parameters, moments and step count stay
                optimizer.optimizer.found_inf = skip.float()
            optimizer.step()
            optimizer.optimizer.__dict__.pop("found_inf", None)
            optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.raw_model, skip)
        self.state.step += 1
        self.set_learning_rate()
        return mean_loss

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` if a loss so far was not finite (reads the device: a host sync),
        with the step counter and learning rate set back to before the first such step."""
        skipped = int(self.skipped)
        if not skipped:
            return
        first = self.state.step - skipped + 1
        self.state.step = first - 1
        self.set_learning_rate()
        self.bar.close()
        raise NonFiniteLossError(
            f"non-finite training loss or gradients (loss {self.first_bad_loss.item()}, gradient norm "
            f"{self.first_bad_norm.item()}) at step {first}; no update was applied from it on. Last checkpoint: "
            f"{latest_checkpoint(self.checkpoint_dir) or 'none'}. Try a lower train.lr, train.grad_clip or "
            f"train.mixed_precision=no."
        )

    def periodic(self, loss: Tensor) -> None:
        """After a step: when anything is due, check the losses were finite, then log, checkpoint, sample and
        evaluate as ``train.*_every`` say (each one not set to 0 also at the last step). At a log step past
        ``train.max_minutes``, that step becomes the last: ``train.max_steps`` is set to it."""
        t, acc, step = self.t, self.accelerator, self.state.step
        self.bar.update(1)
        end = step == t.max_steps
        log = step % t.log_every == 0 or end
        if log and not end and t.max_minutes and self.out_of_time():
            if self.main:
                self.bar.write(f"train.max_minutes={t.max_minutes} have passed: step {step} is the last")
            t.max_steps, self.bar.total, end = step, step, True
        sample, evaluate = _due(t.sample_every, step, end), _due(t.eval_every, step, end)
        checkpoint = bool(t.checkpoint_every) and (step % t.checkpoint_every == 0 or end)
        if not (log or sample or evaluate or checkpoint):
            return
        self.check_finite()  # on every process alike: the loss was reduced over them
        if log:
            logs = {"loss": loss.item(), "lr": self.lr, "grad_norm": self.grad_norm.item()}  # the next step's lr
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}")
            acc.log(logs, step=step)
            if self.main:
                _append_jsonl(self.out / "log.jsonl", {"step": step, **logs})
        if checkpoint:  # first: a sampling or evaluation that fails, or that outlasts train.process_timeout_min
            self.save_checkpoint()  # while the other processes wait, loses no training
        self.sample_and_evaluate(step, sample, evaluate, end)

    def sample_and_evaluate(self, step: int, sample: bool, evaluate: bool, end: bool) -> None:
        """Write the EMA model's samples of ``step`` and evaluate it, as asked (main process). At the ``end``, a
        failure exports the weights before it is raised."""
        if not (self.main and (sample or evaluate)):
            return
        # on the main process alone, and drawing nothing from the training's random streams: a run trains the same
        # whether or how often it samples and evaluates, and resumes exactly from a checkpoint written before them
        acc = self.accelerator
        with torch.random.fork_rng(devices=[acc.device] if acc.device.type == "cuda" else []):
            try:
                if sample:
                    _write_samples(self.domain, self.ema.module, self.out / "samples" / f"step_{step:06d}", acc)
                if evaluate:
                    self.evaluate(step)
            except Exception:  # at the last step, the export (with checkpoints off, the weights' only copy) first
                if end:
                    export_model(self.ema.module, self.domain, self.out / "export")
                raise

    def evaluate(self, step: int) -> None:
        """Evaluate the EMA model on the held-out set (built by :meth:`check_held_out_data` before training); log
        and print its metrics (main process)."""
        if self.measures:  # minutes, at times
            self.bar.write(f"step {step}: evaluating the EMA model on the held-out data")
        began = time.monotonic()
        with self.accelerator.autocast():
            metrics = self.domain.evaluate(self.ema.module, self.val_set)
        if metrics:
            logs = {f"eval/{k}": v for k, v in metrics.items()}
            self.accelerator.log(logs, step=step)
            _append_jsonl(self.out / "log.jsonl", {"step": step, **logs})
            self.bar.write(f"step {step} (evaluated in {time.monotonic() - began:.0f} s): "
                           + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

    def save_checkpoint(self) -> Path:
        """:func:`~multigen.checkpoints.save_checkpoint` of this step, with the items drawn so far (on every
        process)."""
        t, step = self.t, self.state.step
        consumed = self.consumed_at + (step - self.step_at) * self.samples_per_step
        path = save_checkpoint(self.accelerator, self.checkpoint_dir, step, t.keep_checkpoints, t.optimizer, consumed,
                               self.samples_per_step)
        self.write_config()
        return path

    def export(self) -> Path:
        """Write the EMA weights and the config to ``<output_dir>/export``; return that directory."""
        self.bar.close()
        export_dir = self.out / "export"
        if self.main:
            export_model(self.ema.module, self.domain, export_dir)
            self.accelerator.print(f"exported EMA weights and config to {export_dir}")
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return export_dir


def train(domain_cls: type[Domain], cfg: Any) -> Path:
    """Train ``domain_cls`` with ``cfg`` (resuming if a checkpoint exists); return the export directory."""
    trainer = Trainer(domain_cls, cfg)
    trainer.resume()
    while trainer.state.step < trainer.t.max_steps:
        loss = trainer.step()
        trainer.periodic(loss)
    return trainer.export()
