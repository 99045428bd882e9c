"""The discrete domain end to end: training beats the unigram baseline, export, CLI sampling/infilling/eval."""

import pytest
import torch

from discrete.cli import main as discrete_cli
from discrete.domain import Discrete, DiscreteConfig
from multigen import load_pretrained
from multigen.config import load_config
from multigen.trainer import read_log, train

TINY = [
    "process.timesteps=32", "model.dim=96", "model.depth=2", "data.length=32", "train.batch_size=32",
    "train.lr=3e-3", "train.warmup_steps=20", "train.sample_every=0", "train.checkpoint_every=0",
    "train.tensorboard=false", "train.ema_decay=0.9", "sample.num=2", "eval.num_sequences=64",
]


@pytest.fixture(scope="module")
def text_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("discrete")
    cfg = load_config(DiscreteConfig, None, [*TINY, f"train.output_dir={out}", "train.max_steps=400"])
    train(Discrete, cfg)
    return out


@pytest.mark.slow
def test_tiny_model_beats_unigram_on_held_out_text(text_export):
    metrics = [r for r in read_log(text_export) if "eval/elbo_bits_per_token" in r][-1]
    assert metrics["eval/elbo_bits_per_token"] < metrics["eval/baseline_unigram_bits"] - 0.25, metrics


def test_export_keeps_tokenizer_and_samples_decode(text_export):
    p = load_pretrained(text_export / "export")
    assert p.domain.tokenizer.chars == p.domain.cfg.data.vocab and len(p.domain.tokenizer) > 60
    tokens = p.sample(3, steps=8, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (3, 32) and tokens.max() < len(p.domain.tokenizer)  # no mask left
    assert all(len(t) == 32 for t in p.domain.decode(tokens))


def test_cli_infill_prompt_and_eval(text_export, tmp_path, capsys):
    ckpt = str(text_export / "export")
    text = "The _____ statement is ___d"
    assert discrete_cli(["sample", "--checkpoint", ckpt, "--num", "2", "--steps", "8", "--infill", text]) == 0
    out = capsys.readouterr().out.split("--- sample ")[1:]
    for block in out:
        sample = block.split("---\n", 1)[1].rstrip("\n")
        assert len(sample) == len(text)
        assert all(a == b for a, b in zip(sample, text) if b != "_")  # every given character kept
    assert discrete_cli(["sample", "--checkpoint", ckpt, "--num", "1", "--steps", "4", "--prompt", "The "]) == 0
    assert "--- sample 0 ---\nThe " in capsys.readouterr().out
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("The return statement leaves the current function call with the expression list. " * 3)
    assert discrete_cli(["eval", "--checkpoint", ckpt, "--data", str(held_out)]) == 0
    line = capsys.readouterr().out
    assert "bits/char" in line and 0 < float(line.split(": ")[1].split()[0]) < 8
    assert discrete_cli(["eval", "--checkpoint", ckpt, "--data", str(held_out), "--steps", "4"]) == 0
    line = capsys.readouterr().out
    assert "4 steps" in line and 0 < float(line.split(": ")[1].split()[0]) < 8
    assert discrete_cli(["sample", "--checkpoint", ckpt, "--prompt", "Ωmega"]) == 2
    assert "'Ω'" in capsys.readouterr().err


def test_digit_grids_domain_trains_and_samples(tmp_path):
    cfg = load_config(DiscreteConfig, None, [
        "data.source=digits", "data.levels=4", "process.transition=gaussian", "process.timesteps=16",
        "model.dim=16", "model.depth=1", "train.max_steps=3", "train.batch_size=8", "train.sample_every=0",
        "train.checkpoint_every=0", "train.tensorboard=false", "sample.num=4", "eval.num_sequences=4",
        f"train.output_dir={tmp_path}",
    ])
    train(Discrete, cfg)
    assert (tmp_path / "samples" / "step_000003.png").is_file()
    p = load_pretrained(tmp_path / "export")
    grids = p.sample(2, steps=4)
    assert grids.shape == (2, 8, 8) and grids.max() < 4


def test_masked_objective_needs_absorbing():
    with pytest.raises(ValueError, match="absorbing"):
        Discrete(load_config(DiscreteConfig, None, ["process.objective=masked", "process.transition=uniform"]))
