"""The shared command-line helpers, domain lookup, sampler settings and toy2d's splits at their boundaries (each test
was written against a one-line change the rest of the suite let through)."""

import pytest
import torch

from multigen.cli import output_folder
from multigen.config import load_config
from multigen.domain import UnknownDomainError, get_domain
from multigen.toy2d import Toy2D, Toy2DConfig


def test_an_existing_output_folder_is_reused(tmp_path):
    """A second run into the same --out folder (or one made beforehand) is not an error."""
    assert output_folder(tmp_path / "out") == tmp_path / "out"
    (tmp_path / "out" / "old.txt").write_text("kept")
    assert output_folder(tmp_path / "out").is_dir() and (tmp_path / "out" / "old.txt").read_text() == "kept"


def test_naming_the_configs_own_sampler_keeps_its_settings():
    """Overriding ``sampler`` resets ``eta``/``resample`` only when it changes the sampler."""
    toy = Toy2D(load_config(Toy2DConfig, overrides=["sample.sampler=ddim", "sample.eta=0.5"]))
    assert toy.sample_settings(sampler="ddim").eta == 0.5
    assert toy.sample_settings(sampler="ddpm").eta == 0.0


def test_a_module_path_must_name_a_domain_class():
    with pytest.raises(UnknownDomainError, match="does not name a multigen Domain subclass"):
        get_domain("multigen.config:ConfigError")
    assert get_domain("multigen.toy2d:Toy2D") is Toy2D


def test_toy2d_holds_out_points_of_another_seed():
    toy = Toy2D(load_config(Toy2DConfig, overrides=["data.num_train=50", "data.num_val=50"]))
    train, val = toy.build_dataset("train").tensors[0], toy.build_dataset("val").tensors[0]
    assert train.shape == val.shape == (50, 2) and not torch.equal(train, val)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        toy.build_dataset("test")
