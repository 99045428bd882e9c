"""Space-time U-Net and masked conditioning: shapes, what mixes frames, the relative encoding, the loss."""

import math

import pytest
import torch
from einops import rearrange

from multigen.nn import attention, rotary_tables
from video.conditioning import TaskMix, pack_condition, sample_masks
from video.model import SpaceTimeUNet, TemporalAttention, frame_distances


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


@pytest.mark.parametrize("rotary", [False, True])
def test_relative_frame_encoding_is_shift_invariant_but_sees_distances(rotary):
    """The frame bias, and with ``rotary`` the turned queries and keys too, see the frames' differences alone."""
    m = tiny_unet(rotary=rotary)
    x, t = torch.randn(1, 4, 1, 16, 16), torch.tensor([0.3])
    idx = torch.tensor([[0, 1, 2, 3]])
    with torch.no_grad():
        base = m(x, t, frame_index=idx)
        shifted = m(x, t, frame_index=idx + 100)
        spread = m(x, t, frame_index=idx * 10)
        plain = tiny_unet()(x, t, frame_index=idx)
    torch.testing.assert_close(base, shifted, rtol=1e-5, atol=1e-5)
    assert (base - spread).abs().max() > 1e-4
    assert ((base - plain).abs().max() > 1e-4) == rotary  # the same weights: the rotation alone changes them


def test_rotary_tables_are_built_once_per_call_for_every_head_size(monkeypatch):
    """Levels of different head sizes (16 and 32 here) each get their own tables, built once per network call and
    not once per temporal attention layer; frame shifts still leave the output unchanged."""
    import video.model as vm

    calls = []
    monkeypatch.setattr(vm, "rotary_tables", lambda p, d: calls.append(d) or rotary_tables(p, d))
    torch.manual_seed(0)
    m = SpaceTimeUNet(channels=1, base=16, mults=(1, 2), attn_levels=(1,), head_channels=24, rotary=True).eval()
    layers = [x for x in m.modules() if isinstance(x, TemporalAttention)]
    assert m.rotary_sizes == [16, 32] and len(layers) == 8
    for p in m.parameters():
        if p.abs().sum() == 0 and p.ndim > 1:
            torch.nn.init.normal_(p, std=0.05)
    x, t, idx = torch.randn(1, 4, 1, 8, 8), torch.tensor([0.3]), torch.tensor([[0, 1, 2, 3]])
    with torch.no_grad():
        out, shifted = m(x, t, frame_index=idx), m(x, t, frame_index=idx + 7)
    assert sorted(calls) == [16, 16, 32, 32]
    torch.testing.assert_close(out, shifted, rtol=1e-5, atol=1e-5)


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
    only_past = sample_masks(7000, 8, TaskMix(0, 0, 1, 0, 0), g)
    k = only_past.sum(1)
    assert torch.equal(only_past, torch.arange(8).expand(7000, 8) >= 8 - k[:, None])  # the last k frames
    assert (torch.bincount(k, minlength=8)[1:] - 1000).abs().max() < 150  # k uniform on 1..7 (sd ~ 29)
    interp = sample_masks(6000, 8, TaskMix(0, 0, 0, 1, 0), g)
    first, last = interp.int().argmin(1), 7 - interp.int().flip(1).argmin(1)  # first and last generated frame
    assert interp[:, 0].all() and interp[:, -1].all()  # both ends observed
    assert torch.equal(interp, (torch.arange(8) < first[:, None]) | (torch.arange(8) > last[:, None]))  # one gap
    gaps = torch.bincount(last - first + 1, minlength=7)[1:]
    assert (gaps - 1000).abs().max() < 150  # gap lengths 1..6 equally likely (binomial sd ~ 29)
    with pytest.raises(ValueError):
        TaskMix(0, 0, 0, 0, 0).weights()


@pytest.mark.parametrize("levers", [{"channels_last": True}, {"fold_frame_bias": True},
                                    {"channels_last": True, "fold_frame_bias": True}])
def test_speed_levers_keep_the_weights_and_the_outputs(levers, monkeypatch):
    """channels_last / fold_frame_bias: the same state dict and outputs (to rounding); with the fold every
    attention is a 4-D SDPA call without a mask, whose head size is a multiple of 8 (flash-eligible)."""
    base = tiny_unet()
    fast = SpaceTimeUNet(channels=1, base=16, mults=(1, 2), blocks=1, attn_levels=(1,), head_channels=8, **levers)
    fast.load_state_dict(base.state_dict())
    assert list(fast.state_dict()) == list(base.state_dict())
    x, t = torch.randn(2, 5, 1, 16, 16), torch.rand(2)
    fi, independent = torch.tensor([[0, 1, 2, 3, 4], [0, 3, 6, 20, 21]]), torch.tensor([False, True])
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kw):
        calls.append((q.ndim, q.shape[-1], q.stride(-1), attn_mask is None))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    with torch.no_grad():
        ref = base(x, t, frame_index=fi, independent_frames=independent)
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
        out = fast(x, t, frame_index=fi, independent_frames=independent)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    if levers.get("fold_frame_bias"):
        assert calls and all(c == (4, c[1], 1, True) and c[1] % 8 == 0 for c in calls), calls


def test_independent_frames_attend_only_to_themselves_as_with_a_mask():
    """Image mode takes each frame's own value instead of masking the other frames with -inf (same result,
    and SDPA keeps its fused kernels)."""
    torch.manual_seed(0)
    layer = TemporalAttention(16, 2)
    torch.nn.init.normal_(layer.attn.out.weight, std=0.1)
    x, fi = torch.randn(2 * 4, 16, 3, 3), torch.tensor([[0, 1, 2, 3], [0, 5, 6, 9]])
    independent = torch.tensor([True, False])
    distances = frame_distances(fi)
    with torch.no_grad():
        out = layer(x, distances, None, independent)
        q, k, v = layer.attn.project(rearrange(layer.norm(x), "(b t) c h w -> b (h w) t c", b=2))
        blocked = independent.view(2, 1, 1, 1, 1) & ~torch.eye(4, dtype=torch.bool)
        bias = layer.bias(distances)[:, None].masked_fill(blocked, -math.inf)
        ref = x + rearrange(layer.attn.merge(attention(q, k, v, bias)), "b (h w) t c -> (b t) c h w", h=3)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_a_time_per_frame_conditions_each_frame_on_its_own_level():
    """``t`` ``(B, T)``: equal levels give the outputs of one level per clip; changing one frame's level changes
    that frame's output (and, through temporal attention, others), not the clip's level."""
    m = tiny_unet()
    x = torch.randn(2, 5, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.3, 0.8])
    equal = m(x, t[:, None].repeat(1, 5))
    assert torch.allclose(equal, m(x, t), atol=1e-5)
    per_frame = t[:, None].repeat(1, 5)
    per_frame[0, 2] = 0.0
    changed = (m(x, per_frame) - equal).abs().flatten(2).amax(2) > 1e-6
    assert changed[0, 2] and not changed[1].any()


def test_frame_distances_are_signed_the_decoder_sees_the_encoder_and_channels_last_reaches_the_convolutions():
    from .test_nn import capture

    d = frame_distances(torch.tensor([[0, 2, 5]]))
    assert torch.equal(d, -d.transpose(1, 2)) and d[0, 0, 1, 0] > 0  # a later frame is not an earlier one
    net = SpaceTimeUNet(channels=1, base=8, mults=(1, 2), attn_levels=(), head_channels=8).eval()
    encoded, decoder_input = capture(net.down[0]), capture(net.up[-1].res[0], inputs=True)
    with torch.no_grad():
        net(torch.randn(1, 3, 1, 8, 8), torch.rand(1))
    assert torch.equal(decoder_input["x"][:, -8:], encoded["x"])  # the skip connection
    fast = SpaceTimeUNet(channels=1, base=8, mults=(1,), attn_levels=(), head_channels=8, channels_last=True).eval()
    first = capture(fast.inp, inputs=True)
    with torch.no_grad():
        fast(torch.randn(1, 2, 1, 8, 8), torch.rand(1))
    assert first["x"].is_contiguous(memory_format=torch.channels_last)
