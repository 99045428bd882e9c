"""Resuming: a run's earlier config may lack settings added since; they are not compared."""

from __future__ import annotations

import pytest
import yaml

from discrete.domain import DiscreteConfig
from multigen.checkpoints import check_same_network
from multigen.config import ConfigError, load_config, to_yaml
from multigen.toy2d import Toy2DConfig


def _earlier_config(tmp_path, cfg, drop: tuple[str, str], **changes):
    """``cfg`` as an earlier run wrote it, without the setting ``drop`` (section, key) and with ``changes``."""
    data = yaml.safe_load(to_yaml(cfg))
    del data[drop[0]][drop[1]]
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        data[section][key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("drop", [("train", "lr_decay_steps"), ("model", "hidden")])
def test_settings_the_earlier_config_lacks_are_not_compared(tmp_path, drop):
    """A setting added since the checkpoints were written (a training one, or even a network one) is neither a
    change nor an error; the settings both have still are."""
    cfg = load_config(Toy2DConfig, overrides=["train.max_steps=20"])
    assert check_same_network(_earlier_config(tmp_path, cfg, drop), cfg) == ""
    changed = check_same_network(_earlier_config(tmp_path, cfg, drop, train__max_steps=10), cfg)
    assert changed == "train.max_steps: 10 -> 20"
    if drop[0] == "train":
        with pytest.raises(ConfigError, match=r"another network or process \(model.hidden: 32 -> \d+\)"):
            check_same_network(_earlier_config(tmp_path, cfg, drop, model__hidden=32), cfg)


def test_another_vocabulary_is_another_network(tmp_path):
    """Text of other characters, as many as before, gives the embeddings other meanings: an error, as a changed noise
    process is (a vocabulary of another size too, before its weights fail to load as if damaged)."""
    cfg = load_config(DiscreteConfig, overrides=["data.vocab=abcdefgh"])
    earlier = tmp_path / "config.yaml"
    earlier.write_text(to_yaml(load_config(DiscreteConfig, overrides=["data.vocab=stuvwxyz"])))
    with pytest.raises(ConfigError, match=r"another network or process \(data.vocab: stuvwxyz -> abcdefgh\)"):
        check_same_network(earlier, cfg)
    tokens = load_config(DiscreteConfig, overrides=["data.source=tokens", "data.vocab_size=12"])
    earlier.write_text(to_yaml(load_config(DiscreteConfig, overrides=["data.source=tokens", "data.vocab_size=10"])))
    with pytest.raises(ConfigError, match=r"another network or process \(data.vocab_size: 10 -> 12\)"):
        check_same_network(earlier, tokens)
