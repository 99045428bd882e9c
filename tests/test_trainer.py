"""The Accelerate trainer on the toy2d domain: learning, exact resume, NaN stop (every state kept bit-exactly,
no host sync per step on CUDA), torch.compile, export, 2 processes."""

import copy
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_model

from multigen import load_pretrained
from multigen.toy2d import Toy2D, Toy2DConfig
from multigen.checkpoints import latest_checkpoint
from multigen.config import ConfigError, load_config, read_yaml
from multigen.domain import DataError, Domain, get_domain
from multigen.export import export_model
from multigen.trainer import EMA, NonFiniteLossError, ShardedStreamSampler, Trainer, lr_factor, read_log, train

from .conftest import REPO, reset_accelerate


class Interrupted(Exception):
    pass


def crashing_domain(after_calls: int, nan: bool = False) -> type[Toy2D]:
    """Toy2D whose loss raises (or turns NaN) after ``after_calls`` calls: a killed or diverging run."""

    class Crashing(Toy2D):
        calls = 0

        def training_loss(self, model, batch):
            Crashing.calls += 1
            loss = super().training_loss(model, batch)
            if Crashing.calls > after_calls:
                if nan:
                    return loss * float("nan")
                raise Interrupted
            return loss

    return Crashing


@pytest.mark.slow
def test_toy2d_learns_the_distribution(toy_cfg):
    cfg = toy_cfg("train.max_steps=1500", "train.log_every=100", "model.hidden=128", "train.checkpoint_every=0",
                  "train.lr=3e-3", "train.batch_size=256", "data.num_train=20000", "data.num_val=3000",
                  "sample.steps=25")
    domain = Toy2D(cfg)
    torch.manual_seed(cfg.train.seed)  # the untrained reference must not depend on what ran before in the process
    model = domain.build_model()
    val = domain.build_dataset("val")
    untrained = domain.evaluate(model, val)
    export = train(Toy2D, cfg)
    trained = load_pretrained(export)
    metrics = trained.domain.evaluate(trained.model, val)
    print("untrained", untrained, "trained", metrics)
    # The data's own Gaussian fit sits at ~0.34; trained samples must be much closer to the data than that.
    assert metrics["sliced_w2"] < 0.15
    assert metrics["sliced_w2"] < 0.5 * metrics["sliced_w2_gaussian_baseline"]
    assert metrics["sliced_w2"] < 0.4 * untrained["sliced_w2"]
    losses = [r["loss"] for r in read_log(export.parent) if "loss" in r]
    assert len(losses) == 15 and sum(losses[-3:]) < sum(losses[:3]), losses
    samples = sorted((export.parent / "samples").glob("*.png"))
    assert samples, "the run writes a sample picture"


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_after_interruption_is_bit_exact(toy_cfg, optimizer):
    steps = ["train.max_steps=30", "train.checkpoint_every=10", "train.log_every=5", f"train.optimizer={optimizer}"]
    straight = train(Toy2D, toy_cfg(*steps, out="straight"))

    cfg = toy_cfg(*steps, out="resumed")
    with pytest.raises(Interrupted):
        train(crashing_domain(25), cfg)  # dies during step 26, after checkpoint 20 and the log of step 25
    ckpt = latest_checkpoint(REPO.joinpath(cfg.train.output_dir) / "checkpoints")
    assert ckpt is not None and ckpt.name == "step_20"
    with open(REPO.joinpath(cfg.train.output_dir) / "log.jsonl", "a") as log:
        log.write('{"step": 26, "lo')  # and was killed as it wrote a line
    reset_accelerate()
    resumed = train(Toy2D, cfg)
    assert read_log(resumed.parent) == read_log(straight.parent)  # each step logged once, step 25 too

    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"EMA weight {k} differs after resume"
    ma = load_file(straight.parent / "checkpoints/step_30/model.safetensors")
    mb = load_file(resumed.parent / "checkpoints/step_30/model.safetensors")
    for k in ma:
        assert torch.equal(ma[k], mb[k]), f"weight {k} differs after resume"


def test_a_run_whose_log_was_removed_resumes_and_logs_from_its_checkpoint_on(toy_cfg):
    cfg = toy_cfg("train.max_steps=10", out="no_log")
    out = train(Toy2D, cfg).parent
    (out / "log.jsonl").unlink()
    train(Toy2D, toy_cfg("train.max_steps=20", out="no_log"))
    assert [r["step"] for r in read_log(out) if "loss" in r] == [20]


def test_a_training_set_smaller_than_the_process_count_is_a_data_error():
    with pytest.raises(DataError, match=r"the training set has 1 item\(s\), too few to split over 2 processes"):
        ShardedStreamSampler(1, seed=0, rank=0, world=2)
    assert ShardedStreamSampler(2, seed=0, rank=1, world=2).per_rank == 1  # one item each is enough


def test_a_run_stopped_by_too_few_items_for_its_processes_leaves_no_config(toy_cfg, monkeypatch):
    """The process count's check is one of the data checks: the config was written before it, and the next run in
    that folder set the lone file aside as an earlier run's."""
    def too_few(self, size, *args, **kwargs):
        raise DataError(f"the training set has {size} item(s), too few to split over 2 processes")

    monkeypatch.setattr(ShardedStreamSampler, "__init__", too_few)
    cfg = toy_cfg(out="too_few")
    with pytest.raises(DataError, match="too few to split"):
        Trainer(Toy2D, cfg).resume()  # (where the data is set up)
    assert not os.path.exists(os.path.join(cfg.train.output_dir, "config.yaml"))


def test_the_stream_goes_on_with_the_items_not_drawn_whatever_the_process_count():
    """After ``start`` items drawn by all processes together, the processes of any count draw the rest of the
    epoch's permutation, each once: resumed on 2 processes after 15 items drawn on 1, one item was drawn again."""
    from itertools import islice

    def drawn(world, start, each):
        return [i for rank in range(world) for i in islice(ShardedStreamSampler(40, 3, rank, world, start), each)]

    first = drawn(1, 0, 15)
    for world in (1, 2, 3):
        resumed = drawn(world, 15, 24 // world)
        assert not set(first) & set(resumed) and len(set(first + resumed)) == 39
    assert drawn(2, 14, 3) == [i for r in range(2) for i in islice(ShardedStreamSampler(40, 3, r, 2), 7, 10)]


def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(toy_cfg):
    cfg = toy_cfg("train.max_steps=30", "train.checkpoint_every=10")
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss .* step 16.*step_10"):
        train(crashing_domain(15, nan=True), cfg)
    ckpt_dir = REPO.joinpath(cfg.train.output_dir) / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step_10"]
    weights = load_file(ckpt_dir / "step_10" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_the_error_names_the_first_bad_step_not_a_later_one(toy_cfg):
    """Steps 13 (NaN) and 14 (inf) both fail between two log steps: the error reports step 13's loss."""

    class TwoBad(Toy2D):
        calls = 0

        def training_loss(self, model, batch):
            TwoBad.calls += 1
            return super().training_loss(model, batch) * {13: math.nan, 14: math.inf}.get(TwoBad.calls, 1.0)

    trainer = Trainer(TwoBad, toy_cfg("train.checkpoint_every=0"))
    trainer.resume()
    for _ in range(15):
        trainer.step()
    with pytest.raises(NonFiniteLossError, match=r"\(loss nan, gradient norm nan\) at step 13;"):
        trainer.check_finite()


def test_the_step_returns_its_loss_detached_from_every_micro_batchs_graph(toy_cfg):
    trainer = Trainer(Toy2D, toy_cfg("train.checkpoint_every=0", "train.grad_accum=2"))
    trainer.resume()
    loss = trainer.step()
    assert loss.ndim == 0 and not loss.requires_grad


def test_a_checkpoint_is_written_before_its_steps_evaluation_and_evaluating_changes_no_training(toy_cfg):
    """The main process evaluates while the others wait (at most train.process_timeout_min): the step's checkpoint
    is already written then, so an evaluation that outlasts the wait loses no training. Evaluations and samples draw
    nothing from the training's random streams: a run ends with the same weights however often it evaluates."""
    checkpoints = []

    class Evaluated(Toy2D):
        def evaluate(self, model, dataset):
            checkpoints.append(sorted(p.name for p in (out / "checkpoints").iterdir()))
            torch.rand(8)  # an evaluation drawing from the global stream
            return super().evaluate(model, dataset)

    cfg = toy_cfg("train.max_steps=20", "train.eval_every=10", "train.sample_every=5")
    out = REPO.joinpath(cfg.train.output_dir)
    evaluated = load_file(train(Evaluated, cfg) / "model.safetensors")
    assert checkpoints == [["step_10"], ["step_10", "step_20"]]
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == [f"step_{s:06d}.png" for s in (5, 10, 15, 20)]
    quiet = toy_cfg("train.max_steps=20", out="quiet")
    quiet_weights = load_file(train(Toy2D, quiet) / "model.safetensors")
    assert all(torch.equal(evaluated[k], quiet_weights[k]) for k in quiet_weights)


def test_a_failed_final_evaluation_keeps_the_final_checkpoint_and_the_export(toy_cfg):
    """An error in the last evaluation (after hours of training) still writes the last step's checkpoint and the
    export (with checkpoints off, the only copy of the weights); a run resumed there trains no more and exports."""

    class FailingEvaluation(Toy2D):
        def evaluate(self, model, dataset):
            raise Interrupted

    cfg = toy_cfg("train.max_steps=12", "train.checkpoint_every=100", "train.eval_every=0", "train.sample_every=0")
    with pytest.raises(Interrupted):
        train(FailingEvaluation, cfg)
    out = REPO.joinpath(cfg.train.output_dir)
    assert latest_checkpoint(out / "checkpoints").name == "step_12" and (out / "export" / "model.safetensors").is_file()
    assert (train(Toy2D, cfg) / "model.safetensors").is_file()
    assert [r["step"] for r in read_log(out) if "eval/sliced_w2" in r] == [12]  # the resumed run evaluated step 12
    unsaved = toy_cfg("train.max_steps=12", "train.checkpoint_every=0", out="unsaved")
    with pytest.raises(Interrupted):
        train(FailingEvaluation, unsaved)
    assert load_pretrained(REPO.joinpath(unsaved.train.output_dir) / "export").domain.name == "toy2d"
    assert toy_cfg("data.num_val=3").data.num_val == 3
    with pytest.raises(ConfigError, match="data.num_val"):  # the Gaussian baseline's covariance needs 3
        toy_cfg("data.num_val=2")


def test_a_run_stopped_before_its_steps_samples_or_evaluation_does_them_when_resumed(toy_cfg, capsys):
    """A step's samples and evaluation follow its checkpoint: a run stopped between them (Ctrl-C while the final
    samples are drawn) does what its step still lacks when resumed there, and nothing twice."""
    drawn = []

    class StoppedWhileSampling(Toy2D):
        def sample(self, model, n, **kw):
            raise Interrupted

    class Counted(Toy2D):
        def sample(self, model, n, **kw):
            drawn.append(n)
            return super().sample(model, n, **kw)

    cfg = toy_cfg("train.max_steps=12", "train.checkpoint_every=6", "train.sample_every=6", "train.eval_every=0",
                  "train.tensorboard=true")  # the resumed run's TensorBoard writer set up with a purge step
    out = REPO.joinpath(cfg.train.output_dir)
    with pytest.raises(Interrupted):
        train(StoppedWhileSampling, cfg)  # in step 6's samples, after its checkpoint
    assert latest_checkpoint(out / "checkpoints").name == "step_6" and not (out / "samples").exists()
    reset_accelerate()
    train(Counted, cfg)
    assert "step 6: its samples are missing; doing them now" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == ["step_000006.png", "step_000012.png"]
    assert [r["step"] for r in read_log(out) if "eval/sliced_w2" in r] == [12]
    assert drawn == [64, 64, 500]  # step 6's samples, step 12's, its evaluation's
    reset_accelerate()
    train(Counted, cfg)  # a finished run: nothing is missing, nothing is redone
    assert drawn == [64, 64, 500] and [r["step"] for r in read_log(out) if "eval/sliced_w2" in r] == [12]


    class Unmeasured(Toy2D):  # a domain without metrics (the base class's evaluate) logs no evaluation to miss
        evaluate = Domain.evaluate

    for _ in range(2):  # a run, then its command again
        reset_accelerate()
        train(Unmeasured, toy_cfg("train.max_steps=6", "train.checkpoint_every=6", out="unmeasured"))
    assert "missing" not in capsys.readouterr().out


def test_a_resume_stopped_before_its_first_checkpoint_keeps_the_config_of_the_checkpoints(toy_cfg, capsys):
    """config.yaml describes the run's checkpoints: a resume with other settings that fails before it writes one (a
    non-finite loss at a learning rate raised too far) leaves it as it was, so the next resume names the changes
    from the checkpoints' settings; one that checkpoints writes its own."""
    first = toy_cfg("train.max_steps=10", "train.checkpoint_every=10", out="kept")
    out = train(Toy2D, first).parent
    config = (out / "config.yaml").read_text()
    reset_accelerate()
    with pytest.raises(NonFiniteLossError):
        train(Toy2D, toy_cfg("train.max_steps=40", "train.checkpoint_every=10", "train.lr=1e30", out="kept"))
    assert (out / "config.yaml").read_text() == config
    reset_accelerate()
    train(Toy2D, toy_cfg("train.max_steps=20", "train.checkpoint_every=10", out="kept"))
    assert "settings changed since the checkpoints were written: train.max_steps: 10 -> 20" in capsys.readouterr().out
    assert read_yaml(out / "config.yaml")["train"]["max_steps"] == 20


def test_held_out_data_that_cannot_be_used_stops_the_run_before_training(toy_cfg):
    class NoHeldOut(Toy2D):
        def build_dataset(self, split):
            if split == "val":
                raise FileNotFoundError("no val shapes under /data")
            return super().build_dataset(split)

    cfg = toy_cfg("train.max_steps=12", out="no_val")
    with pytest.raises(FileNotFoundError, match="no val shapes"):
        train(NoHeldOut, cfg)
    assert not (REPO.joinpath(cfg.train.output_dir) / "log.jsonl").exists()  # not one step was trained


def test_a_damaged_checkpoint_is_named_and_the_config_of_its_run_kept(toy_cfg):
    cfg = toy_cfg("train.max_steps=10", out="damaged")
    out = REPO.joinpath(cfg.train.output_dir)
    train(Toy2D, cfg)
    config = (out / "config.yaml").read_text()
    optimizer = out / "checkpoints" / "step_10" / "optimizer.bin"
    optimizer.rename(optimizer.with_suffix(".away"))  # a file lost in a copy
    with pytest.raises(ConfigError, match=r"step_10 could not be loaded \(FileNotFoundError.*optimizer.bin.*move it "
                                          r"out of"):
        train(Toy2D, toy_cfg("train.max_steps=20", out="damaged"))
    optimizer.with_suffix(".away").rename(optimizer)
    weights = out / "checkpoints" / "step_10" / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[:100])  # a file cut short as its disk filled
    with pytest.raises(ConfigError, match=r"step_10 could not be loaded \(SafetensorError.*move it out of"):
        train(Toy2D, toy_cfg("train.max_steps=20", out="damaged"))
    assert (out / "config.yaml").read_text() == config
    weights.write_bytes(intact)
    states = out / "checkpoints" / "step_10" / "random_states_0.pkl"  # Accelerate goes on without one it cannot read
    for damage in (b"garbage", states.read_bytes()[:50]):
        states.write_bytes(damage)
        with pytest.raises(ConfigError, match=r"step_10 could not be loaded \(\w+Error.*move it out of"):
            train(Toy2D, toy_cfg("train.max_steps=20", out="damaged"))
    (out / "checkpoints" / "step_10" / "multigen.json").write_text("{")
    with pytest.raises(ConfigError, match=r"multigen.json is damaged"):
        train(Toy2D, toy_cfg("train.max_steps=20", out="damaged"))


def test_a_domain_without_a_name_or_a_config_class_without_the_trainers_section_is_named(toy_cfg):
    from dataclasses import dataclass, field

    from multigen.config import DiffusionConfig

    @dataclass
    class NoTrain:
        diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    class Bare(Toy2D):
        config_class = NoTrain

    with pytest.raises(TypeError, match=r"train: NoTrain has no train section; a domain's config_class needs one, "
                                        r"train: TrainConfig = field\(default_factory=TrainConfig\)"):
        train(Bare, NoTrain())

    class Nameless(Domain):  # abstract methods are not reached: the check comes first
        config_class = Toy2DConfig

    with pytest.raises(TypeError, match=r"train: .*Nameless has no name; a domain class needs one, name = \"...\""):
        train(Nameless, toy_cfg())


def test_checkpoints_of_a_network_whose_code_changed_are_named_as_such(toy_cfg):
    """The network's code changed (a layer added) with every ``model.*`` setting as it was: no checkpoint of the run
    fits, and the error lists the keys that differ and says to start elsewhere, not to move the newest aside."""

    class Extended(Toy2D):
        def build_model(self):
            model = super().build_model()
            model.extra = torch.nn.Linear(2, 2)
            return model

    cfg = toy_cfg("train.max_steps=10", out="changed")
    train(Toy2D, cfg)
    with pytest.raises(ConfigError, match=r"step_10 holds the weights of another network than this code builds "
                                          r"\(Missing key\(s\) in state_dict: \"extra.bias\", \"extra.weight\"\.?\): "
                                          r"its code changed since; set a new train.output_dir, or train.resume=false"):
        train(Extended, toy_cfg("train.max_steps=20", out="changed"))


def nan_at_step(step: int, where: str = "loss") -> type[Toy2D]:
    """Toy2D whose loss (``where="loss"``), or only its gradients (``"gradient"``: the loss stays finite), is NaN at
    optimisation step ``step`` only (one micro-batch a step)."""

    class OneNaN(Toy2D):
        calls = 0

        def training_loss(self, model, batch):
            OneNaN.calls += 1
            loss = super().training_loss(model, batch)
            if OneNaN.calls != step:
                return loss
            return loss * float("nan") if where == "loss" else loss + (0 * loss).sqrt()  # d sqrt at 0: inf * 0

    return OneNaN


def snapshot(trainer: Trainer) -> dict:
    """Copies of everything an optimisation step may change."""
    return copy.deepcopy({
        "model": trainer.raw_model.state_dict(),
        "optimizers": [o.state_dict() for o in trainer.optimizers],
        "ema": trainer.ema.state_dict(),
        "lr": [g["lr"] for o in trainer.optimizers for g in o.param_groups],
        "step": trainer.state.step,
    })


def assert_bit_identical(a, b, where: str = "") -> None:
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_bit_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bit_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), f"{where} changed"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("precision,optimizer,where", [
    ("no", "adamw", "loss"), ("no", "muon", "loss"), ("no", "adamw", "gradient"), ("no", "muon", "gradient"),
    pytest.param("fp16", "adamw", "loss", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="fp16 loss scaling (GradScaler) needs CUDA"))])
def test_non_finite_loss_leaves_every_state_bit_identical(toy_cfg, precision, optimizer, where):
    # warmup and weight decay: a skipped step that still stepped the schedule or an optimiser would show
    cfg = toy_cfg("train.checkpoint_every=0", "train.warmup_steps=20", "train.weight_decay=0.1",
                  f"train.mixed_precision={precision}", f"train.optimizer={optimizer}")
    trainer = Trainer(nan_at_step(13, where), cfg)  # step 13 logs nothing (log_every=10)
    assert len(trainer.optimizers) == (2 if optimizer == "muon" else 1)
    trainer.resume()
    for _ in range(12):
        trainer.periodic(trainer.step())
    before = snapshot(trainer)
    for _ in range(3):  # NaN at 13; finite losses at 14 and 15 must not be applied either
        trainer.step()
    assert trainer.state.step == 15
    loss = "nan" if where == "loss" else r"\d\.\d+"
    with pytest.raises(NonFiniteLossError, match=rf"\(loss {loss}, gradient norm nan\) at step 13; .*Last checkpoint: "
                                                 rf"none"):
        trainer.check_finite()
    after = snapshot(trainer)
    assert after["ema"]["n_averaged"] == 12  # (fp16: the loss scaler may have skipped early AdamW steps itself)
    assert precision == "fp16" or after["optimizers"][0]["state"][0]["step"] == 12
    assert_bit_identical(before, after)


def test_starting_over_sets_the_earlier_run_aside(toy_cfg):
    """``train.resume=false`` in a used output_dir moves the earlier run's files into ``earlier_<date-time>/``: its
    checkpoints neither prune the new run's (the highest steps are kept) nor take over a later resume."""
    first = train(Toy2D, toy_cfg("train.max_steps=20", out="again")).parent
    again = toy_cfg("train.max_steps=5", "train.checkpoint_every=5", "train.resume=false", out="again")
    train(Toy2D, again)
    assert sorted(p.name for p in (first / "checkpoints").iterdir()) == ["step_5"]
    assert [r["step"] for r in read_log(first) if "loss" in r] == [5]
    (aside,) = first.glob("earlier_*")
    assert sorted(p.name for p in (aside / "checkpoints").iterdir()) == ["step_10", "step_20"]
    assert [r["step"] for r in read_log(aside) if "loss" in r] == [10, 20] and (aside / "export" / "model.safetensors").is_file()
    train(Toy2D, again)
    assert len(list(first.glob("earlier_*"))) == 2


def test_a_run_with_no_checkpoint_to_resume_sets_the_earlier_run_aside(toy_cfg, capsys):
    """Its checkpoints deleted (or never written), an earlier run's export, config and log are set aside, not
    overwritten by a run that starts over in its folder."""
    first = train(Toy2D, toy_cfg("train.max_steps=10", out="no_checkpoints")).parent
    weights = (first / "export" / "model.safetensors").read_bytes()
    shutil.rmtree(first / "checkpoints")
    train(Toy2D, toy_cfg("train.max_steps=5", "model.hidden=32", out="no_checkpoints"))
    (aside,) = first.glob("earlier_*")
    assert f"no checkpoint in {first / 'checkpoints'} to resume from: moved the earlier run's files" in (
        capsys.readouterr().out)
    assert (aside / "export" / "model.safetensors").read_bytes() == weights
    assert [r["step"] for r in read_log(aside) if "loss" in r] == [10]
    assert [r["step"] for r in read_log(first) if "loss" in r] == [5]
    assert read_yaml(first / "config.yaml")["model"]["hidden"] == 32
    assert read_yaml(aside / "config.yaml")["model"]["hidden"] == 64


def test_checkpoints_of_another_domain_are_named_as_such(toy_cfg):
    """A run's config.yaml names its domain, as an export's does; resuming a run of another domain in its folder is
    an error saying so (not that its checkpoint is damaged), before anything is written there."""
    run = train(Toy2D, toy_cfg("train.max_steps=10", out="domains")).parent
    config = (run / "config.yaml").read_text()
    assert config.startswith("domain: toy2d\n")
    (run / "config.yaml").write_text(config.replace("domain: toy2d\n", "domain: video\n"))
    with pytest.raises(ConfigError, match=rf"{run} holds checkpoints of a video run, not of a toy2d one: set a new "
                                          r"train.output_dir, or train.resume=false"):
        train(Toy2D, toy_cfg("train.max_steps=20", out="domains"))
    assert [r["step"] for r in read_log(run) if "loss" in r] == [10]
    (run / "config.yaml").write_text(config.replace("domain: toy2d\n", ""))  # as runs before the key wrote it
    train(Toy2D, toy_cfg("train.max_steps=20", out="domains"))
    assert [r["step"] for r in read_log(run) if "loss" in r] == [10, 20]
    assert (run / "config.yaml").read_text().startswith("domain: toy2d\n")


def test_checkpoints_without_their_config_are_not_resumed_unchecked(toy_cfg):
    """Every check of what is resumed (domain, network, process) reads the run's config.yaml: without it a run of
    another schedule resumed the checkpoints silently. Now an error saying what to do, before anything is written."""
    run = train(Toy2D, toy_cfg("train.max_steps=10", out="no_config")).parent
    (run / "config.yaml").unlink()
    with pytest.raises(ConfigError, match=rf"{run} holds checkpoints but no config.yaml, .* put it back"):
        train(Toy2D, toy_cfg("train.max_steps=20", "diffusion.timesteps=50", out="no_config"))
    assert not (run / "config.yaml").exists() and [r["step"] for r in read_log(run) if "loss" in r] == [10]


def test_resuming_another_network_is_an_error_and_other_changes_are_named(toy_cfg, capsys):
    """Checkpoints of another network in the output folder (shapes alike or not) are refused before anything is
    written there; other changed settings (training longer, say) are allowed and listed."""
    run = train(Toy2D, toy_cfg("train.max_steps=10", out="changed")).parent
    before = (run / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"another network or process \(model.hidden: 64 -> 32\).*train.resume="):
        train(Toy2D, toy_cfg("train.max_steps=20", "model.hidden=32", out="changed"))
    with pytest.raises(ConfigError, match=r"\(diffusion.parameterization: v -> eps, diffusion.schedule: cosine -> "):
        train(Toy2D, toy_cfg("train.max_steps=20", "diffusion.parameterization=eps", "diffusion.schedule=linear",
                             out="changed"))
    assert (run / "config.yaml").read_text() == before
    train(Toy2D, toy_cfg("train.max_steps=20", out="changed"))
    said = capsys.readouterr().out
    assert "settings changed since the checkpoints were written: train.max_steps: 10 -> 20\n" in said  # no decay
    train(Toy2D, toy_cfg("train.max_steps=30", "diffusion.beta_start=0.0002", out="changed"))  # the linear schedule's
    assert "diffusion.beta_start: 0.0001 -> 0.0002" in capsys.readouterr().out  # setting: this run's cosine ignores it
    train(Toy2D, toy_cfg("train.max_steps=40", "diffusion.beta_start=0.0002", "train.lr_decay=linear", out="changed"))
    assert ("train.max_steps: 30 -> 40 (train.lr_decay=linear now ends at the new train.max_steps: the learning rate "
            "rises again") in capsys.readouterr().out
    train(Toy2D, toy_cfg("train.max_steps=40", "diffusion.beta_start=0.0002", "train.lr_decay=linear",
                         "train.log_every=5", out="changed"))  # the decay's end stays
    assert "train.log_every: 10 -> 5\n" in capsys.readouterr().out
    from discrete.domain import DiscreteConfig
    from multigen.config import speed_only_keys
    from pointcloud.domain import PointCloudConfig
    from video.domain import VideoConfig

    assert speed_only_keys(VideoConfig()) == {"model.channels_last", "model.fold_frame_bias",  # may change on resume
                                              "model.gradient_checkpointing"}
    assert speed_only_keys(DiscreteConfig()) == speed_only_keys(PointCloudConfig()) == {"model.gradient_checkpointing"}


def test_a_config_built_in_python_is_checked_as_a_file_is_and_left_as_given(toy_cfg):
    """``train`` checks a config object made or changed in Python (a value of the wrong type, out of range, or a
    config of another domain), and trains on a checked copy: the caller's object is not changed by the run."""
    cfg = toy_cfg()
    cfg.train.max_steps = "five"
    with pytest.raises(ConfigError, match="train.max_steps: Value 'five' of type 'str' could not be converted"):
        train(Toy2D, cfg)
    cfg.train.max_steps, cfg.train.lr = 5, -1.0
    with pytest.raises(ConfigError, match=r"train.lr: must be >= 0.0, got -1.0"):
        train(Toy2D, cfg)
    with pytest.raises(TypeError, match="cfg must be a VideoConfig, the video domain's config_class, got Toy2DConfig"):
        Trainer(get_domain("video"), cfg)
    cfg.train.lr, cfg.train.max_steps = 1e-3, "10"  # text that reads as a whole number trains, as in a file
    given = copy.deepcopy(cfg)
    assert read_log(train(Toy2D, cfg).parent)[-1]["step"] == 10 and cfg == given


def test_a_time_limit_ends_the_run_at_a_log_step_with_its_checkpoint_and_export(toy_cfg, monkeypatch, capsys):
    """``train.max_minutes``: past it, the next log step is the last (final sampling, evaluation, checkpoint and
    export, as at max_steps); the clock is read at log steps only."""
    import multigen.trainer as trainer_module

    clock = iter(range(0, 10_000, 7))  # seconds: 7 more at every reading
    monkeypatch.setattr(trainer_module.time, "monotonic", lambda: float(next(clock)))
    cfg = toy_cfg("train.max_steps=1000", "train.max_minutes=0.5", "train.log_every=10",
                  "train.checkpoint_every=1000", out="timed")
    export = train(Toy2D, cfg)
    assert "train.max_minutes=0.5 have passed: step 50 is the last" in capsys.readouterr().out
    assert latest_checkpoint(export.parent / "checkpoints").name == "step_50" and (export / "model.safetensors").is_file()
    assert any("eval/sliced_w2" in r and r["step"] == 50 for r in read_log(export.parent))


def test_processes_that_find_different_checkpoints_stop_with_an_error(toy_cfg, monkeypatch):
    """Machines without a shared train.output_dir each find their own newest checkpoint (or none): all stop with
    an error instead of training different weights into a collective that hangs."""
    import multigen.trainer as trainer_module

    cfg = toy_cfg("train.max_steps=10", out="unshared")
    train(Toy2D, cfg)
    monkeypatch.setattr(trainer_module, "gather_object", lambda mine: mine + [None])  # a second process finds none
    trainer = Trainer(Toy2D, toy_cfg("train.max_steps=20", out="unshared"))
    with pytest.raises(ConfigError, match=r"process 0: step_10, process 1: None.*every machine shares"):
        trainer.resume()


def test_resuming_with_other_processes_or_batch_continues_the_data_where_it_stopped(toy_cfg, capsys):
    """The checkpoint records how many training items all processes have drawn; a run resumed with another number
    of processes or batch starts each process's share of the stream there (and says it is not bit-exact), and
    its own checkpoints count on from there, so a second resume continues too."""
    cfg = toy_cfg("train.max_steps=10", out="regrouped")
    train(Toy2D, cfg)
    info_file = REPO.joinpath(cfg.train.output_dir) / "checkpoints" / "step_10" / "multigen.json"
    info = json.loads(info_file.read_text())
    assert (info["processes"], info["consumed"]) == (1, 10 * 64)
    assert info["samples_per_step"] == 64
    info.update(processes=2, consumed=10 * 2 * 48, samples_per_step=2 * 48)  # as if 2 processes of batch 48 wrote it
    info_file.write_text(json.dumps(info))
    trainer = Trainer(Toy2D, toy_cfg("train.max_steps=20", out="regrouped"))
    trainer.resume()
    said = capsys.readouterr().out
    assert ("the checkpoint was written by 2 process(es), this run has 1; its run drew 96 training items a step, "
            "this run draws 64") in said
    assert "no longer bit-exact" in said
    data = trainer.domain.build_dataset("train").tensors[0]
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.train.seed))
    assert torch.equal(next(trainer.data), data[order[960:1024]])  # 10 steps of 96 items drawn, then batch 64
    train(Toy2D, toy_cfg("train.max_steps=20", out="regrouped"))
    info = json.loads((info_file.parent.parent / "step_20" / "multigen.json").read_text())
    assert info["consumed"] == 960 + 10 * 64
    capsys.readouterr()
    train(Toy2D, toy_cfg("train.max_steps=30", "train.batch_size=32", out="regrouped"))  # one process, another batch
    said = capsys.readouterr().out
    assert "its run drew 64 training items a step, this run draws 32" in said and "written by" not in said
    train(Toy2D, toy_cfg("train.max_steps=40", "train.batch_size=32", out="regrouped"))  # as the run before
    assert "bit-exact" not in capsys.readouterr().out
    info_file = info_file.parent.parent / "step_40" / "multigen.json"
    info = json.loads(info_file.read_text())
    del info["samples_per_step"]  # as checkpoints before 2026-12-06 were written: judged by the items drawn
    info_file.write_text(json.dumps(info))
    train(Toy2D, toy_cfg("train.max_steps=50", "train.batch_size=32", out="regrouped"))
    assert "its run drew 56 (on average) training items a step, this run draws 32" in capsys.readouterr().out


def test_data_workers_draw_differently_on_each_process_and_start(tmp_path):
    """Workers' random draws (a partial view, a subsample) differ between processes and between a run and its
    resumption, and repeat for the same process and start."""
    from functools import partial

    from torch.utils.data import DataLoader

    from multigen.trainer import seed_worker

    class Draws(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(())

    def draws(rank, start_step):
        loader = DataLoader(Draws(), batch_size=4, num_workers=1, generator=torch.Generator().manual_seed(0),
                            worker_init_fn=partial(seed_worker, seed=0, rank=rank, start_step=start_step))
        return next(iter(loader))

    first = draws(0, 0)
    assert torch.equal(first, draws(0, 0))
    assert not torch.equal(first, draws(1, 0)) and not torch.equal(first, draws(0, 500))


def test_precision_asked_of_accelerate_is_named_when_the_config_differs(toy_cfg, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    Trainer(Toy2D, toy_cfg(out="precision"))
    assert "accelerate asked for mixed precision bf16; train.mixed_precision=no decides" in capsys.readouterr().out


def test_resuming_with_another_optimiser_is_an_error_naming_the_checkpoint(toy_cfg):
    train(Toy2D, toy_cfg("train.max_steps=10", "train.checkpoint_every=10", out="switch"))
    with pytest.raises(ConfigError, match=r"step_10 was trained with train.optimizer=adamw, this run has "
                                          r"train.optimizer=muon"):
        train(Toy2D, toy_cfg("train.max_steps=20", "train.checkpoint_every=10", "train.optimizer=muon",
                             out="switch"))


def test_resuming_past_max_steps_is_an_error_and_the_runs_config_is_kept(toy_cfg):
    export = train(Toy2D, toy_cfg("train.max_steps=20", "train.checkpoint_every=10", out="past"))
    config = (export.parent / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"step_20 is at step 20, past train.max_steps=10: raise train.max_steps"):
        train(Toy2D, toy_cfg("train.max_steps=10", "train.checkpoint_every=10", out="past"))
    assert (export.parent / "config.yaml").read_text() == config and "max_steps: 20" in config
    train(Toy2D, toy_cfg("train.max_steps=20", "train.checkpoint_every=10", out="past"))  # at its end: exports again


def test_resuming_a_checkpoint_of_another_format_is_an_error_naming_it(toy_cfg):
    checkpoint = train(Toy2D, toy_cfg("train.max_steps=10", "train.checkpoint_every=10", out="old_format"))
    checkpoint = checkpoint.parent / "checkpoints" / "step_10"
    assert json.loads((checkpoint / "multigen.json").read_text()) == {
        "format": 2, "step": 10, "optimizer": "adamw", "processes": 1, "consumed": 640, "samples_per_step": 64}
    (checkpoint / "multigen.json").unlink()  # lost
    with pytest.raises(ConfigError, match=r"step_10 is incomplete \(no multigen.json\): move it out of .* to resume "
                                          r"from the checkpoint before it"):
        train(Toy2D, toy_cfg("train.max_steps=20", "train.checkpoint_every=10", out="old_format"))
    (checkpoint / "scheduler.bin").write_bytes(b"")  # as written before the format was recorded
    with pytest.raises(ConfigError, match=r"step_10 is in checkpoint format 1 \(this multigen reads 2\)"):
        train(Toy2D, toy_cfg("train.max_steps=20", "train.checkpoint_every=10", out="old_format"))
    (checkpoint.parent / "step_15").mkdir()  # made by hand, or emptied: no checkpoint of any format
    with pytest.raises(ConfigError, match=r"step_15 is incomplete \(no weights, no multigen.json\): move it out"):
        train(Toy2D, toy_cfg("train.max_steps=20", "train.checkpoint_every=10", out="old_format"))
    (checkpoint.parent / "step_15" / "multigen.json").write_text('{"format": 2}')  # its weights lost
    with pytest.raises(ConfigError, match=r"step_15 is incomplete \(no weights\): move it out"):
        train(Toy2D, toy_cfg("train.max_steps=20", "train.checkpoint_every=10", out="old_format"))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_adamw_lr_scale_applies_beside_muon_only(toy_cfg, optimizer):
    """Beside Muon, AdamW's parameters step at ``train.adamw_lr_scale`` times the schedule's rate, through warmup and
    decay; AdamW alone keeps every parameter at the schedule's rate. The log shows the schedule's rate."""
    cfg = toy_cfg(f"train.optimizer={optimizer}", "train.adamw_lr_scale=3", "train.lr=1e-3",
                  "train.warmup_steps=4", "train.lr_decay=linear", "train.max_steps=12", "train.checkpoint_every=0",
                  "train.log_every=1")
    trainer = Trainer(Toy2D, cfg)
    trainer.resume()
    for _ in range(cfg.train.max_steps):
        step = trainer.state.step
        lr = 1e-3 * lr_factor(step, 4, 12, "linear")
        got = [o.param_groups[0]["lr"] for o in trainer.optimizers]
        assert got == pytest.approx([3 * lr, lr] if optimizer == "muon" else [lr], rel=1e-12), step
        trainer.periodic(trainer.step())
    trainer.export()
    logged = [r["lr"] for r in read_log(cfg.train.output_dir) if "lr" in r]
    assert logged == pytest.approx([1e-3 * lr_factor(s, 4, 12, "linear") for s in range(1, 13)], rel=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 on a CPU is refused before the optimiser is chosen")
def test_muon_refuses_fp16_loss_scaling(toy_cfg):
    with pytest.raises(ConfigError, match="train.optimizer=muon with train.mixed_precision=fp16"):
        Trainer(Toy2D, toy_cfg("train.optimizer=muon", "train.mixed_precision=fp16"))


@pytest.mark.skipif(torch.accelerator.is_available(), reason="fp16 runs where an accelerator is")
def test_fp16_on_a_cpu_is_refused_not_run_in_fp32(toy_cfg):
    """Accelerate takes fp16 on a CPU without autocast or a loss scaler: the run trained in fp32 (the losses of
    mixed_precision=no to the bit) and its export said fp16."""
    with pytest.raises(ConfigError, match="train.mixed_precision=fp16 on a CPU: .* use bf16 or no"):
        Trainer(Toy2D, toy_cfg("train.mixed_precision=fp16"))


@pytest.mark.slow  # a cold inductor compile takes about a minute on a busy 2-core CPU
def test_compile_gives_the_eager_losses_and_plain_state_keys(toy_cfg):
    from torch._dynamo.utils import counters

    common = ("train.max_steps=3", "train.log_every=1", "train.checkpoint_every=3", "sample.num=8")
    eager = train(Toy2D, toy_cfg(*common, out="eager"))
    counters.clear()
    compiled = train(Toy2D, toy_cfg(*common, "train.compile=true", out="compiled"))
    assert counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    losses = [[r["loss"] for r in read_log(run.parent) if "loss" in r] for run in (eager, compiled)]
    assert len(losses[0]) == 3 and losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-6)
    for name in ("export/model.safetensors", "checkpoints/step_3/model.safetensors"):
        assert load_file(compiled.parent / name).keys() == load_file(eager.parent / name).keys(), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (MULTIGEN_TEST_DEVICE=cuda on a GPU machine)")
@pytest.mark.parametrize("name,optimizer", [("toy2d", "adamw"), ("video", "adamw"), ("pointcloud", "adamw"),
                                            ("discrete", "adamw"), ("discrete", "muon")])
def test_optimisation_steps_do_not_sync_with_the_gpu(name, optimizer, tmp_path):
    domain_cls = get_domain(name)
    cfg = load_config(domain_cls.config_class, REPO / "configs" / name / "tiny.yaml", [
        f"train.output_dir={tmp_path}", "train.max_steps=100", "train.log_every=100", "train.checkpoint_every=0",
        "train.sample_every=0", "train.tensorboard=false", "train.batch_size=4", f"train.optimizer={optimizer}"])
    trainer = Trainer(domain_cls, cfg)
    trainer.resume()
    for _ in range(2):  # first steps allocate: optimiser state, per-device tables, cuDNN plans
        trainer.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.periodic(trainer.step())  # neither logs nor checkpoints at steps 3-5
    finally:
        torch.cuda.set_sync_debug_mode(0)
    trainer.check_finite()
    assert trainer.state.step == 5


def test_export_loads_without_training_code(toy_cfg):
    export = train(Toy2D, toy_cfg("train.max_steps=5", "train.checkpoint_every=0", "train.sample_every=5"))
    assert (export / "model.safetensors").is_file() and (export / "config.yaml").is_file()
    pretrained = load_pretrained(export)
    assert pretrained.config.model.hidden == 64
    x = pretrained.sample(8, steps=5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (8, 2) and torch.isfinite(x).all()
    assert list((export.parent / "samples").glob("step_000005.png"))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_pretrained(export.parent)


def test_export_and_load_name_a_model_that_is_not_its_configs(toy_cfg, tmp_path):
    """A network that its config does not build is refused at export (it would not load), naming what differs;
    weights of other shapes under a config are refused at load, naming the file and the parameters."""
    domain = Toy2D(toy_cfg())
    narrow = Toy2D(toy_cfg("model.hidden=32")).build_model()
    with pytest.raises(ValueError, match=r"toy2d config builds.*of other shapes \[.*: \(32, "):
        export_model(narrow, domain, tmp_path / "export")
    assert not (tmp_path / "export").exists()
    export = export_model(domain.build_model(), domain, tmp_path / "export")
    save_model(narrow, str(export / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model.safetensors does not match the model its config.yaml builds: "
                                         r"of other shapes"):
        load_pretrained(export)


def launch_two_processes(script: str, *args: str) -> str:
    """``accelerate launch`` of ``script`` (relative to the repository) with ``args`` on two CPU processes; its
    output, after checking it succeeded."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / script), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout + r.stderr


TWO_PROCESS_TOY = ["train.tensorboard=false", "sample.num=64", "data.num_val=200", "model.hidden=32"]


@pytest.mark.slow
def test_two_process_cpu_launch(tmp_path):
    out = tmp_path / "ddp"
    log = launch_two_processes("multigen/train.py", "--domain", "toy2d", f"train.output_dir={out}",
                               "train.max_steps=20", "train.checkpoint_every=10", *TWO_PROCESS_TOY)
    assert "2 process(es)" in log
    assert (out / "export" / "model.safetensors").is_file()
    assert {p.name for p in (out / "checkpoints" / "step_20").glob("random_states_*.pkl")} == {
        "random_states_0.pkl", "random_states_1.pkl"}


@pytest.mark.slow
def test_two_processes_resume_bit_exactly_where_they_stopped(tmp_path):
    """Two processes stopped at step 10 and resumed to 20 end with the weights of 20 steps straight through: each
    process's data stream goes on from its own share of what was consumed."""
    def run(out: str, steps: int) -> None:
        launch_two_processes("multigen/train.py", "--domain", "toy2d", f"train.output_dir={tmp_path / out}",
                             f"train.max_steps={steps}", "train.checkpoint_every=10", "train.sample_every=0",
                             "train.lr_decay=none", *TWO_PROCESS_TOY)

    run("straight", 20)
    run("resumed", 10)
    run("resumed", 20)
    straight, resumed = (load_file(tmp_path / out / "checkpoints/step_20/model.safetensors")
                         for out in ("straight", "resumed"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.slow
def test_two_processes_accumulating_two_half_batches_take_the_whole_batchs_steps(tmp_path):
    """Two processes, ``train.grad_accum=2`` at batch 16 against 1 at batch 32 (a loss without noise, so the split
    alone differs): the same weights after 5 steps, so every micro-batch's gradient is averaged over the processes."""
    for accum, batch in ((1, 32), (2, 16)):
        launch_two_processes("tests/two_process_toy2d.py", f"train.output_dir={tmp_path / str(accum)}",
                             "train.max_steps=5", "train.checkpoint_every=5", f"train.grad_accum={accum}",
                             f"train.batch_size={batch}", "train.sample_every=0", *TWO_PROCESS_TOY)
    whole, halves = (load_file(tmp_path / out / "checkpoints/step_5/model.safetensors") for out in ("1", "2"))
    for k in whole:
        torch.testing.assert_close(halves[k], whole[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("clip", [0.0, 1e-4])
def test_the_log_has_the_gradient_norm_before_clipping(toy_cfg, clip):
    cfg = toy_cfg(f"train.grad_clip={clip}", "train.max_steps=20", "train.checkpoint_every=0")
    norms = [r["grad_norm"] for r in read_log(train(Toy2D, cfg).parent) if "loss" in r]
    assert len(norms) == 2 and all(1e-2 < n < 1e3 for n in norms), norms  # measured, not the clipped 1e-4


def test_grad_clip_0_gives_the_optimiser_the_gradient_unclipped(toy_cfg, monkeypatch):
    """With ``train.grad_clip=0`` the optimiser steps on the whole gradient (norms far above 1), the norm logged."""

    class Steep(Toy2D):
        def training_loss(self, model, batch):
            return super().training_loss(model, batch) * 1e4

    seen, step = [], torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    cfg = toy_cfg("train.grad_clip=0", "train.max_steps=10", "train.checkpoint_every=0", "train.optimizer=adamw")
    logged = [r["grad_norm"] for r in read_log(train(Steep, cfg).parent) if "loss" in r]
    assert len(seen) == 10 and min(seen) > 10, seen
    assert logged[-1] == pytest.approx(seen[-1], rel=1e-4)


def test_lr_factor_warmup_then_constant_or_cosine():
    assert [lr_factor(s, 3, 10, "none") for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(9, 3, 10, "none") == 1.0
    cosine = [lr_factor(s, 2, 12, "cosine") for s in range(14)]
    assert cosine[:2] == [1 / 3, 2 / 3] and cosine[2] == 1.0  # warmup, then the top of the cosine
    assert cosine[7] == pytest.approx(0.5) and cosine[12] == pytest.approx(0.0) and cosine[13] == pytest.approx(0.0)
    assert all(a > b for a, b in zip(cosine[2:12], cosine[3:13]))  # strictly decreasing to 0 at max_steps
    assert [lr_factor(s, 2, 12, "cosine", decay_steps=10) for s in range(14)] == cosine  # the whole run: the same


def test_lr_factor_linear_decay_over_the_last_steps():
    tail = [lr_factor(s, 2, 12, "linear", decay_steps=4) for s in range(14)]
    assert tail[:2] == [1 / 3, 2 / 3] and tail[2:9] == [1.0] * 7  # warmup, then constant until step 8
    assert tail[8:] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])  # a straight line to 0 at max_steps
    assert lr_factor(5, 2, 12, "linear") == pytest.approx(0.7)  # decay_steps 0: the line starts after the warmup
    assert lr_factor(3, 2, 12, "cosine", decay_steps=50) == lr_factor(3, 2, 12, "cosine")  # never into the warmup


def test_ema_takes_the_first_weights_then_moves_one_minus_decay_of_the_way_and_copies_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.9)
    no, yes = torch.tensor(False), torch.tensor(True)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].running_mean.fill_(5.0)
        ema.update(model, no)
        torch.testing.assert_close(ema.module[0].weight, torch.ones(2, 2))  # to rounding: w + 1 * (1 - w)
        assert int(ema.n_averaged) == 1
        assert torch.equal(ema.module[1].running_mean, torch.full((2,), 5.0))
        model[0].weight.fill_(3.0)
        ema.update(model, no)
        torch.testing.assert_close(ema.module[0].weight, torch.full((2, 2), 0.9 * 1.0 + 0.1 * 3.0))
        model[0].weight.fill_(100.0)
        model[1].running_mean.fill_(-1.0)
        ema.update(model, yes)  # a skipped step changes nothing
        torch.testing.assert_close(ema.module[0].weight, torch.full((2, 2), 1.2))
        assert torch.equal(ema.module[1].running_mean, torch.full((2,), 5.0)) and int(ema.n_averaged) == 2


def test_clipping_bounds_the_gradient_the_optimiser_sees(toy_cfg, monkeypatch):
    seen = []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    train(Toy2D, toy_cfg("train.grad_clip=1e-4", "train.max_steps=5", "train.checkpoint_every=0",
                         "train.optimizer=adamw"))
    assert len(seen) == 5 and max(seen) <= 1e-4 * (1 + 1e-5), seen


def test_two_accumulated_half_batches_are_one_whole_batch(toy_cfg):
    """``train.grad_accum=2`` at batch 32 takes the step batch 64 takes: the same logged loss and gradient norm
    (a loss with no random draws of its own, on the same stream of items)."""

    class Deterministic(Toy2D):
        def training_loss(self, model, batch):
            return (model(batch, torch.full((len(batch),), 0.5)) - batch).pow(2).mean()

    logs = []
    for accum, batch in ((1, 64), (2, 32)):
        cfg = toy_cfg(f"train.grad_accum={accum}", f"train.batch_size={batch}", "train.max_steps=1",
                      "train.log_every=1", "train.checkpoint_every=0", "train.ema_decay=0", out=f"accum{accum}")
        logs.append([r for r in read_log(train(Deterministic, cfg).parent) if "loss" in r][0])
    assert logs[0]["loss"] == pytest.approx(logs[1]["loss"], rel=1e-5)
    assert logs[0]["grad_norm"] == pytest.approx(logs[1]["grad_norm"], rel=1e-5)


def test_a_loaded_export_is_in_eval_mode(tmp_path):
    domain = Toy2D(load_config(Toy2DConfig))
    out = export_model(domain.build_model().train(), domain, tmp_path / "export")
    assert not load_pretrained(out).model.training


def test_the_log_is_strict_json_with_null_for_a_value_that_is_not_finite(tmp_path):
    """A standard error of one held-out sequence is NaN: the log writes null, which every JSON reader takes (a bare
    NaN is no JSON)."""
    from multigen.trainer import _append_jsonl

    _append_jsonl(tmp_path / "log.jsonl", {"step": 3, "eval/bits": 1.5, "eval/stderr": float("nan"),
                                           "eval/far": float("inf")})
    line = (tmp_path / "log.jsonl").read_text()
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in {line}")) == read_log(tmp_path)[0]
    assert read_log(tmp_path) == [{"step": 3, "eval/bits": 1.5, "eval/stderr": None, "eval/far": None}]
