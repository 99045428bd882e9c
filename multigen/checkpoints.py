"""A run's folder on disk: its checkpoints (written to a temp name, renamed, pruned), the checks that a checkpoint
can be resumed by this run (its format, optimiser, step, network and noise process), and setting an earlier run's
files aside when a run starts over in the same folder.

Layout: ``<output_dir>/checkpoints/step_<N>/`` holds Accelerate's ``save_state`` and :data:`CHECKPOINT_INFO`; a
``.tmp_step_<N>`` beside it is a checkpoint being written (or one a crash left), never read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from omegaconf import OmegaConf

from . import schedules
from .config import ConfigError, flatten, read_yaml, speed_only_keys, to_yaml

CHECKPOINT = re.compile(r"^step_(\d+)$")
CHECKPOINT_INFO = "multigen.json"  # in every checkpoint: format, step, optimiser, processes, items drawn (a step)
CHECKPOINT_FORMAT = 2  # 1 (no CHECKPOINT_INFO) also saved LambdaLR states; 2: the learning rate follows the step


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None (temp dirs are ignored)."""
    if not checkpoint_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in checkpoint_dir.iterdir() if (m := CHECKPOINT.match(p.name))]
    return max(found)[1] if found else None


def save_checkpoint(accelerator: Accelerator, checkpoint_dir: Path, step: int, keep: int, optimizer: str,
                    consumed: int, samples_per_step: int = 0) -> Path:
    """``save_state`` and :data:`CHECKPOINT_INFO` to a temp name, rename to ``step_<N>`` and prune to the newest
    ``keep``; ``consumed`` is the training items all processes have drawn, where a resume's data goes on, and
    ``samples_per_step`` (if known) how many the run draws a step (batch x accumulation x processes)."""
    final = checkpoint_dir / f"step_{step}"
    tmp = checkpoint_dir / f".tmp_step_{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        info = {"format": CHECKPOINT_FORMAT, "step": step, "optimizer": optimizer,
                "processes": accelerator.num_processes, "consumed": consumed, "samples_per_step": samples_per_step}
        (tmp / CHECKPOINT_INFO).write_text(json.dumps(info) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        done = sorted((int(m.group(1)), p) for p in checkpoint_dir.iterdir() if (m := CHECKPOINT.match(p.name)))
        for _, old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


RUN_FILES = ("config.yaml", "log.jsonl", "logs", "samples", "checkpoints", "export")  # what a run writes


def set_aside_earlier_run(out: Path) -> Path | None:
    """Move what an earlier run wrote in ``out`` (:data:`RUN_FILES`) into ``out/earlier_<date-time>/``, so that a run
    that starts over there neither mixes with it nor deletes it; return that folder (None: nothing to move)."""
    found = [out / name for name in RUN_FILES if (out / name).exists()]
    if not found:
        return None
    aside = out / f"earlier_{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while aside.exists():
        aside, n = aside.with_name(f"{aside.name.split('.')[0]}.{n}"), n + 1
    aside.mkdir()
    for path in found:
        os.replace(path, aside / path.name)
    return aside


def process_keys(cfg: Any) -> set[str]:
    """The settings of ``cfg`` that say what a trained network's input time and output mean (its noise process, the
    parameters its schedule reads, its target, and a token domain's vocabulary): a checkpoint trained under other
    values is another model, however alike the weights' shapes."""
    keys = {"diffusion.schedule", "diffusion.timesteps", "diffusion.max_beta", "diffusion.parameterization",
            "process.transition", "process.timesteps", "process.schedule", "data.vocab", "data.vocab_size"}
    if (diffusion := getattr(cfg, "diffusion", None)) is not None:
        keys |= {f"diffusion.{name}" for name in schedules.PARAMETERS[diffusion.schedule]}
    return keys


def check_same_network(config_file: Path, cfg: Any) -> str:
    """Raise :class:`ConfigError` if the run whose checkpoints lie beside ``config_file`` (its config) built another
    network than ``cfg`` does (a ``model.*`` setting changed, :func:`~multigen.config.speed_only` ones aside) or
    trained it for another process (:func:`process_keys`); return the settings that did change, in words (``''``:
    none). Settings the earlier config lacks, added since, are not compared."""
    # both as YAML has them
    then, now = flatten(OmegaConf.create(read_yaml(config_file))), flatten(OmegaConf.create(to_yaml(cfg)))
    changed = sorted(k for k, v in now.items() if k in then and then[k] != v)
    speed, process = speed_only_keys(cfg), process_keys(cfg)
    network = [k for k in changed if (k.startswith("model.") and k not in speed) or k in process]

    def listed(keys: list[str]) -> str:
        return ", ".join(f"{k}: {then[k]} -> {now[k]}" for k in keys)

    if network:
        raise ConfigError(f"{config_file.parent} holds checkpoints of another network or process "
                          f"({listed(network)}): set a new train.output_dir, or train.resume=false to start over there")
    return listed(changed)


def check_resumable(checkpoint: Path, optimizer: str, max_steps: int) -> dict[str, Any]:
    """``checkpoint``'s :data:`CHECKPOINT_INFO`; a :class:`ConfigError` unless it says this trainer can load it into
    a run with ``train.optimizer=optimizer`` that ends at ``train.max_steps=max_steps``."""
    info_path = checkpoint / CHECKPOINT_INFO
    has_weights = any(checkpoint.glob("model*"))
    # format 1 wrote no info file, but the learning-rate schedule's state (Accelerate's scheduler*.bin)
    has_info = info_path.is_file() or any(checkpoint.glob("scheduler*.bin"))
    if not (has_weights and has_info):
        lost = ", ".join(f"no {what}" for what, there in (("weights", has_weights), (CHECKPOINT_INFO, has_info))
                         if not there)
        raise ConfigError(f"{checkpoint} is incomplete ({lost}): move it out of {checkpoint.parent} to resume from "
                          f"the checkpoint before it, or set train.resume=false")
    try:
        info = json.loads(info_path.read_text()) if info_path.is_file() else {"format": 1}
    except ValueError as e:  # written by a run killed as its disk failed, say
        raise ConfigError(f"{info_path} is damaged ({e}): move {checkpoint} out of its folder to resume from the "
                          f"checkpoint before it, or set train.resume=false") from None
    if info["format"] != CHECKPOINT_FORMAT:
        raise ConfigError(f"{checkpoint} is in checkpoint format {info['format']} (this multigen reads "
                          f"{CHECKPOINT_FORMAT}): set a new train.output_dir, or train.resume=false to start over")
    if info["optimizer"] != optimizer:
        raise ConfigError(f"{checkpoint} was trained with train.optimizer={info['optimizer']}, this run has "
                          f"train.optimizer={optimizer}: resume with the optimiser it was trained with, or set a "
                          f"new train.output_dir")
    if info.get("step", 0) > max_steps:  # a run cannot end before its checkpoint; its config would say it did
        raise ConfigError(f"{checkpoint} is at step {info['step']}, past train.max_steps={max_steps}: raise "
                          f"train.max_steps to train on, or set a new train.output_dir (or train.resume=false) to "
                          f"start over")
    return info
