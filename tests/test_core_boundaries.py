"""The shared command-line helpers, domain lookup, sampler settings and toy2d's splits at their boundaries (each test
was written against a one-line change the rest of the suite let through)."""

import numpy as np
import pytest
import torch

from multigen.cli import output_folder
from multigen.config import load_config
from multigen.domain import UnknownDomainError, get_domain, natural_key
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


def test_the_core_samplers_name_settings_they_cannot_use():
    """Called directly (not through a domain's checked config), the samplers still refuse what would sample the
    wrong distribution or fail deep inside: eta outside [0, 1] (at -1 every sample was the mean), a float or
    boolean step count, resample below 1, and a delay that is fractional, negative (its item skipped the first
    levels and started from noise read as a lower level) or shaped for other samples."""
    import numpy as np

    from multigen.samplers import sample
    from multigen.schedules import NoiseSchedule

    schedule, zero = NoiseSchedule("cosine", 100), lambda x, t: torch.zeros_like(x)
    for kw, message in [({"sampler": "ddim", "eta": -1.0}, r"eta=-1.0: DDIM's eta lies in \[0, 1\]"),
                        ({"sampler": "ddim", "eta": 1.5}, "eta=1.5"),
                        ({"steps": 5.0}, "steps must be an integer in"), ({"steps": True}, "got True"),
                        ({"sampler": "ddpm", "resample": 0}, "resample=0: .* an integer >= 1"),
                        ({"delay": torch.zeros(4)}, "delay: whole sampler steps"),
                        ({"delay": torch.tensor([0, 1, -1, 0])}, "delay: steps >= 0"),
                        ({"delay": torch.zeros(3, dtype=torch.long)}, r"delay of shape \(3,\) for samples of shape")]:
        with pytest.raises(ValueError, match=message):
            sample(zero, (4, 2), schedule, **{"steps": 5, **kw})
    for delay in (torch.zeros(4, dtype=torch.long), torch.zeros(4, 1, dtype=torch.long), torch.tensor(0)):
        assert sample(zero, (4, 2), schedule, steps=5, delay=delay).shape == (4, 2)
    assert sample(zero, (4, 2), schedule, steps=np.int64(5)).shape == (4, 2)  # a NumPy integer is an integer


def test_the_plain_sampler_functions_check_their_own_settings():
    """Called without :func:`sample` (as k-diffusion's samplers are), ddpm refuses a fractional resample (a
    TypeError in ``range``) and a negative or infinite temperature, ddim such a temperature, and dpm_solver_pp a
    negative or fractional delay (a negative one started its item below the grid's first level)."""
    from multigen.samplers import ddim, ddpm, dpm_solver_pp, sampling_grid
    from multigen.schedules import NoiseSchedule

    grid, zero, noise = sampling_grid(NoiseSchedule("cosine", 100), 5, "time"), lambda x, t: 0 * x, torch.randn(4, 2)
    for sampler, kw, message in [(ddpm, {"resample": 1.5}, r"resample=1.5: .* an integer >= 1"),
                                 (ddpm, {"temperature": -1.0}, "temperature must be a finite number >= 0"),
                                 (ddim, {"temperature": float("inf")}, "temperature must be a finite number >= 0"),
                                 (dpm_solver_pp, {"delay": torch.tensor([0, 1, -1, 0])}, "delay: steps >= 0"),
                                 (dpm_solver_pp, {"delay": torch.zeros(4)}, "delay: whole sampler steps")]:
        with pytest.raises(ValueError, match=message):
            sampler(zero, noise, grid, **kw)
    assert ddpm(zero, noise, grid, resample=np.int64(2)).shape == (4, 2)


def test_a_schedule_refuses_what_breaks_it_and_compares_without_error():
    from multigen.diffusion import GaussianDiffusion
    from multigen.schedules import NoiseSchedule

    for kw, message in [({"timesteps": 100.0}, "timesteps must be an integer >= 1, got 100.0"),
                        ({"max_beta": 1.5}, r"max_beta .* in \(0, 1\), got 1.5"),
                        ({"kind": "linear", "beta_start": -1e-3}, "betas are noise variances, >= 0"),
                        ({"kind": "sigmoid", "sigmoid_tau": 0.0}, "sigmoid_tau != 0"),
                        ({"kind": "sigmoid", "sigmoid_start": 1.0, "sigmoid_end": 1.0},
                         "sigmoid_start != sigmoid_end")]:
        with pytest.raises(ValueError, match=message):
            NoiseSchedule(**{"kind": "cosine", "timesteps": 100, **kw})
    # reversed or decreasing parameters that still end at pure noise are schedules
    assert NoiseSchedule("sigmoid", 100, sigmoid_start=3.0, sigmoid_end=-3.0).alpha_bar(torch.tensor(1.0)) < 1e-3
    assert NoiseSchedule("linear", 1000, beta_start=0.02, beta_end=1e-4).betas[-1] < 1e-3
    a = NoiseSchedule("cosine", 100)
    assert a == a and a != NoiseSchedule("cosine", 100)  # by identity (it held tensors: == raised)
    diffusion = GaussianDiffusion(a)
    with pytest.raises(ValueError, match=r"steps: integer levels in 0..100 \(t = steps / T\), got torch.float32"):
        diffusion.loss(lambda x, t: x, torch.zeros(2, 3), steps=torch.tensor([0.5, 0.5]))


def _shapenet_cloud(path):
    from pointcloud.datasets import ShapeNetPC15k
    (path.parent / "03001627" / "train").mkdir(parents=True)  # chair
    path.rename(path.parent / "03001627" / "train" / path.name)
    return ShapeNetPC15k(path.parent, ["chair"], "train", points=8)[0]


def _npy_readers():
    from discrete.data import read_tokens
    from discrete.labels import read_label_maps
    from pointcloud.io import read_points
    from video.io import videos_in
    return {"tokens": lambda p: read_tokens(p, 4), "labels": read_label_maps, "points": read_points,
            "video": videos_in, "shapenet": _shapenet_cloud}


@pytest.mark.parametrize("reader", ["tokens", "labels", "points", "video", "shapenet"])
@pytest.mark.parametrize("content", [b"1 2 3\n", b""])
def test_a_file_named_npy_that_is_no_array_is_called_so_by_every_reader(tmp_path, reader, content):
    """A text (or empty) file named ``.npy``: numpy's own message says it holds pickled data and suggests
    ``allow_pickle``; every reader says instead that it is no NumPy array file (``multigen.domain.load_npy``)."""
    from multigen.domain import DataError
    bad = tmp_path / "x.npy"
    bad.write_bytes(content)
    with pytest.raises(DataError, match="no .npy header") as e:
        _npy_readers()[reader](bad)
    assert "allow_pickle" not in str(e.value) and "x.npy" in str(e.value)


@pytest.mark.parametrize("reader", ["tokens", "labels", "points", "video", "shapenet"])
@pytest.mark.parametrize("fault", ["truncated", "objects"])
def test_a_truncated_or_pickled_npy_is_the_readers_own_error_naming_it(tmp_path, reader, fault):
    """Whatever numpy raises for a ``.npy`` it cannot read (a cut-off download, an array of Python objects), each
    reader raises its domain's ``DataError`` naming the file."""
    from multigen.domain import DataError
    bad = tmp_path / "x.npy"
    if fault == "truncated":
        np.save(bad, np.zeros((4, 8, 8, 8, 3), dtype=np.uint8))
        bad.write_bytes(bad.read_bytes()[:-100])
    else:
        np.save(bad, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="x.npy: not a readable .npy array"):
        _npy_readers()[reader](bad)


def test_natural_order_reads_numbers_by_value_and_other_digit_signs_as_text():
    """``frame_2`` before ``frame_10``, case aside; a sign that is a digit but no decimal (a superscript two) is text,
    not a number int() refuses."""
    from pathlib import Path

    names = ["Frame_10.png", "frame_2.png", "frame_1²2.png", "frame_1.png", "frame_١٢.png"]
    assert [p.name for p in sorted(map(Path, names), key=natural_key)] == [
        "frame_1.png", "frame_1²2.png", "frame_2.png", "Frame_10.png", "frame_١٢.png"]
