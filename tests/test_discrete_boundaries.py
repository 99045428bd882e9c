"""Token files and windows, and multigen-discrete at its limits (each test was written against a one-line change the
rest of the suite let through)."""

import numpy as np
import pytest
import torch

from discrete.cli import main as discrete_cli
from discrete.data import CharTokenizer, TokenError, TokenWindows, builtin_text, read_tokens
from discrete.domain import Discrete, DiscreteConfig
from discrete.labels import boundary_rate, class_distance, scene_map, short_side_to
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
    text.write_text(builtin_text("train")[:2])
    assert discrete_cli(["eval", "--checkpoint", export, "--data", str(text)]) == 2
    assert f"{text} holds 2 tokens, fewer than one window of 32" in capsys.readouterr().err


def test_the_long_side_is_rounded_to_the_nearest_pixel():
    # 6x10 to a short side of 4: the long side is 10 * 4/6 = 6.67 -> 7 (not cut down to 6)
    assert short_side_to(torch.zeros(6, 10, dtype=torch.long), 4).shape == (4, 7)
    assert short_side_to(torch.zeros(10, 6, dtype=torch.long), 4).shape == (7, 4)


def test_the_masked_objective_takes_the_jsd_schedule_by_name():
    domain = Discrete(load_config(DiscreteConfig, overrides=["process.schedule=jsd", "process.timesteps=8"]))
    assert domain.objective == "masked"


def test_the_built_in_held_out_scenes_are_not_the_training_scenes():
    domain = Discrete(load_config(DiscreteConfig, overrides=["data.source=labels", "data.size=8",
                                                             "data.num_train=4"]))
    train, val = domain.build_dataset("train"), domain.build_dataset("val")
    assert len(val) == 1024
    assert torch.equal(val[0], scene_map(8, 10**9)) and torch.equal(train[0], scene_map(8, 0))


def test_a_d3pm_model_samples_with_every_one_of_its_timesteps_and_no_more():
    domain = Discrete(load_config(DiscreteConfig, overrides=["process.objective=d3pm", "process.timesteps=8",
                                                             "sample.steps=8"]))
    assert domain.sample_settings(steps=8).steps == 8
    with pytest.raises(ValueError, match="steps=9: at most process.timesteps=8"):
        domain.sample_settings(steps=9)


def test_sample_statistics_draw_their_samples_from_sample_seed():
    domain = Discrete(load_config(DiscreteConfig, overrides=[
        "data.source=labels", "data.size=8", "data.num_train=4", "process.timesteps=8", "model.dim=8",
        "model.depth=1", "sample.steps=2", "sample.seed=5"]))
    domain.fit()
    torch.manual_seed(0)
    model = domain.build_model()
    held_out = torch.stack([domain.build_dataset("val")[i] for i in range(2)])
    stats = domain.sample_statistics(model, held_out, 3)
    expected = domain.sample(model, 3, generator=torch.Generator().manual_seed(5))
    assert stats["sample_boundary_rate"] == boundary_rate(expected)
    assert stats["sample_class_distance"] == class_distance(expected, held_out, 6)


def test_fit_takes_a_held_out_split_of_exactly_one_window(tmp_path):
    np.save(tmp_path / "t.npy", np.arange(100) % 5)  # 90 training tokens, 10 held out
    domain = Discrete(load_config(DiscreteConfig, overrides=[
        "data.source=tokens", f"data.path={tmp_path / 't.npy'}", "data.vocab_size=5", "data.length=10"]))
    domain.fit()
    assert len(domain.stream("val")) == 10 and len(domain.build_dataset("val")) == 1


def test_with_a_held_out_token_file_each_split_is_a_whole_file(tmp_path):
    """``data.val_path`` given: the held-out file is the held-out split and all of ``data.path`` is trained on (its
    last tenth was still cut away from training)."""
    np.save(tmp_path / "train.npy", np.zeros(50, dtype=np.int64))
    np.save(tmp_path / "val.npy", np.arange(20) % 5)
    domain = Discrete(load_config(DiscreteConfig, overrides=[
        "data.source=tokens", f"data.path={tmp_path / 'train.npy'}", f"data.val_path={tmp_path / 'val.npy'}",
        "data.vocab_size=5", "data.length=10"]))
    domain.fit()
    assert torch.equal(domain.stream("val"), torch.arange(20) % 5)
    assert torch.equal(domain.stream("train"), torch.zeros(50, dtype=torch.long))
