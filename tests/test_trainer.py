"""The Accelerate trainer on the toy2d domain: learning, exact resume, NaN stop, export, 2 processes."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from multigen import load_pretrained
from multigen.toy2d import Toy2D
from multigen.trainer import NonFiniteLossError, latest_checkpoint, lr_factor, read_log, train

from .conftest import REPO


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


def test_resume_after_interruption_is_bit_exact(toy_cfg):
    steps = ["train.max_steps=30", "train.checkpoint_every=10"]
    straight = train(Toy2D, toy_cfg(*steps, out="straight"))

    cfg = toy_cfg(*steps, out="resumed")
    with pytest.raises(Interrupted):
        train(crashing_domain(25), cfg)  # dies during step 26, after checkpoint 20
    ckpt = latest_checkpoint(REPO.joinpath(cfg.train.output_dir) / "checkpoints")
    assert ckpt is not None and ckpt.name == "step_20"
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    resumed = train(Toy2D, cfg)

    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"EMA weight {k} differs after resume"
    ma = load_file(straight.parent / "checkpoints/step_30/model.safetensors")
    mb = load_file(resumed.parent / "checkpoints/step_30/model.safetensors")
    for k in ma:
        assert torch.equal(ma[k], mb[k]), f"weight {k} differs after resume"


def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(toy_cfg):
    cfg = toy_cfg("train.max_steps=30", "train.checkpoint_every=10")
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss .* step 16.*step_10"):
        train(crashing_domain(15, nan=True), cfg)
    ckpt_dir = REPO.joinpath(cfg.train.output_dir) / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step_10"]
    weights = load_file(ckpt_dir / "step_10" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


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


@pytest.mark.slow
def test_two_process_cpu_launch(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(REPO / "multigen/train.py"), "--domain", "toy2d", f"train.output_dir={out}", "train.max_steps=20",
           "train.checkpoint_every=10", "train.tensorboard=false", "sample.num=64", "data.num_val=200",
           "model.hidden=32"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es)" in r.stdout + r.stderr
    assert (out / "export" / "model.safetensors").is_file()
    assert {p.name for p in (out / "checkpoints" / "step_20").glob("random_states_*.pkl")} == {
        "random_states_0.pkl", "random_states_1.pkl"}


def test_lr_factor_warmup_then_constant_or_cosine():
    assert [lr_factor(s, 3, 10, "none") for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(9, 3, 10, "none") == 1.0
    cosine = [lr_factor(s, 2, 12, "cosine") for s in range(14)]
    assert cosine[:2] == [1 / 3, 2 / 3] and cosine[2] == 1.0  # warmup, then the top of the cosine
    assert cosine[7] == pytest.approx(0.5) and cosine[12] == pytest.approx(0.0) and cosine[13] == pytest.approx(0.0)
    assert all(a > b for a, b in zip(cosine[2:12], cosine[3:13]))  # strictly decreasing to 0 at max_steps
