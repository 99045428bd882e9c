"""The sliced Wasserstein distance against exact 1-D W2 (equal and unequal set sizes), and the benchmark helpers:
timing after warm-up, FLOP counts, precision, settings overrides, result files and table cells (mutation round 5)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from torch import nn

import multigen.benchmarking as benchmarking
from multigen.config import load_config
from multigen.export import export_model
from multigen.metrics import gaussian_fit, sliced_wasserstein
from multigen.toy2d import Toy2D, Toy2DConfig


def _toy(*overrides: str) -> Toy2D:
    return Toy2D(load_config(Toy2DConfig, overrides=["model.hidden=8", "data.num_val=100", *overrides]))


def test_sliced_wasserstein_in_one_dimension_is_the_exact_w2_whatever_the_order():
    x = torch.tensor([[2.0], [0.0], [1.0]])
    y = torch.tensor([[1.5], [3.5], [2.5]])  # x + 1.5, in another order
    assert sliced_wasserstein(x, y) == pytest.approx(1.5)
    assert sliced_wasserstein(x, x.flip(0)) == 0.0


def test_sliced_wasserstein_of_a_translation_averages_its_projections():
    """x + v: every direction theta moves by v . theta; in 2-D the mean of (v . theta)^2 is |v|^2 / 2."""
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    assert sliced_wasserstein(x, x + torch.tensor([3.0, 0.0])) == pytest.approx(3.0 / 2**0.5, rel=0.1)


def test_sliced_wasserstein_between_sets_of_unequal_size_is_the_exact_w2_of_their_distributions():
    """{0, 1} against {0, 0.5, 1}: the quantile functions differ by 0.5 on levels (1/3, 2/3), so W2^2 = 1/12; a set
    against itself repeated is at distance 0 (resampling both sets to common quantiles had made it 0.25)."""
    x = torch.tensor([[0.0], [1.0]])
    assert sliced_wasserstein(x, torch.tensor([[0.0], [0.5], [1.0]])) == pytest.approx((1 / 12) ** 0.5)
    assert sliced_wasserstein(x, torch.cat([x, x])) == 0.0
    points = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    assert sliced_wasserstein(points, torch.cat([points, points, points])) == pytest.approx(0.0, abs=1e-12)


def test_timed_is_the_mean_of_the_timed_calls_after_the_warmup(monkeypatch):
    clock = {"now": 0.0, "calls": 0}

    def fn():  # each call takes 1 s of a fake clock more than the one before: 1, 2, 3, 4, 5
        clock["calls"] += 1
        clock["now"] += clock["calls"]

    monkeypatch.setattr(benchmarking.time, "perf_counter", lambda: clock["now"])
    assert benchmarking.timed(fn, repeats=3, warmup=2) == pytest.approx((3 + 4 + 5) / 3)
    assert clock["calls"] == 5


def test_matmul_tflops_counts_two_n_cubed_flops(monkeypatch):
    monkeypatch.setattr(benchmarking, "timed", lambda fn, device, repeats, warmup: 1e-3)
    assert benchmarking.matmul_tflops("cpu", n=8, dtype=torch.float32) == pytest.approx(2 * 8**3 / 1e-3 / 1e12)


def test_time_train_steps_runs_in_full_precision_without_a_dtype_and_leaves_no_gradients():
    w = nn.Parameter(torch.ones(3))
    autocast = []

    def loss():
        autocast.append(torch.is_autocast_enabled("cpu"))
        return (w * 2).sum()

    seconds, peak = benchmarking.time_train_steps(loss, [w], "cpu", None, steps=3)
    assert seconds >= 0 and peak > 0
    assert autocast == [False] * 5  # 2 warm-up steps, 3 timed
    assert w.grad is None
    benchmarking.time_train_steps(loss, [w], "cpu", torch.bfloat16, steps=1)
    assert autocast[-1] is True


def test_override_sample_settings_keeps_the_settings_it_does_not_name():
    domain = _toy("sample.steps=17", "sample.sampler=ddim")
    benchmarking.override_sample_settings(domain, ["temperature=0.5"])
    s = domain.cfg.sample
    assert (s.temperature, s.steps, s.sampler) == (0.5, 17, "ddim")


def test_write_results_makes_its_folder(tmp_path):
    path = benchmarking.write_results(tmp_path / "a" / "b" / "r.json", {"x": 1})
    written = json.loads(path.read_text())
    assert written["x"] == 1 and written["gpu"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else None)


def test_table_cells_format_the_numbers_inside_a_dict():
    assert benchmarking.table_cell({"a": 1 / 3, "b": None}) == "a 0.3333, b "


def test_quality_by_sampler_evaluates_at_each_sampler_and_temperature(tmp_path, monkeypatch):
    domain = _toy()
    out = export_model(domain.build_model(), domain, tmp_path / "export")
    seen = []
    monkeypatch.setattr(Toy2D, "evaluate", lambda self, model, val: seen.append(
        (self.cfg.sample.sampler, self.cfg.sample.steps, self.cfg.sample.temperature)) or {"score": 0.0})
    rows = benchmarking.quality_by_sampler(out, "cpu", [("ddim", 2), ("ddpm", 3)], (0.5, 1.0))
    expected = [("ddim", 2, 0.5), ("ddim", 2, 1.0), ("ddpm", 3, 0.5), ("ddpm", 3, 1.0)]
    assert seen == expected
    assert [(r["sampler"], r["steps"], r["temperature"]) for r in rows] == expected
    from video.domain import Video

    with pytest.raises(SystemExit, match="toy2d"):  # another domain's export, asked for video quality
        benchmarking.quality_by_sampler(out, "cpu", [("ddim", 2)], domain=Video)


def test_the_trainer_benchmark_reads_its_runs_as_domain_and_config():
    from .conftest import load_benchmark

    bench = load_benchmark("trainer")
    assert bench.domain_and_config("toy2d:tiny") == ("toy2d", "tiny")
    for bad in ("toy2d", ":tiny", "toy2d:", "a:b:c"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not DOMAIN:CONFIG"):
            bench.domain_and_config(bad)


def test_the_gaussian_baseline_has_the_data_s_mean_and_covariance():
    g = torch.Generator().manual_seed(1)
    points = torch.randn(5000, 2, generator=g) @ torch.tensor([[2.0, 0.0], [1.0, 0.5]]) + torch.tensor([3.0, -1.0])
    draws = gaussian_fit(points, (40000, 2), seed=3)
    assert draws.shape == (40000, 2)
    assert torch.allclose(draws.mean(0), points.mean(0), atol=0.05)
    assert torch.allclose(torch.cov(draws.T), torch.cov(points.T), rtol=0.05, atol=0.03)
    assert torch.equal(gaussian_fit(points, (40000, 2), seed=3), draws)  # the noise is drawn from the seed


def test_metrics_take_float64_one_dimensional_and_integer_inputs_and_name_empty_ones():
    """gaussian_fit failed on float64 points and on D = 1; one_nna on integer distances (Hamming counts) and on
    mismatched matrices deep inside torch.cat; sliced_wasserstein of an empty set was an IndexError, and of no
    projections NaN."""
    from multigen.metrics import one_nna

    assert gaussian_fit(torch.randn(100, 2, dtype=torch.float64), (5, 2)).dtype == torch.float64
    assert gaussian_fit(torch.randn(100, 1), (5, 1)).shape == (5, 1)
    d_ss = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    ints = torch.tensor([[0, 1], [1, 0]])
    assert one_nna(d_ss, d_ss.clone(), torch.full((2, 2), 5.0)) == 1.0 == one_nna(ints, ints, ints * 0 + 5)
    assert d_ss[0, 0] == 0  # the caller's matrix is left as it was
    for call, says in ((lambda: one_nna(d_ss, torch.zeros(3, 3), torch.zeros(2, 2)), "d_rr 2 x 2"),
                       (lambda: sliced_wasserstein(torch.zeros(0, 2), torch.ones(4, 2)), "two non-empty sets"),
                       (lambda: sliced_wasserstein(torch.zeros(3, 2), torch.ones(4, 2), projections=0),
                        "projections >= 1")):
        with pytest.raises(ValueError, match=says):
            call()
