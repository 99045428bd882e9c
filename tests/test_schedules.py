"""Noise schedules against their closed forms."""

import math

import pytest
import torch

from multigen.schedules import SCHEDULES, NoiseSchedule


def test_linear_discrete_is_cumulative_product_of_betas():
    s = NoiseSchedule("linear", 1000, beta_start=1e-4, beta_end=0.02)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    expected = torch.cumprod(1 - betas, 0)
    steps = torch.arange(1, 1001)
    torch.testing.assert_close(s.alpha_bar(steps), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.betas, betas, rtol=1e-9, atol=1e-12)
    assert s.alpha_bar(torch.tensor(0)).item() == 1.0


def test_linear_continuous_is_vp_sde_integral_and_close_to_discrete():
    s = NoiseSchedule("linear", 1000)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    b0, b1 = 1e-4 * 1000, 0.02 * 1000
    torch.testing.assert_close(s.alpha_bar(t), torch.exp(-(b0 * t + 0.5 * (b1 - b0) * t**2)))
    discrete = s.alpha_bar(torch.tensor([100, 500, 900]))
    # the two agree to O(1/T) in log alpha_bar
    assert (torch.log(discrete) - torch.log(s.alpha_bar(t))).abs().max() < 0.05


def test_cosine_closed_form_and_discrete_table_agree():
    s = NoiseSchedule("cosine", 1000)
    t = torch.tensor([0.0, 0.25, 0.5, 0.75], dtype=torch.float64)
    off = 0.008
    f = lambda u: torch.cos((u + off) / (1 + off) * math.pi / 2) ** 2  # noqa: E731
    torch.testing.assert_close(s.alpha_bar(t), f(t) / f(torch.zeros(1, dtype=torch.float64)))
    steps = torch.arange(0, 990)  # beyond ~990 the max_beta clip takes over
    torch.testing.assert_close(s.alpha_bar(steps), s.alpha_bar(steps.double() / 1000), rtol=1e-10, atol=1e-12)
    assert s.betas.max() <= 0.999 + 1e-12


@pytest.mark.parametrize("kind", SCHEDULES)
def test_views_are_consistent_and_monotone(kind):
    s = NoiseSchedule(kind, 200)
    for t in (torch.arange(0, 201), torch.linspace(0, 1, 101, dtype=torch.float64)):
        abar = s.alpha_bar(t)
        torch.testing.assert_close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(abar))
        assert (abar[1:] <= abar[:-1]).all(), "alpha_bar must decrease"
        inner = slice(1, -1)
        torch.testing.assert_close(s.log_snr(t)[inner], torch.log(abar / (1 - abar))[inner])
        assert (s.log_snr(t)[1:] <= s.log_snr(t)[:-1]).all()
    assert s.alpha_bar(torch.tensor(0.0, dtype=torch.float64)) == pytest.approx(1.0)
    assert s.log_snr(torch.tensor(0)).item() == math.inf


def test_sigmoid_endpoints():
    s = NoiseSchedule("sigmoid", 1000)
    assert s.alpha_bar(torch.tensor(0.0)).item() == pytest.approx(1.0)
    assert s.alpha_bar(torch.tensor(1.0)).item() == pytest.approx(0.0, abs=1e-12)


def test_model_time_and_errors():
    s = NoiseSchedule("cosine", 50)
    assert s.model_time(torch.tensor([0, 25, 50])).tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="unknown noise schedule"):
        NoiseSchedule("quadratic")
    with pytest.raises(ValueError, match=r"\[0, 50\]"):
        s.alpha_bar(torch.tensor([51]))
