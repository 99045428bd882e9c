"""benchmarks/video_levels.py: the per-level denoiser errors against their closed forms."""

import pytest
import torch

from multigen.config import load_config
from video.domain import Video, VideoConfig

from .conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("video_levels")


def _domain(*overrides: str) -> Video:
    return Video(load_config(VideoConfig, overrides=["data.frames=6", "data.size=16", "model.base_channels=8",
                                                     "model.residual_scale=2", *overrides]))


def test_errors_of_an_untrained_network_match_their_closed_forms(bench):
    """A fresh network outputs v = 0 (zero-initialised head), so its x0 estimate is alpha x_t: over many pixels its
    error is (1 - alpha^2)^2 s^2 + alpha^2 sigma^2, and the shrinkage's (c alpha - 1)^2 s^2 + c^2 sigma^2."""
    torch.manual_seed(0)
    domain = _domain()
    model = domain.build_model().eval()
    val = domain.build_dataset("val")
    clips = torch.stack([val[i] for i in range(24)])
    rows = bench.level_errors(domain, model, clips, [20, 300])
    assert [(r["task"], r["level"]) for r in rows] == [(task, level) for task in ("future", "interp", "past")
                                                       for level in (20, 300)]
    for r in rows:
        a, s2 = r["alpha"], r["zero"]
        sigma2 = 1 - a * a
        assert s2 > 0
        assert r["network"] == pytest.approx((1 - a * a) ** 2 * s2 + a * a * sigma2, rel=0.05)
        c = a * s2 / (a * a * s2 + sigma2)
        assert r["shrinkage"] == pytest.approx((c * a - 1) ** 2 * s2 + c * c * sigma2, rel=0.05)
        assert r["shrinkage"] < r["zero"]
    lines = bench.table(rows).splitlines()
    assert len(lines) == 2 + len(rows) and all(line.count("|") == 7 for line in lines)


def test_a_model_without_a_reference_is_refused(bench):
    domain = _domain("model.residual=false")
    with pytest.raises(ValueError, match="not a residual model"):
        bench.level_errors(domain, domain.build_model(), torch.zeros(2, 6, 1, 16, 16), [20])
    with pytest.raises(ValueError, match="outside the schedule"):
        bench.level_errors(_domain(), _domain().build_model(), torch.zeros(2, 6, 1, 16, 16), [0])
