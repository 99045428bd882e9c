"""Network parts: attention dispatch against naive softmax attention, block shapes, embeddings."""

import math

import pytest
import torch

from multigen.nn import (Attention, FeedForward, GatedFeedForward, ResBlock, TimestepEmbedding, attention,
                         group_norm, rotary_tables, rotate, sinusoidal_embedding)


def naive_attention(q, k, v, bias=None):
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    return torch.softmax(logits, dim=-1) @ v


def test_attention_equals_naive_softmax_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    torch.testing.assert_close(attention(q, k, v), naive_attention(q, k, v), rtol=1e-5, atol=1e-6)
    bias = torch.randn(1, 3, 5, 5, generator=g)
    bias[..., 0, 1] = -math.inf  # a masked key
    torch.testing.assert_close(attention(q, k, v, bias), naive_attention(q, k, v, bias), rtol=1e-5, atol=1e-6)


def test_rotary_scores_depend_on_the_offset_alone():
    """Rotary positions: ``<rotate(q)_i, rotate(k)_j>`` is the same for every shift of both positions, each vector
    keeps its norm, position 0 is not turned, and a pair turns by the angle ``i * base ** (-2 j / D)``."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 16, 8, generator=g, dtype=torch.float64).unbind(0)  # (heads, L, D)
    tables = rotary_tables(torch.arange(16 + 5), 8)
    qr = rotate(q, tuple(t[:16] for t in tables))
    scores = []
    for shift in (0, 5):
        shifted = tuple(t[shift:shift + 16] for t in tables)
        scores.append(rotate(q, shifted) @ rotate(k, shifted).transpose(-1, -2))
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-5, atol=1e-6)  # float32 tables
    assert not torch.allclose(scores[0], q @ k.transpose(-1, -2))  # it does depend on the offset
    torch.testing.assert_close(qr.norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(qr[:, 0], q[:, 0])
    pair = torch.tensor([1.0, 0.0, 0.0, 0.0])  # channel pair 1 of D = 4 turns by i / 100 at position i
    turned = rotate(torch.tensor([[0.0, 0.0, 1.0, 0.0]]).expand(4, 4), rotary_tables(torch.arange(4), 4))
    torch.testing.assert_close(turned[3], torch.tensor([0.0, 0.0, math.cos(0.03), math.sin(0.03)]))
    torch.testing.assert_close(rotate(pair[None], rotary_tables(torch.zeros(1), 4))[0], pair)
    with pytest.raises(ValueError, match="even head size"):
        rotary_tables(torch.arange(4), 5)


def test_folded_bias_equals_the_biased_attention_and_is_one_bias_free_4d_call(monkeypatch):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7, 3, 5, 12, generator=g) for _ in range(3))  # (b, positions, heads, L, D)
    bias = torch.randn(2, 1, 3, 5, 5, generator=g) * 3  # per clip and head, shared by the positions
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kw):
        calls.append((q.shape, attn_mask))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    folded = attention(q, k, v, bias, fold_bias=True)
    torch.testing.assert_close(folded, naive_attention(q, k, v, bias), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attention(q, k, v, bias), folded, rtol=1e-5, atol=1e-5)
    (shape, mask), unfolded = calls
    assert shape == (2 * 7, 3, 5, 24) and mask is None  # 12 channels + 5 for the bias, padded to a multiple of 8
    assert len(unfolded[0]) == 5 and unfolded[1] is not None  # the plain path: 5-D with a mask (SDPA's math kernel)


def test_attention_module_shapes_and_bias_effect():
    m = Attention(16, heads=4)
    x = torch.randn(2, 7, 16)
    assert m(x).shape == (2, 7, 16)
    bias = torch.full((7, 7), -math.inf).fill_diagonal_(0.0)  # every token attends only to itself
    out = m(x, bias)
    x2 = x.clone()
    x2[:, 3] += 1.0
    changed = (m(x2, bias) - out).abs().sum(-1) > 1e-6
    assert changed[:, 3].all() and not changed[:, [0, 1, 2, 4, 5, 6]].any()
    torch.testing.assert_close(m.merge(attention(*m.project(x))), m(x))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_resblock_shapes(dims):
    block = ResBlock(8, 16, emb_dim=12, dims=dims)
    x = torch.randn(2, 8, *([6] * dims))
    assert block(x, torch.randn(2, 12)).shape == (2, 16, *([6] * dims))


def test_embeddings():
    t = torch.tensor([0.0, 0.5, 1.0])
    e = sinusoidal_embedding(t, 9)
    assert e.shape == (3, 9) and torch.isfinite(e).all()
    assert not torch.allclose(e[0], e[1])
    assert TimestepEmbedding(32)(t).shape == (3, 32)
    assert FeedForward(10)(torch.randn(4, 10)).shape == (4, 10)


def test_gated_feed_forward_is_swiglu_at_the_size_of_the_gelu_mlp():
    def count(m):
        return sum(p.numel() for p in m.parameters())

    gated, x = GatedFeedForward(96), torch.randn(2, 5, 96)
    # weights 96 x 512 + 256 x 96 against 96 x 384 + 384 x 96 (equal); biases 512 + 96 against 384 + 96
    assert count(gated) == count(FeedForward(96)) + 512 - 384
    w, b = gated.up.weight, gated.up.bias
    a, g = x @ w[:256].T + b[:256], x @ w[256:].T + b[256:]
    expected = (a * torch.sigmoid(a) * g) @ gated.down.weight.T + gated.down.bias
    torch.testing.assert_close(gated(x), expected)
    assert GatedFeedForward(10)(torch.randn(4, 10)).shape == (4, 10)


def capture(module: torch.nn.Module, inputs: bool = False) -> dict:
    """What ``module`` receives (``inputs``) or returns on its next call, under ``"x"``."""
    box: dict = {}
    if inputs:
        module.register_forward_pre_hook(lambda m, a: box.__setitem__("x", a[0]))
    else:
        module.register_forward_hook(lambda m, a, out: box.__setitem__("x", out))
    return box


def test_group_norm_groups_and_the_sinusoidal_embedding_in_closed_form():
    assert [group_norm(c).num_groups for c in (64, 48)] == [32, 24] and group_norm(8, 8).num_groups == 8
    freqs = 10000.0 ** (-torch.arange(4) / 4)  # dim 8: 4 frequencies, t scaled by 1 000
    torch.testing.assert_close(sinusoidal_embedding(torch.tensor([0.3]), 8)[0],
                               torch.cat([torch.cos(300 * freqs), torch.sin(300 * freqs)]))


def test_a_resblock_without_modulation_adds_its_two_convolutions_to_the_input():
    """With the embedding's projection zero, scale and shift are 0: ``x + conv2(act(norm2(conv1(act(norm1 x)))))``
    (the scale enters as 1 + scale)."""
    torch.manual_seed(0)
    block = ResBlock(8, 8, emb_dim=4)
    torch.nn.init.normal_(block.conv2.weight)
    torch.nn.init.zeros_(block.emb.weight)
    torch.nn.init.zeros_(block.emb.bias)
    x = torch.randn(2, 8, 5, 5)
    expected = x + block.conv2(block.act(block.norm2(block.conv1(block.act(block.norm1(x))))))
    torch.testing.assert_close(block(x, torch.randn(2, 4)), expected)
