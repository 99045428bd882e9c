"""Token files and windows, and multigen-discrete at its limits (each test was written against a one-line change the
rest of the suite let through)."""

import numpy as np
import pytest
import torch

from discrete.cli import main as discrete_cli
from discrete.data import CharTokenizer, TokenError, TokenWindows, builtin_text, read_tokens
from discrete.domain import Discrete, DiscreteConfig
from multigen.config import load_config
from multigen.export import export_model


def test_a_stream_of_exactly_one_window_gives_it():
    tokens = torch.arange(32)
    assert [w.tolist() for w in TokenWindows(tokens, 32)] == [list(range(32))]
    assert all(w.tolist() == list(range(32)) for w in TokenWindows(tokens, 32, num=4, seed=0))


def test_random_windows_can_start_at_the_last_offset():
    """Offsets are drawn from every start that fits, the last one (the stream's final window) included."""
    windows = TokenWindows(torch.arange(10), 8, num=200, seed=0)
    assert sorted({int(s) for s in windows.starts}) == [0, 1, 2]


def test_an_empty_token_file_is_refused(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros(0, dtype=np.int64))
    with pytest.raises(TokenError, match="non-empty 1-D integer array"):
        read_tokens(tmp_path / "empty.npy", 10)


def test_a_vocabulary_with_repeated_characters_is_refused():
    with pytest.raises(ValueError, match="repeated characters"):
        CharTokenizer("abca")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    domain = Discrete(load_config(DiscreteConfig, None, ["process.timesteps=8", "model.dim=32", "model.depth=1",
                                                         "data.length=32"]))
    domain.fit()
    torch.manual_seed(0)
    return str(export_model(domain.build_model(), domain, tmp_path_factory.mktemp("discrete") / "export"))


def test_a_prompt_as_long_as_the_samples_is_kept_whole(export, capsys):
    assert discrete_cli(["sample", "--checkpoint", export, "--num", "1", "--steps", "2", "--length", "8",
                         "--prompt", "The stat"]) == 0
    assert "--- sample 0 ---\nThe stat\n" in capsys.readouterr().out


def test_length_may_be_the_models_maximum(export, capsys):
    assert discrete_cli(["sample", "--checkpoint", export, "--num", "1", "--steps", "2", "--length", "32"]) == 0
    sample = capsys.readouterr().out.split("--- sample 0 ---\n")[1].rstrip("\n")
    assert len(sample) == 32
    assert discrete_cli(["sample", "--checkpoint", export, "--length", "33"]) == 2
    assert "--length 33 exceeds the model's maximum sequence length 32" in capsys.readouterr().err


def test_eval_scores_only_max_sequences(export, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(builtin_text("train")[:32 * 5])
    assert discrete_cli(["eval", "--checkpoint", export, "--data", str(text), "--steps", "2",
                         "--max-sequences", "2"]) == 0
    assert "over 64 tokens in 2 sequence(s)" in capsys.readouterr().out
