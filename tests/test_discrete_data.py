"""Discrete data (tokenizer, token files, built-in text and digit grids) and denoiser shapes."""

import numpy as np
import pytest
import torch

from discrete.data import CharTokenizer, DigitGrids, TokenError, TokenWindows, builtin_text, read_text, read_tokens
from discrete.model import GridUNet, SequenceTransformer


def test_tokenizer_round_trip_and_unknown_characters():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == " dehlorw"
    ids = tok.encode("hello")
    assert ids.dtype == torch.long and tok.decode(ids) == "hello"
    assert tok.decode(torch.tensor([0, len(tok)])) == " _"  # the absorbing mask id prints as the mask character
    with pytest.raises(TokenError, match=r"\['!', 'x'\]"):
        tok.encode("hex!", source="prompt")


def test_builtin_text_is_english_and_splits_disjoint():
    train, val = builtin_text("train"), builtin_text("val")
    assert len(train) > 300_000 and len(val) > 30_000
    assert " the " in train and " the " in val
    assert val[:2000] not in train


def test_read_tokens_checks_range_and_names_position(tmp_path):
    path = tmp_path / "tokens.npy"
    np.save(path, np.array([0, 3, 9, 2]))
    assert read_tokens(path, 10).tolist() == [0, 3, 9, 2]
    with pytest.raises(TokenError, match=r"token 9 at position 2 .*tokens\.npy|tokens\.npy.*token 9 at position 2"):
        read_tokens(path, 9)
    np.save(path, np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(TokenError, match="1-D integer"):
        read_tokens(path, 9)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        read_tokens(tmp_path / "missing.npy", 9)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(TokenError, match="empty"):
        read_text(tmp_path / "empty.txt")
    (tmp_path / "notepad.txt").write_bytes("\ufeffCafé\r\nnaïve\r\n".encode("utf-8"))  # a BOM and CRLF
    assert read_text(tmp_path / "notepad.txt") == "Café\nnaïve\n"
    (tmp_path / "bom_only.txt").write_bytes(b"\xef\xbb\xbf")
    with pytest.raises(TokenError, match="empty"):
        read_text(tmp_path / "bom_only.txt")


def test_token_windows():
    tokens = torch.arange(100)
    held_out = TokenWindows(tokens, 32)
    assert len(held_out) == 3 and held_out[1].tolist() == list(range(32, 64))
    rand = TokenWindows(tokens, 32, num=50, seed=1)
    assert len(rand) == 50 and all(len(w) == 32 for w in rand)
    with pytest.raises(TokenError, match="the stream holds 10 tokens, fewer than one window of 32"):
        TokenWindows(tokens[:10], 32)
    assert len(TokenWindows(tokens[:32], 32)) == 1  # exactly one window


def test_digit_grids_quantised_and_split():
    train, val = DigitGrids(levels=4), DigitGrids(levels=4, split="val")
    assert len(train) + len(val) == 1797 and len(val) == 359
    assert train[0].shape == (8, 8) and int(train.grids.max()) == 3 and int(train.grids.min()) == 0


def test_denoiser_shapes():
    x = torch.randint(0, 28, (3, 20))
    t = torch.tensor([1, 500, 1000])
    for mlp in ("gelu", "swiglu"):
        assert SequenceTransformer(28, 64, 1000, dim=32, depth=2, mlp=mlp)(x, t).shape == (3, 20, 28)
    with pytest.raises(ValueError, match="maximum length"):
        SequenceTransformer(28, 16, 1000, dim=32, depth=1)(x, t)
    grid = torch.randint(0, 9, (3, 8, 8))
    assert GridUNet(9, 1000, base=16, blocks=1)(grid, t).shape == (3, 8, 8, 9)


@pytest.mark.parametrize("conditioned", [True, False])
def test_a_denoiser_without_time_conditioning_ignores_t(conditioned):
    torch.manual_seed(0)
    tokens, grid = torch.randint(0, 28, (2, 20)), torch.randint(0, 9, (2, 8, 8))
    models = (SequenceTransformer(28, 32, 1000, dim=32, depth=2, time_conditioning=conditioned),
              GridUNet(9, 1000, base=16, blocks=1, time_conditioning=conditioned))
    for model, x in zip(models, (tokens, grid)):
        assert (model.time is None) != conditioned
        with torch.no_grad():
            for p in model.parameters():  # the time layers start at zero, which would hide t
                p.normal_(std=0.1)
        early, late = model(x, torch.tensor([1, 1])), model(x, torch.tensor([500, 1000]))
        assert torch.isfinite(early).all() and torch.equal(early, late) != conditioned


@pytest.mark.parametrize("positions", [{}, {"rotary": True}, {"rotary": True, "relative_bias": False}])
@pytest.mark.parametrize("causal", [True, False])
def test_causal_transformer_sees_only_earlier_tokens(causal, positions):
    """The autoregressive baseline's mask: changing token 12 leaves positions 0..11 exactly as they were
    (and changes them when the model is bidirectional), whatever its positions (learned absolute and a relative
    bias, rotary and the bias, or rotary alone: then the mask is the only bias)."""
    torch.manual_seed(0)
    model = SequenceTransformer(28, 32, 1000, dim=32, depth=2, causal=causal, **positions)
    x = torch.randint(0, 28, (2, 20))
    y = x.clone()
    y[:, 12] = (x[:, 12] + 1) % 28
    t = torch.zeros(2)
    before, after = model(x, t), model(y, t)
    assert torch.equal(before[:, :12], after[:, :12]) == causal
    assert not torch.equal(before[:, 12:], after[:, 12:])


def test_autoregressive_baseline_is_a_distribution_over_sequences():
    """The twin's exact likelihood sums to 1 over every sequence of the data's tokens: the start token, an input
    only, takes no probability away from them (a baseline scored on a leaky softmax would be penalised)."""
    import itertools
    import math

    from .conftest import load_benchmark

    bench = load_benchmark("discrete")
    torch.manual_seed(0)
    vocab, length = 3, 4
    model = SequenceTransformer(vocab + 1, length, 1000, dim=32, depth=1, causal=True)
    for p in model.parameters():  # a model far from uniform, with weight on the start token's logit
        p.data.normal_(std=0.3)
    x = torch.tensor(list(itertools.product(range(vocab), repeat=length)))
    bits = bench.autoregressive_bits(model, x, vocab).double()
    assert math.isclose(torch.exp2(-bits * length).sum().item(), 1.0, rel_tol=1e-4)


def test_rotary_transformer_tells_positions_apart_without_absolute_embeddings():
    """With rotary positions and no relative bias there are no position parameters, yet the same token at two
    positions of one sequence gets different logits (with no position signal at all a bidirectional transformer is
    permutation-equivariant: it would give them the same)."""
    torch.manual_seed(0)
    model = SequenceTransformer(28, 32, 1000, dim=32, depth=2, rotary=True, relative_bias=False)
    assert model.positions is None and model.relative_bias is None
    x = torch.randint(0, 28, (1, 20))
    x[0, 3] = x[0, 15] = 5
    logits = model(x, torch.tensor([400]))
    assert not torch.allclose(logits[0, 3], logits[0, 15])
    with pytest.raises(ValueError, match="maximum length 32"):
        model(torch.zeros(1, 33, dtype=torch.long), torch.tensor([1]))


def test_self_conditioned_denoisers_see_their_own_first_estimate():
    """``self_condition``: in evaluation every call is two passes, the second shown the first's probabilities; in
    training about half of the calls run that first pass (without gradient), the others one pass shown nothing."""
    torch.manual_seed(0)
    tokens, grid, t = torch.randint(0, 28, (2, 20)), torch.randint(0, 9, (2, 8, 8)), torch.tensor([3, 700])
    models = (SequenceTransformer(28, 32, 1000, dim=32, depth=2, self_condition=True),
              GridUNet(9, 1000, base=16, blocks=1, self_condition=True))
    for model, x in zip(models, (tokens, grid)):
        with torch.no_grad():
            for p in model.parameters():  # zero-initialised layers (the estimate's projection) would hide it
                p.normal_(std=0.1)
        model.eval()
        extra = (model._positions(x.shape[1], x.device),) if isinstance(model, SequenceTransformer) else ()
        alone = model._logits(x, t, None, None, *extra)
        assert torch.equal(model(x, t), model._logits(x, t, None, alone.softmax(-1), *extra))
        assert not torch.allclose(model(x, t), alone)
        shown, passes = [], []
        inner = model._logits
        model._logits = lambda x_, t_, k, previous, *rest: shown.append(previous) or inner(x_, t_, k, previous, *rest)
        model.train()
        for _ in range(40):
            shown.clear()
            out = model(x, t)
            passes.append(len(shown))
            assert out.requires_grad and (shown[-1] is None) == (len(shown) == 1)
            if len(shown) == 2:
                assert shown[0] is None and not shown[1].requires_grad
        assert set(passes) == {1, 2} and 10 <= passes.count(2) <= 30


@pytest.mark.parametrize("first_pass", [True, False])
def test_every_parameter_of_a_self_conditioned_denoiser_takes_part_in_every_training_step(first_pass, monkeypatch):
    """DDP reduces the gradients of every parameter on every step: a step shown no estimate must still use the
    estimate's projection (of zeros), or two processes stall (one that drew the first pass, one that did not)."""
    monkeypatch.setattr("discrete.model.host_coin", lambda p: first_pass)
    tokens, grid, t = torch.randint(0, 28, (2, 20)), torch.randint(0, 9, (2, 8, 8)), torch.tensor([3, 700])
    for model, x in ((SequenceTransformer(28, 32, 1000, dim=32, depth=2, self_condition=True), tokens),
                     (GridUNet(9, 1000, base=16, blocks=1, self_condition=True), grid)):
        model.train()(x, t).square().mean().backward()
        assert [n for n, p in model.named_parameters() if p.grad is None] == [], type(model).__name__
        h = torch.randn(2, 20, model.self_condition.project.out_features)
        assert torch.equal(model.self_condition(h, None), h)  # an estimate of zeros changes nothing


def test_the_autoregressive_twin_never_samples_its_start_token_and_checks_its_count():
    from multigen.config import load_config

    from .conftest import load_benchmark

    bench = load_benchmark("discrete")
    domain = bench.AutoregressiveText(load_config(bench.AutoregressiveText.config_class, overrides=[
        "data.length=8", "model.dim=16", "model.depth=1", "model.heads=1"]))
    domain.fit()
    model = domain.build_model()
    with torch.no_grad():
        model.head.bias[domain.data_vocab] = 50.0  # all the weight on the start token's logit
    x = domain.sample(model, 16, generator=torch.Generator().manual_seed(0))
    assert x.shape == (16, 8) and (x < domain.data_vocab).all()
    with pytest.raises(ValueError, match="number of samples must be a positive integer, got 0"):
        domain.sample(model, 0)


def test_the_unigram_baseline_is_the_cross_entropy_under_add_one_training_frequencies():
    from discrete.domain import Discrete, DiscreteConfig
    from multigen.config import load_config

    domain = Discrete(load_config(DiscreteConfig, overrides=["data.length=16"]))
    domain.fit()
    train, val = domain.build_dataset("train").tokens, domain.build_dataset("val").tokens
    counts = torch.bincount(train, minlength=domain.data_vocab).double() + 1
    data = val[: 4 * 16].reshape(4, 16)
    expected = -(counts[data.flatten()] / counts.sum()).log2().mean().item()
    assert abs(domain.unigram_bits(data) - expected) < 1e-9 and 3.0 < expected < 6.0


def test_the_time_embedding_sees_t_over_T():
    from discrete.model import embed_time
    from multigen.nn import TimestepEmbedding

    emb, t = TimestepEmbedding(16), torch.tensor([1, 128, 256])
    torch.testing.assert_close(embed_time(emb, t, 256, 16), emb(t.float() / 256))
    assert torch.equal(embed_time(None, t, 256, 16), torch.zeros(3, 16))


def test_windows_cover_an_exact_multiple_and_digit_levels_round_to_the_nearest():
    from sklearn.datasets import load_digits

    assert TokenWindows(torch.arange(8), 4).starts.tolist() == [0, 4]
    images = torch.from_numpy(load_digits().images)[torch.arange(1797) % 5 != 4]  # the training digits
    grids = DigitGrids(levels=8).grids
    assert ((grids.double() * 16 / 7 - images).abs() <= 16 / 7 / 2 + 1e-9).all()  # within half a level


def test_the_offset_bias_reads_key_minus_query_and_the_grid_unet_keeps_its_skip():
    from .test_nn import capture

    model = SequenceTransformer(vocab=5, max_length=6, timesteps=10, dim=16, depth=1, heads=2)
    with torch.no_grad():
        model.relative_bias.copy_(torch.arange(11.0).expand(1, 2, 11))  # offsets -5..5
    bias = model._positions(4, torch.device("cpu"))[1][0]
    assert bias[0, 0, 1] == 6.0 and bias[0, 1, 0] == 4.0  # the key one after the query: offset +1
    grid = GridUNet(vocab=5, timesteps=10, base=8, blocks=1).eval()
    encoded, decoder_input = capture(grid.down[-1]), capture(grid.out_blocks[0], inputs=True)
    with torch.no_grad():
        grid(torch.randint(0, 5, (1, 4, 4)), torch.tensor([3]))
    assert torch.equal(decoder_input["x"][:, :8], encoded["x"])
