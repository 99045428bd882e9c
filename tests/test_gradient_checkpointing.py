"""model.gradient_checkpointing (the networks of every domain): the same outputs and gradients, dropout's draws
included, while the autograd graph keeps a small part of the bytes; no checkpointing without gradients."""

from unittest.mock import patch

import pytest
import torch

from discrete.domain import Discrete, DiscreteConfig
from multigen.config import load_config
from pointcloud.domain import PointCloud, PointCloudConfig
from video.domain import Video, VideoConfig

NETWORKS = {  # domain, overrides, inputs of its network
    "video U-Net": (Video, VideoConfig, ["data.size=16", "data.frames=5", "model.base_channels=16",
                                         "model.channel_mults=[1,2]", "model.attn_levels=[1]", "model.head_channels=8",
                                         "model.dropout=0.2", "model.rotary=true"],
                    lambda: (torch.randn(2, 5, 1, 16, 16), torch.rand(2, 5), None,
                             torch.tensor([[0, 1, 2, 3, 4], [0, 3, 6, 20, 21]]), torch.tensor([False, True]))),
    "text transformer": (Discrete, DiscreteConfig, ["data.length=12", "process.timesteps=8", "model.dim=16",
                                                    "model.depth=3", "model.dropout=0.2"],
                         lambda: (torch.randint(0, 12, (2, 12)), torch.tensor([3, 8]))),  # built-in text
    "label-map U-Net": (Discrete, DiscreteConfig, ["data.source=labels", "data.size=8", "data.num_train=16",
                                                   "process.timesteps=8", "model.dim=8", "model.depth=2"],
                        lambda: (torch.randint(0, 7, (2, 8, 8)), torch.tensor([3, 8]))),
    "point-voxel U-Net": (PointCloud, PointCloudConfig, ["data.points=64", "data.num_train=16", "model.width=0.25"],
                          lambda: (torch.randn(2, 64, 3), torch.rand(2), torch.zeros(2, 1, 64), None)),
}


def _network(name: str, checkpointed: bool) -> torch.nn.Module:
    domain_cls, config_cls, overrides, _ = NETWORKS[name]
    switch = f"model.gradient_checkpointing={str(checkpointed).lower()}"
    domain = domain_cls(load_config(config_cls, overrides=[*overrides, switch]))
    domain.fit()
    torch.manual_seed(0)
    net = domain.build_model()
    for p in net.parameters():  # the output and gating layers start at zero: give every path signal
        if p.abs().sum() == 0 and p.ndim > 1:
            torch.nn.init.normal_(p, std=0.05)
    return net.train()


@pytest.mark.parametrize("name", list(NETWORKS))
def test_checkpointing_keeps_outputs_and_gradients_and_drops_the_blocks_activations(name):
    plain, lean = _network(name, False), _network(name, True)
    assert list(lean.state_dict()) == list(plain.state_dict())
    torch.manual_seed(1)
    inputs = NETWORKS[name][3]()

    def run(net):
        saved = []
        torch.manual_seed(2)  # the same dropout draws
        with torch.autograd.graph.saved_tensors_hooks(lambda s: saved.append(s.nbytes) or s, lambda s: s):
            out = net(*inputs)
        out.float().square().sum().backward()
        return out, [p.grad for p in net.parameters()], sum(saved)

    (out, grads, kept), (lean_out, lean_grads, lean_kept) = run(plain), run(lean)
    torch.testing.assert_close(lean_out, out, rtol=0, atol=0)
    assert sum(g.abs().sum() > 0 for g in grads if g is not None) > len(grads) // 2  # the gradients carry signal
    for g, lean_g in zip(grads, lean_grads):
        assert (g is None) == (lean_g is None)
        if g is not None:
            torch.testing.assert_close(lean_g, g, rtol=1e-5, atol=1e-7)
    # what the checkpointed blocks saved is dropped (their inputs are held by the checkpoints themselves)
    assert lean_kept < 0.5 * kept, (lean_kept, kept)
    unwanted = AssertionError("checkpointed without gradients")
    with torch.no_grad(), patch("multigen.nn.blocks.checkpoint", side_effect=unwanted):
        torch.manual_seed(2)
        torch.testing.assert_close(lean(*inputs), out.detach(), rtol=0, atol=0)
