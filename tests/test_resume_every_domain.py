"""Exact resume for every domain's training, not only toy2d's: a run killed mid-way and resumed from its last
checkpoint ends with the same weights, bit for bit, as one that ran straight through. Each domain draws its own
randomness while training (video: the task and its masks, per-frame levels; point clouds: partial views, clouds
drawn afresh from the pool; text: windows and mask rates); a draw from a stream the checkpoint does not restore
would make the resumed run another run, silently."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from multigen.config import load_config
from multigen.domain import Domain, get_domain
from multigen.trainer import train

from .conftest import REPO, reset_accelerate

# (domain, config, overrides): a few steps with each domain's training randomness switched on, and a cheap final
# evaluation
CASES = {
    "video": ("video", "tiny", ["task.per_frame=0.5", "task.context_noise=0.3", "eval.num_clips=2",
                                "sample.steps=3", "train.batch_size=2"]),
    "natural-video": ("video", "tiny", ["data.source=natural", "model.reference=motion", "eval.num_clips=2",
                                        "sample.steps=3", "train.batch_size=2"]),
    "point-clouds": ("pointcloud", "tiny", ["data.pool=512", "task.completion=0.5", "eval.num_shapes=2",
                                            "sample.steps=3", "sample.resample=1", "task.completion_start=1",
                                            "train.optimizer=muon"]),
    "text": ("discrete", "tiny", ["eval.num_sequences=2", "sample.steps=3", "train.batch_size=8",
                                  "train.optimizer=muon"]),
    "digits": ("discrete", "digits", ["eval.num_sequences=2", "sample.num=2", "sample.steps=3",
                                      "train.batch_size=8"]),
}


class Interrupted(Exception):
    pass


def killed_after(domain_cls: type[Domain], calls: int) -> type[Domain]:
    """``domain_cls`` whose training loss raises from call ``calls + 1`` on: a run killed mid-way."""

    class Killed(domain_cls):  # type: ignore[misc, valid-type]
        seen = 0

        def training_loss(self, model, batch):
            Killed.seen += 1
            if Killed.seen > calls:
                raise Interrupted
            return super().training_loss(model, batch)

    return Killed


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(case, tmp_path):
    name, config_name, overrides = CASES[case]
    domain_cls = get_domain(name)

    def config(out: str):
        return load_config(domain_cls.config_class, REPO / "configs" / name / f"{config_name}.yaml", [
            f"train.output_dir={tmp_path / out}", "train.max_steps=6", "train.checkpoint_every=3",
            "train.log_every=3", "train.sample_every=0", "train.eval_every=0", "train.tensorboard=false",
            "train.cpu_threads=1", *overrides])

    straight = train(domain_cls, config("straight"))
    reset_accelerate()
    with pytest.raises(Interrupted):
        train(killed_after(domain_cls, 4), config("resumed"))  # dies in step 5, after the checkpoint of step 3
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["step_3"]
    reset_accelerate()
    resumed = train(domain_cls, config("resumed"))

    for weights in ("checkpoints/step_6/model.safetensors", "export/model.safetensors"):  # trained, and EMA
        a, b = load_file(straight.parent / weights), load_file(resumed.parent / weights)
        assert a.keys() == b.keys()
        changed = [k for k in a if not torch.equal(a[k], b[k])]
        assert not changed, f"{case}: {weights} differs after the resume in {changed[:3]}"
