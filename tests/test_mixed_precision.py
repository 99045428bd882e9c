"""bf16 mixed precision, as GPU runs use it (`train.mixed_precision=bf16`), checked on the CPU: every domain
trains through the Accelerate trainer with its layers really computing in bf16, and samples."""

import pytest
import torch
from torch import nn

from multigen.config import load_config
from multigen.domain import get_domain
from multigen.trainer import read_log, train

from .conftest import REPO

SMALL_EVAL = {
    "pointcloud": ["eval.num_shapes=4", "sample.steps=4"],
    "video": ["eval.num_clips=2", "eval.samples_per_clip=1", "sample.steps=4"],
    "discrete": ["eval.num_sequences=4"],
    "toy2d": ["sample.steps=4"],
}


@pytest.mark.parametrize("name", sorted(SMALL_EVAL))
def test_trains_and_samples_in_bf16(name, tmp_path):
    base = get_domain(name)
    seen: set[torch.dtype] = set()
    onednn: set[bool] = set()

    class Recording(base):  # type: ignore[valid-type, misc]
        def build_model(self) -> nn.Module:
            model = super().build_model()
            for m in model.modules():
                if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                    m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
            return model

        def training_loss(self, model, batch):
            onednn.add(torch.backends.mkldnn.enabled)
            return super().training_loss(model, batch)

    tiny = REPO / "configs" / name / "tiny.yaml"
    cfg = load_config(base.config_class, tiny, [
        f"train.output_dir={tmp_path}", "train.max_steps=2", "train.mixed_precision=bf16", "train.sample_every=2",
        "train.checkpoint_every=0", "train.log_every=1", "train.tensorboard=false", *SMALL_EVAL[name],
    ])
    export = train(Recording, cfg)
    assert torch.bfloat16 in seen, "autocast did not reach the network"
    # oneDNN off for networks with convolutions (its bf16 convolution gradients on CPUs), on for the others
    assert onednn == {name in ("discrete", "toy2d")} and torch.backends.mkldnn.enabled
    losses = [r["loss"] for r in read_log(tmp_path) if "loss" in r]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert (export / "model.safetensors").is_file() and list((tmp_path / "samples").iterdir())
