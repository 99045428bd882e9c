"""The discrete domain end to end: export, CLI sampling/infilling/eval on a barely trained model; that a trained
model beats the unigram baselines (slow); infilling with a marked known part; the domain's loss and sampling on
other devices."""

import shutil
from collections import Counter
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from discrete.cli import main as discrete_cli
from discrete.d3pm import D3PM, Uniform, d3pm_betas, random_known
from discrete.data import TokenError, TokenWindows
from discrete.domain import Discrete, DiscreteConfig
from discrete.model import SequenceTransformer
from multigen import load_pretrained
from multigen.config import ConfigError, load_config
from multigen.samplers import Known
from multigen.trainer import read_log, train

# Uniform times: with the default stratified draw this 400-step run once scored 3.66 ± 0.18 bits/char against the
# learning test's 3.97 bound (one seed; at the default's scale it measured 3.220 against uniform's 3.261).
# AdamW alone with beta2 0.99, a constant rate after the warmup, clipping at 1, the GELU MLP and learned absolute
# positions: the recipe the bound has held with (the text default's Muon, beta2 0.95, linear tail, clipping at 0.25,
# SwiGLU and rotary positions were tuned at 5 200 steps).
TINY = [
    "process.timesteps=32", "process.time_sampling=uniform", "model.dim=96", "model.depth=2", "model.mlp=gelu",
    "model.rotary=false",
    "train.optimizer=adamw", "data.length=32",
    "train.batch_size=32", "train.adam_betas=[0.9,0.99]", "train.lr_decay=none", "train.grad_clip=1",
    "train.lr=3e-3", "train.warmup_steps=20", "train.sample_every=0", "train.checkpoint_every=0",
    "train.tensorboard=false", "train.ema_decay=0.9", "sample.num=2", "eval.num_sequences=64",
]


# English in the built-in text's style but not from it, long enough (592 characters, 18 windows of 32) that the
# learning test's margin is several standard errors: on 171 characters it passed by 0.004 bits/char on torch 2.13
# and failed by 0.014 on torch 2.11 (the same seed; kernels round differently); on these, 0.16 and 0.14
HELD_OUT = ("The return statement leaves the current function call with the expression list, or None. "
            "When it is used in a generator function, it indicates that the generator is done. "
            "A for loop runs its body once for each item of an iterable, binding the item to the loop's target. "
            "A while loop runs its body as long as its condition is true; a break statement ends the loop at once, "
            "and a continue statement skips to the next pass. Functions are defined with def and may give default "
            "values to their parameters. A class statement creates a new type whose instances share the methods "
            "written in its body.")


def _export(tmp_path_factory, steps: int):
    out = tmp_path_factory.mktemp("discrete")
    train(Discrete, load_config(DiscreteConfig, None, [*TINY, f"train.output_dir={out}", f"train.max_steps={steps}"]))
    return out


@pytest.fixture(scope="module")
def untrained_export(tmp_path_factory):
    """Two training steps: an export for the mechanics (tokenizer, sampling, infilling, CLI), not for quality."""
    return _export(tmp_path_factory, 2)


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory):
    """400 training steps (slow tests only)."""
    return _export(tmp_path_factory, 400)


def _eval_line(ckpt: str, path, capsys, *extra: str) -> tuple[float, float, str]:
    assert discrete_cli(["eval", "--checkpoint", ckpt, "--data", str(path), *extra]) == 0
    line = capsys.readouterr().out
    mean, _, stderr = line.split(": ")[1].split()[:3]
    return float(mean), float(stderr), line


@pytest.mark.slow
def test_tiny_model_beats_unigram_on_held_out_text(trained_export, tmp_path, capsys):
    metrics = [r for r in read_log(trained_export) if "eval/elbo_bits_per_token" in r][-1]
    assert metrics["eval/elbo_bits_per_token"] < metrics["eval/baseline_unigram_bits"] - 0.25, metrics
    assert 0 < metrics["eval/elbo_bits_stderr"] < 0.25, metrics
    # a text it never saw: below the entropy of that text's own character frequencies (an untrained model is far
    # above it, near log2 of the vocabulary)
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(HELD_OUT)
    counts = torch.tensor(list(Counter(HELD_OUT).values()), dtype=torch.float64)
    own_unigram = float(-(counts / counts.sum() * (counts / counts.sum()).log2()).sum())
    bits, stderr, _ = _eval_line(str(trained_export / "export"), held_out, capsys)
    assert bits + 2 * stderr < own_unigram, (bits, stderr, own_unigram)


def test_export_keeps_tokenizer_and_samples_decode(untrained_export):
    p = load_pretrained(untrained_export / "export")
    assert p.domain.tokenizer.chars == p.domain.cfg.data.vocab and len(p.domain.tokenizer) > 60
    tokens = p.sample(3, steps=8, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (3, 32) and tokens.max() < len(p.domain.tokenizer)  # no mask left
    assert all(len(t) == 32 for t in p.domain.decode(tokens))
    for call in (lambda: p.domain.decode(tokens[0]), lambda: p.domain.elbo_bits(p.model, tokens[0], 4)):
        with pytest.raises(ValueError, match=r"\(N, L\)|\(n, L\).*got shape \(32,\) \(one .*\[None\]\)"):
            call()  # one sequence, not a batch of them


def test_library_calls_take_narrow_integers_and_name_what_they_cannot_take(untrained_export):
    """Found by a walkthrough: negative ids decoded as the last characters, float ids and a float step count were
    TypeErrors, int16 tokens a scatter error, an empty batch or a batch size of 0 an IndexError or a split error;
    ``orders`` without ``any_order`` was ignored; more steps than the chain was refused by the ELBO of a masked
    model, which samples them."""
    p = load_pretrained(untrained_export / "export")
    d, tokens = p.domain, p.sample(2, steps=4, generator=torch.Generator().manual_seed(0))
    assert d.decode(torch.tensor([[0, -1, len(d.tokenizer)]]))[0][1:] == "__"
    with pytest.raises(TokenError, match="decode: integer token ids, got torch.float32"):
        d.decode(tokens.float())
    bits = d.elbo_bits(p.model, tokens, 2, steps=4)
    assert torch.equal(d.elbo_bits(p.model, tokens.to(torch.int16), 2, steps=4), bits)
    assert d.elbo_bits(p.model, tokens[:0], 2).shape == (0,)
    assert torch.equal(d.elbo_bits(p.model, tokens, 2, orders=2), d.elbo_bits(p.model, tokens, 2, any_order=True,
                                                                              orders=2))
    assert torch.isfinite(d.elbo_bits(p.model, tokens, 2, steps=64)).all()  # the finer chain (T = 32)
    with pytest.raises(ValueError, match="steps=4: the any-order bound .*orders=2"):  # (steps were dropped)
        d.elbo_bits(p.model, tokens, 2, steps=4, orders=2)
    for call, message in ((lambda: d.elbo_bits(p.model, tokens, 0), "batch_size: a whole number >= 1, got 0"),
                          (lambda: d.elbo_bits(p.model, tokens, 2, steps=2.5), "steps: a whole number"),
                          (lambda: p.sample(1, steps=2.5), "sample.steps: Value '2.5' of type 'float'"),
                          (lambda: p.sample(1, length=4.0), "sample.length: Value '4.0'"),
                          (lambda: p.sample(1, steps=True), "sample.steps: Value 'True'")):
        with pytest.raises(ValueError, match=message):
            call()


def test_an_export_from_before_the_mlp_and_rotary_options_loads_with_gelu_and_learned_positions(untrained_export,
                                                                                                 tmp_path):
    """model.mlp's default became swiglu and model.rotary's true; an export without the keys was trained with the
    GELU MLP and learned absolute positions."""
    shutil.copytree(untrained_export / "export", tmp_path / "export")
    config = tmp_path / "export" / "config.yaml"
    config.write_text(config.read_text().replace("  mlp: gelu\n", "").replace("  rotary: false\n", ""))
    assert "mlp" not in config.read_text() and "rotary" not in config.read_text()
    pretrained = load_pretrained(tmp_path / "export")  # the weights load into the network it builds
    assert pretrained.config.model.mlp == "gelu" and DiscreteConfig().model.mlp == "swiglu"
    assert pretrained.config.model.rotary is False and DiscreteConfig().model.rotary is True
    assert pretrained.model.positions is not None
    config.write_text("\n".join(line for line in config.read_text().splitlines() if "remask" not in line) + "\n")
    assert "remask" not in config.read_text()  # an export from before remasking: sampled without it, as it was
    assert load_pretrained(tmp_path / "export").domain.sample_settings().remask == 0.0


def test_cli_infill_prompt_and_eval(untrained_export, tmp_path, capsys):
    ckpt = str(untrained_export / "export")
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
    held_out.write_text(HELD_OUT)
    # eval prints the mean and standard error of the per-sequence estimates the domain computes
    p = load_pretrained(untrained_export / "export")
    windows = TokenWindows(p.domain.tokenizer.encode(HELD_OUT), 32)
    data = torch.stack([windows[i] for i in range(len(windows))])
    for extra, words in [([], "32 steps; every term"), (["--steps", "4"], "4 steps; every term"),
                         (["--any-order"], "continuous time, one random order"),
                         (["--orders", "3"], "importance-weighted over 3 random orders")]:
        bits, stderr, line = _eval_line(ckpt, held_out, capsys, *extra)
        per_sequence = p.domain.elbo_bits(p.model, data, 32, steps=4 if "--steps" in extra else None,
                                          any_order=bool({"--any-order", "--orders"} & set(extra)),
                                          orders=3 if "--orders" in extra else 1).double()
        assert bits == pytest.approx(per_sequence.mean().item(), abs=1e-4)
        assert stderr == pytest.approx(per_sequence.std().item() / len(data) ** 0.5, abs=1e-4) and stderr > 0
        assert "bits/char" in line and words in line
    for extra in (["--any-order"], ["--orders", "2"]):
        assert discrete_cli(["eval", "--checkpoint", ckpt, "--data", str(held_out), *extra, "--steps", "4"]) == 2
        assert "steps=4: the any-order bound" in capsys.readouterr().err
    assert discrete_cli(["sample", "--checkpoint", ckpt, "--prompt", "Ωmega"]) == 2
    assert "'Ω'" in capsys.readouterr().err
    assert discrete_cli(["sample", "--checkpoint", ckpt, "--prompt", "The", "--temperature", "0"]) == 2
    assert "sample.temperature: must be > 0.0, got 0.0" in capsys.readouterr().err
    assert discrete_cli(["sample", "--checkpoint", ckpt, "--num", "1", "--steps", "2", "--infill", ""]) == 0
    assert discrete_cli(["sample", "--checkpoint", ckpt, "--infill", "the __ fox", "--mask-char", "__"]) == 2
    assert "--mask-char must be one character" in capsys.readouterr().err
    assert discrete_cli(["sample", "--checkpoint", ckpt, "--infill", "_" * 33]) == 2
    assert "the infill text has 33 characters, more than the model's maximum sequence length 32" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        discrete_cli(["eval", "--checkpoint", ckpt, "--data", str(held_out), "--batch-size", "0"])
    assert "--batch-size: must be at least 1, got 0" in capsys.readouterr().err


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


@pytest.mark.parametrize("overrides, message", [
    (["process.infill_rate=0.5"], "masked objective"),
    (["process.transition=uniform", "model.time_conditioning=false"], "needs process.transition=absorbing"),
    (["process.transition=uniform", "process.infill_rate=1.5"], "process.infill_rate: must be <= 1.0"),
    (["process.schedule=linear"], "process.schedule=linear with the masked objective"),
    (["data.source=tokens", "data.vocab_size=5"], "data.path: data.source=tokens"),
])
def test_infill_rate_and_time_conditioning_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        Discrete(load_config(DiscreteConfig, None, overrides))


def test_fit_reads_both_splits_before_training(tmp_path):
    """A character only the held-out tenth has is in the vocabulary; a held-out part shorter than one window, or a
    held-out file with characters the given vocabulary lacks, fails in ``fit`` (before training), naming that part;
    ``data.val_path`` is read for the held-out split also when the training text is the built-in one."""
    text = tmp_path / "text.txt"
    text.write_text("ab" * 45 + "abZ" * 4)  # 102 characters: Z only in the last tenth
    domain = Discrete(load_config(DiscreteConfig, None, [f"data.path={text}", "data.length=8"]))
    domain.fit()
    assert "Z" in domain.cfg.data.vocab and len(domain.build_dataset("val")) == 1
    domain = Discrete(load_config(DiscreteConfig, None, [f"data.path={text}", "data.length=16"]))
    with pytest.raises(TokenError, match=r"text\.txt \(its held-out last tenth\) holds 11 tokens.*data\.length=16"):
        domain.fit()
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("abc" * 10)
    overrides = [f"data.val_path={held_out}", "data.length=8"]
    with pytest.raises(TokenError, match=r"held_out\.txt has characters .* \['c'\]"):
        Discrete(load_config(DiscreteConfig, None, [*overrides, f"data.path={text}", "data.vocab=abZ"])).fit()
    domain = Discrete(load_config(DiscreteConfig, None, overrides))  # built-in training text, own held-out file
    domain.fit()
    assert domain.stream("val").tolist() == domain.tokenizer.encode("abc" * 10).tolist()


def test_each_split_is_read_and_encoded_once(tmp_path, monkeypatch):
    """``fit`` checks both splits; building their datasets then reuses those streams, not the file again."""
    import discrete.domain as domain_module

    text = tmp_path / "text.txt"
    text.write_text("abcd" * 50)
    reads = []
    monkeypatch.setattr(domain_module, "read_text", lambda path: reads.append(path) or text.read_text())
    domain = Discrete(load_config(DiscreteConfig, None, [f"data.path={text}", "data.length=8"]))
    domain.fit()
    sizes = [len(domain.build_dataset(split)) for split in ("train", "val")]
    assert len(reads) == 4 and sizes[1] == 2  # fit: the vocabulary, then each split checked; no more


def test_infilling_model_is_told_the_known_part():
    """Trained with ``process.infill_rate``, the model gets the known mask in training and in ``sample``; a model
    trained without it gets none, and refuses one given by hand."""
    small = ["model.dim=16", "model.depth=1", "model.heads=2", "data.length=12", "process.timesteps=8",
             "process.transition=uniform"]
    for rate in (0.0, 1.0):
        domain = Discrete(load_config(DiscreteConfig, None, [*small, f"process.infill_rate={rate}"]))
        domain.fit()
        model = domain.build_model()
        calls = []
        hook = model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs.get("known")),
                                               with_kwargs=True)
        batch = torch.stack([domain.build_dataset("train")[i] for i in range(64)])
        domain.training_loss(model, batch).backward()
        mask = torch.arange(12) < 5
        out = domain.sample(model, 3, known=Known(mask, batch[:3]), steps=2)
        assert torch.equal(out[:, mask], batch[:3, mask])
        if rate == 0:
            assert calls == [None] * 3
            assert model.known.vector is None
            with pytest.raises(ValueError, match="infill_rate=0"):
                model(batch, torch.ones(64, dtype=torch.long), known=torch.ones_like(batch, dtype=torch.bool))
        else:
            assert calls[0].any(1).float().mean() > 0.8 and not calls[0].all()  # rate 1: (nearly) every sequence
            assert all(torch.equal(c, mask.expand(3, -1)) for c in calls[1:]) and len(calls) == 3
            assert model.known.vector.grad.abs().sum() > 0
        hook.remove()


def _copy_task_infill_accuracy(marked: bool, steps: int = 200) -> float:
    """A uniform D3PM on sequences of one repeated token (K = 8, L = 8), trained ``steps`` steps with known parts
    marked (or plainly), then infilling 256 sequences from one known token: the share of generated tokens right."""
    torch.manual_seed(0)
    K, L, T = 8, 8, 16
    process = D3PM(Uniform(K, d3pm_betas("cosine", T)))
    model = SequenceTransformer(K, L, T, dim=32, depth=1, heads=2, known_flag=marked)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        x0 = torch.randint(0, K, (64, 1)).expand(64, L)
        known = random_known(x0, 1.0) if marked else None
        process.loss(partial(model, known=known), x0, known=known).mean().backward()
        opt.step()
        opt.zero_grad()
    x0 = torch.randint(0, K, (256, 1)).expand(256, L)
    mask = F.one_hot(torch.randint(0, L, (256,)), L).bool()
    with torch.no_grad():
        out = process.sample(partial(model, known=mask if marked else None), (256, L), known=Known(mask, x0),
                             generator=torch.Generator().manual_seed(1), device="cpu")
    return ((out == x0) & ~mask).sum().item() / (~mask).sum().item()


def test_marked_known_part_lets_a_uniform_model_infill():
    """Issue 17, bug 2: shown clean but unmarked, one known token among uniform noise is just another token to a
    plain model (about 0.4 of the rest infilled right); trained with marked known parts, the model copies it."""
    plain, marked = _copy_task_infill_accuracy(False), _copy_task_infill_accuracy(True)
    assert marked > 0.9 and marked > plain + 0.3, (plain, marked)


def test_zero_or_negative_temperature_is_a_config_error():
    for value in ("0", "-1"):  # (-1 was told ">= 0")
        with pytest.raises(ConfigError, match=r"sample.temperature: must be > 0.0, got"):
            Discrete(load_config(DiscreteConfig, None, [f"sample.temperature={value}"]))


def test_a_text_of_one_character_is_refused(tmp_path):
    (tmp_path / "nl.txt").write_text("\n" * 400)
    with pytest.raises(TokenError, match=r"one distinct character \('\\n'\): nothing to learn"):
        Discrete(load_config(DiscreteConfig, None, [f"data.path={tmp_path / 'nl.txt'}", "data.length=8"])).fit()


def test_remask_left_unset_is_the_measured_share_for_absorbing_chains_and_none_for_the_others():
    """``sample.remask`` left unset (null) is :data:`REMASK` for an absorbing chain and 0 for the others, sampled
    with; a share given in the config or the call is kept, and ``null`` in an override unsets a config's."""
    from discrete.domain import REMASK
    from multigen.train import resolve_config_file

    text = Discrete(load_config(DiscreteConfig))
    assert text.cfg.sample.remask is None and text.sample_settings().remask == REMASK == 0.1
    assert text.sample_settings(remask=0).remask == 0 and text.sample_settings(remask=0.3).remask == 0.3
    assert Discrete(load_config(DiscreteConfig, None, ["sample.remask=0"])).sample_settings().remask == 0
    uniform = Discrete(load_config(DiscreteConfig, None, ["process.transition=uniform"]))
    digits = Discrete(load_config(DiscreteConfig, resolve_config_file("discrete", "digits")))
    assert uniform.sample_settings().remask == digits.sample_settings().remask == 0
    labels = resolve_config_file("discrete", "labels")
    assert Discrete(load_config(DiscreteConfig, labels)).sample_settings().remask == 0.05
    assert Discrete(load_config(DiscreteConfig, labels, ["sample.remask=null"])).sample_settings().remask == REMASK
    drawn = {}

    def spy(model, shape, **kw):
        drawn.update(kw)
        return torch.zeros(shape, dtype=torch.long)

    text = Discrete(load_config(DiscreteConfig, None, ["data.vocab=ab"]))  # its chain: known classes
    text.process.sample = spy
    text.sample(torch.nn.Linear(1, 1), 2)
    assert drawn["remask"] == REMASK


@pytest.mark.parametrize("overrides", [
    ["process.timesteps=8"],  # absorbing, masked-diffusion objective
    ["process.timesteps=8", "process.transition=uniform"],  # hybrid D3PM loss
    ["process.timesteps=8", "data.source=digits", "data.levels=4", "process.transition=gaussian"],
    ["process.timesteps=8", "process.transition=uniform", "process.infill_rate=0.5"],
    ["process.timesteps=8", "model.self_condition=true"],
    ["process.timesteps=8", "data.source=digits", "data.levels=4", "model.self_condition=true"],
], ids=["absorbing", "uniform", "digits_gaussian", "uniform_infill", "self_conditioned", "digits_self_conditioned"])
def test_training_loss_and_sampling_keep_to_the_device(device, overrides):
    """The domain's loss and sampler make every tensor on the model's device (meta raises on a CPU-made one)."""
    domain = Discrete(load_config(DiscreteConfig, None, [*overrides, "model.dim=16", "model.depth=1",
                                                         "model.heads=2", "data.length=12"]))
    domain.fit()
    model = domain.build_model().to(device)
    batch = torch.stack([domain.build_dataset("train")[i] for i in range(2)]).to(device)
    loss = domain.training_loss(model, batch)
    assert loss.device == device and loss.shape == ()
    shape = batch.shape[1:]
    known = Known(torch.zeros(shape, dtype=torch.bool, device=device).index_fill(0, torch.tensor([0], device=device),
                                                                              True), batch)
    out = domain.sample(model, 2, known=known)
    assert out.device == device and out.shape == batch.shape
