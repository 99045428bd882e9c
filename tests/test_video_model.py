"""Space-time U-Net and masked conditioning: shapes, what mixes frames, the relative encoding, the loss."""

import pytest
import torch

from video.conditioning import TaskMix, pack_condition, sample_masks
from video.model import SpaceTimeUNet


def tiny_unet(**kw):
    torch.manual_seed(0)
    m = SpaceTimeUNet(channels=1, base=16, mults=(1, 2), blocks=1, attn_levels=(1,), head_channels=8, **kw)
    # The output and attention projections start at zero; give them weights so every path carries signal.
    for p in m.parameters():
        if p.abs().sum() == 0 and p.ndim > 1:
            torch.nn.init.normal_(p, std=0.05)
    return m.eval()


def test_shapes():
    m = tiny_unet()
    x = torch.randn(2, 5, 1, 16, 16)
    assert m(x, torch.rand(2)).shape == x.shape
    cond = pack_condition(torch.randn_like(x), torch.tensor([[1, 0, 0, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.bool))
    assert cond.shape == (2, 5, 2, 16, 16)
    assert m(x, torch.rand(2), cond, torch.arange(5).expand(2, 5) * 3).shape == x.shape


def _changed_frames(m, j, **kw):
    x = torch.randn(1, 6, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.5])
    y = m(x, t, **kw)
    x2 = x.clone()
    x2[:, j] += 1.0
    return ((m(x2, t, **kw) - y).abs().flatten(2).amax(2) > 1e-6)[0]


def test_temporal_attention_mixes_frames_and_spatial_layers_do_not():
    j = 2
    with torch.no_grad():
        mixed = _changed_frames(tiny_unet(), j)
        per_frame = _changed_frames(tiny_unet(temporal_attention=False), j)
        independent = _changed_frames(tiny_unet(), j, independent_frames=torch.tensor([True]))
    assert mixed.all(), "temporal attention lets frame j influence every frame"
    assert per_frame.tolist() == [i == j for i in range(6)], "without it, only frame j changes"
    assert independent.tolist() == [i == j for i in range(6)], "image mode blocks temporal mixing"


def test_relative_frame_encoding_is_shift_invariant_but_sees_distances():
    m = tiny_unet()
    x, t = torch.randn(1, 4, 1, 16, 16), torch.tensor([0.3])
    idx = torch.tensor([[0, 1, 2, 3]])
    with torch.no_grad():
        base = m(x, t, frame_index=idx)
        shifted = m(x, t, frame_index=idx + 100)
        spread = m(x, t, frame_index=idx * 10)
    torch.testing.assert_close(base, shifted, rtol=1e-5, atol=1e-5)
    assert (base - spread).abs().max() > 1e-4


def test_task_masks_cover_every_task_and_keep_a_generated_frame():
    g = torch.Generator().manual_seed(0)
    masks = sample_masks(4000, 8, TaskMix(), g)
    assert (~masks).any(1).all()
    rows = {tuple(r.tolist()) for r in masks.int()}
    assert (0,) * 8 in rows  # unconditional
    assert (1, 1, 1, 0, 0, 0, 0, 0) in rows  # future
    assert (0, 0, 0, 0, 0, 1, 1, 1) in rows  # past
    assert (1, 0, 0, 0, 0, 0, 0, 1) in rows  # interpolation
    only_future = sample_masks(500, 8, TaskMix(0, 1, 0, 0, 0), g)
    k = only_future.sum(1)
    assert torch.equal(only_future, torch.arange(8).expand(500, 8) < k[:, None])
    with pytest.raises(ValueError):
        TaskMix(0, 0, 0, 0, 0).weights()
