"""Shared command-line types at their boundaries, the guidance interval's two values, and ``--start`` of
multigen-complete reaching the sampler."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from multigen.cli import add_export_arguments, add_sampler_arguments, diffusion_time
from multigen.config import load_config
from multigen.export import export_model
from pointcloud.cli import complete_main
from pointcloud.domain import PointCloud, PointCloudConfig

SMALL = ["data.points=256", "model.width=0.25", "model.voxel_resolution=0.25", "task.partial_points=40"]


def test_a_diffusion_time_lies_in_zero_to_one_with_one_included():
    """1 (from pure noise) is a diffusion time, 0, above 1 and non-numbers are not."""
    assert diffusion_time("1") == 1.0 and diffusion_time("0.05") == 0.05 and diffusion_time("1e-3") == 1e-3
    for text in ("0", "-0.5", "1.0001", "nan", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            diffusion_time(text)


def test_the_guidance_interval_takes_exactly_two_values():
    p = argparse.ArgumentParser()
    add_export_arguments(p)
    add_sampler_arguments(p, guidance_help="scale")
    for values in (["0.5"], ["0.1", "0.5", "0.9"]):
        with pytest.raises(SystemExit):
            p.parse_args(["--checkpoint", "x", "--guidance-interval", *values])


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    domain = PointCloud(load_config(PointCloudConfig, None, [*SMALL, "task.completion=0.5",
                                                             "task.completion_bank=8"]))
    torch.manual_seed(0)
    return export_model(domain.build_model(), domain, tmp_path_factory.mktemp("pc_export"))


def test_complete_passes_start_to_the_sampler(export_dir, tmp_path, monkeypatch, capsys):
    """``--start T`` reaches the completion as its start (the model's ``task.completion_start`` without it)."""
    seen = []
    original = PointCloud.sample

    def recording(self, *args, **kw):
        seen.append(kw.get("start"))
        return original(self, *args, **kw)

    monkeypatch.setattr(PointCloud, "sample", recording)
    partial = np.random.default_rng(0).normal(size=(30, 3)) * 0.3
    np.save(tmp_path / "partial.npy", partial)
    for extra, start in [(["--start", "0.5"], 0.5), ([], None)]:
        assert complete_main(["--checkpoint", str(export_dir), "--input", str(tmp_path / "partial.npy"), "--num",
                              "1", "--steps", "2", "--out", str(tmp_path / "out"), *extra]) == 0
        assert seen[-1] == start
