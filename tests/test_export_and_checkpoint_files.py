"""Exports and checkpoints on disk: weights round-trip, replacement without losing the previous export, temp
folders of crashed runs ignored, checkpoint rotation by step number (mutation round 5)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from torch import nn

import multigen.export as export_mod
from multigen.checkpoints import latest_checkpoint, save_checkpoint
from multigen.config import load_config
from multigen.export import _mismatch, export_model, load_pretrained
from multigen.toy2d import Toy2D, Toy2DConfig


def _toy(*overrides: str) -> Toy2D:
    return Toy2D(load_config(Toy2DConfig, overrides=["model.hidden=8", "data.num_val=100", *overrides]))


def _randomized(model: nn.Module, seed: int = 1) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def test_a_loaded_export_holds_the_exported_weights(tmp_path):
    domain = _toy()
    model = _randomized(domain.build_model())
    loaded = load_pretrained(export_model(model, domain, tmp_path / "export")).model
    fresh = domain.build_model()
    for (name, want), got in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(got, want), name
    assert any(not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), loaded.state_dict().values()))


def test_an_export_of_non_finite_weights_or_a_config_its_domain_refuses_is_named(tmp_path, monkeypatch):
    """A damaged weights file that still parses (NaN bytes) loaded, and a discrete model sampled class 0 everywhere
    from it; a config the domain's own checks refuse (a label-map export without data.source) was an error about
    training that named no file."""
    domain = _toy()
    model = _randomized(domain.build_model())
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    export = export_model(model, domain, tmp_path / "export")
    with pytest.raises(ValueError, match=r"model.safetensors holds NaN or infinite weights \(\S+\): a damaged"):
        load_pretrained(export)

    def refuses(self, cfg):
        raise ValueError("data.vocab is empty")

    monkeypatch.setattr(Toy2D, "__init__", refuses)
    with pytest.raises(ValueError, match=r"export/config.yaml: data.vocab is empty"):
        load_pretrained(export)


def test_reexporting_replaces_the_export_and_leaves_no_side_folders(tmp_path):
    domain = _toy()
    first, second = _randomized(domain.build_model(), 1), _randomized(domain.build_model(), 2)
    export_model(first, domain, tmp_path / "export")
    export_model(second, domain, tmp_path / "export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    loaded = load_pretrained(tmp_path / "export").model
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), second.state_dict().values()))


def test_an_export_after_a_crashed_one_ignores_its_leftover_temp_folder(tmp_path):
    domain = _toy()
    (tmp_path / "export.tmp").mkdir()
    (tmp_path / "export.tmp" / "stale.bin").write_bytes(b"junk")
    out = export_model(domain.build_model(), domain, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.safetensors"]
    assert not (tmp_path / "export.tmp").exists()


def test_an_export_makes_its_missing_parent_folders(tmp_path):
    domain = _toy()
    out = export_model(domain.build_model(), domain, tmp_path / "a" / "b" / "export")
    assert (out / "model.safetensors").is_file() and load_pretrained(out).domain.name == "toy2d"


def test_exporting_leaves_the_global_random_state_as_it_was(tmp_path):
    domain = _toy()
    model = domain.build_model()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    export_model(model, domain, tmp_path / "export")
    assert torch.equal(torch.rand(3), expected)


def test_a_failed_replacement_keeps_the_previous_export_aside(tmp_path, monkeypatch):
    domain = _toy()
    old = _randomized(domain.build_model(), 1)
    export_model(old, domain, tmp_path / "export")
    real_replace = os.replace

    def failing(src, dst):
        if str(src).endswith(".tmp"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(export_mod.os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        export_model(_randomized(domain.build_model(), 2), domain, tmp_path / "export")
    monkeypatch.setattr(export_mod.os, "replace", real_replace)
    kept = load_pretrained(tmp_path / "export.old").model  # the earlier export, moved aside, not deleted
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), old.state_dict().values()))


def test_load_pretrained_puts_the_model_on_the_asked_device(tmp_path):
    domain = _toy()
    out = export_model(domain.build_model(), domain, tmp_path / "export")
    pretrained = load_pretrained(out, device="meta")
    assert {p.device.type for p in pretrained.model.parameters()} == {"meta"}
    assert not pretrained.model.training


def test_a_mismatch_of_more_than_five_names_says_there_are_more():
    six = {f"w{i}": torch.Size([1]) for i in range(6)}
    assert _mismatch(six, {}).endswith(" ...")
    assert not _mismatch(dict(list(six.items())[:5]), {}).endswith("...")


def _save(accelerator: Accelerator, folder: Path, step: int, keep: int = 2) -> Path:
    return save_checkpoint(accelerator, folder, step, keep, "adamw", consumed=0)


def test_checkpoint_rotation_keeps_the_newest_by_step_number(tmp_path):
    accelerator = Accelerator(cpu=True)
    for step in (5, 9, 10, 20):
        _save(accelerator, tmp_path, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_10", "step_20"]
    info = json.loads((tmp_path / "step_20" / "multigen.json").read_text())
    assert info["step"] == 20


def test_latest_checkpoint_compares_step_numbers_not_names(tmp_path):
    for name in ("step_9", "step_10", ".tmp_step_11", "step_x"):
        (tmp_path / name).mkdir()
    assert latest_checkpoint(tmp_path).name == "step_10"


def test_a_leftover_temp_checkpoint_is_not_mixed_into_the_new_one(tmp_path):
    (tmp_path / ".tmp_step_10").mkdir()
    (tmp_path / ".tmp_step_10" / "random_states_7.pkl").write_bytes(b"from a crashed run")
    final = _save(Accelerator(cpu=True), tmp_path, 10)
    assert not (final / "random_states_7.pkl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_10"]


def test_a_domain_class_no_import_reaches_loads_its_export_when_given_the_class(tmp_path, monkeypatch):
    """A domain class defined in a function (or a script run as ``__main__``) exports under its bare name, which
    nothing can look up: ``load_pretrained(path, domain=TheClass)`` loads it, another class is refused by name, and
    without the class the error says how to load it."""

    class Local(Toy2D):
        name = "local-toy"

    domain = Local(load_config(Toy2DConfig, overrides=["model.hidden=16"]))
    export = export_model(domain.build_model(), domain, tmp_path / "export")
    assert (export / "config.yaml").read_text().startswith("domain: local-toy\n")
    loaded = load_pretrained(export, domain=Local)
    assert type(loaded.domain) is Local and loaded.domain.cfg.model.hidden == 16
    assert loaded.sample(3, steps=2).shape == (3, 2)
    with pytest.raises(ValueError, match="holds a local-toy model, not a toy2d model"):
        load_pretrained(export, domain=Toy2D)
    # the script's class imported from its file under a module name (the benchmarks load their scripts so)
    (tmp_path / "script54.py").write_text("from multigen.toy2d import Toy2D\n\n\nclass Local(Toy2D):\n"
                                          "    name = 'local-toy'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from script54 import Local as Imported

    assert type(load_pretrained(export, domain=Imported).domain) is Imported
    with pytest.raises(LookupError, match=r"unknown domain 'local-toy'.*load_pretrained\(path, domain=TheClass\)"):
        load_pretrained(export)


def test_a_domain_given_as_module_and_class_exports_and_loads_without_registering(tmp_path, monkeypatch, capsys):
    """README: ``--domain package.module:Class`` works without registering the domain. Its export names it so
    (``domain: package.module:Class``), so that ``load_pretrained`` and ``--config EXPORT/config.yaml`` find it
    again (the export said ``domain: mytoy``, which nothing could load)."""
    (tmp_path / "mytoymod.py").write_text("from multigen.toy2d import Toy2D\n\n\nclass MyToy(Toy2D):\n"
                                          "    name = 'mytoy'\n\n\nclass BigToy(Toy2D):  # toy2d's name, inherited\n"
                                          "    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from multigen.domain import get_domain
    from multigen.train import main

    cls = get_domain("mytoymod:MyToy")
    domain = cls(load_config(cls.config_class, overrides=["model.hidden=16"]))
    export = export_model(domain.build_model(), domain, tmp_path / "export")
    assert (export / "config.yaml").read_text().startswith("domain: mytoymod:MyToy\n")
    loaded = load_pretrained(export)
    assert type(loaded.domain) is cls and loaded.sample(3, steps=2).shape == (3, 2)
    assert load_pretrained(export, domain="mytoymod:MyToy").domain.cfg.model.hidden == 16
    assert main(["--domain", "mytoymod:MyToy", "--config", str(export / "config.yaml"), "--print-config"]) == 0
    assert "hidden: 16" in capsys.readouterr().out
    big = get_domain("mytoymod:BigToy")  # under a registered name that is another class's: loads back as itself
    inherits = big(load_config(big.config_class))
    export = export_model(inherits.build_model(), inherits, tmp_path / "big")
    assert (export / "config.yaml").read_text().startswith("domain: mytoymod:BigToy\n")
    assert type(load_pretrained(export).domain) is big
    # a command for toy2d models takes a subclass's export, however the export names it, and builds the subclass
    assert type(load_pretrained(export, domain="toy2d").domain) is big
    assert type(load_pretrained(tmp_path / "export", domain="toy2d").domain) is cls
    assert type(load_pretrained(tmp_path / "export", domain=Toy2D).domain) is cls  # the class, as the name does
    # a copy of the class in a script run as __main__ (another object than the module's), given itself, loads the
    # module's export; an importable class of the same name elsewhere is another domain
    (tmp_path / "script55.py").write_text("from multigen.toy2d import Toy2D\n\n\nclass MyToy(Toy2D):\n"
                                          "    name = 'mytoy'\n")
    from script55 import MyToy as Elsewhere

    with pytest.raises(ValueError, match="holds a mytoymod:MyToy model, not a script55:MyToy model"):
        load_pretrained(tmp_path / "export", domain=Elsewhere)
    Copy = type("MyToy", (Toy2D,), {"name": "mytoy", "__module__": "__main__"})
    assert type(load_pretrained(tmp_path / "export", domain=Copy).domain) is Copy
    with pytest.raises(LookupError, match=r"No module named 'nosuchmod' \(the module must be importable: put its "
                                          r"folder on PYTHONPATH\)"):
        get_domain("nosuchmod:MyToy")
    with pytest.raises(ValueError, match="holds a mytoymod:BigToy model, not a video model"):
        load_pretrained(export, domain="video")
    config = export / "config.yaml"  # a domain not installed here: not the asked one, and unknown when none is asked
    config.write_text(config.read_text().replace("domain: mytoymod:BigToy", "domain: elsewhere"))
    with pytest.raises(ValueError, match="holds a elsewhere model, not a toy2d model"):
        load_pretrained(export, domain="toy2d")
    for asked in (None, "elsewhere"):
        with pytest.raises(LookupError, match="elsewhere"):
            load_pretrained(export, domain=asked)
    assert main(["--domain", "toy2d", "--config", str(export / "config.yaml"), "--print-config"]) == 2
    registered = Toy2D(load_config(Toy2DConfig))  # a registered domain keeps its name
    assert (export_model(registered.build_model(), registered, tmp_path / "toy") / "config.yaml").read_text(
    ).startswith("domain: toy2d\n")
