"""Noise schedules against their closed forms."""

import math
import re

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
    s = NoiseSchedule(kind, 200, beta_end=0.1)  # beta_end: the linear schedule's, reaching noise at T = 200
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


def test_parameters_that_give_nan_tables_or_a_zero_terminal_level_are_refused():
    """NaN parameters passed (every alpha_bar NaN), cosine_s = -1 was a ZeroDivisionError, max_beta = 1 made
    alpha_bar_T 0 (eps prediction's x0 divides by it: every sample NaN); T = 1 at the default max_beta ends at
    1 - 0.999 = 0.0010000000000000009, which the check refused as above 0.001."""
    for kwargs, says in ((dict(cosine_s=math.nan), "cosine_s must be a finite number"),
                         (dict(kind="linear", beta_end=math.inf), "beta_end must be a finite number"),
                         (dict(kind="sigmoid", sigmoid_tau=math.nan), "sigmoid_tau must be a finite number"),
                         (dict(cosine_s=-1.0), "cosine_s must be >= 0"), (dict(max_beta=1.0), r"in \(0, 1\)")):
        with pytest.raises(ValueError, match=says):
            NoiseSchedule(**kwargs)
    assert NoiseSchedule("cosine", 1).alpha_bar(torch.tensor(1)).item() == pytest.approx(1e-3)


@pytest.mark.parametrize("kind", SCHEDULES)
@pytest.mark.parametrize("T", [10, 50, 100, 250, 1000])
def test_every_schedule_ends_near_pure_noise_or_is_rejected(kind, T):
    """Samplers start from N(0, I). DDPM's linear betas end at alpha_bar_T = 0.36 with T = 100: rejected, with
    the beta_end that would do; raising beta_end as told gives a valid schedule."""
    try:
        s = NoiseSchedule(kind, T)
    except ValueError as e:
        assert kind == "linear" and T < 1000, e
        assert f"{T} timesteps" in str(e) and "beta_end" in str(e)
        needed = re.search(r"beta_end >= ([0-9.e-]+)", str(e))
        if needed:
            s = NoiseSchedule(kind, T, beta_end=float(needed.group(1)) * 1.01)
        else:
            return
    assert s.alpha_bar(torch.tensor(T)).item() <= 1e-3


def test_an_export_records_and_rebuilds_the_whole_schedule(tmp_path):
    """Every parameter of the schedule is written into the export's config, so loading it rebuilds the same
    schedule whatever the code's defaults are then."""
    import dataclasses

    import yaml

    from multigen.config import load_config
    from multigen.export import export_model, load_pretrained
    from multigen.toy2d import Toy2D, Toy2DConfig

    cfg = load_config(Toy2DConfig, overrides=["model.hidden=8", "diffusion.cosine_s=0.02", "diffusion.max_beta=0.99"])
    domain = Toy2D(cfg)
    export_model(domain.build_model(), domain, tmp_path / "export")
    written = yaml.safe_load((tmp_path / "export" / "config.yaml").read_text())["diffusion"]
    names = {f.name for f in dataclasses.fields(NoiseSchedule) if f.init} - {"kind"}
    assert names <= written.keys(), names - written.keys()
    assert written["schedule"] == "cosine" and written["cosine_s"] == 0.02
    rebuilt = load_pretrained(tmp_path / "export").domain.diffusion.schedule
    expected = NoiseSchedule("cosine", 1000, cosine_s=0.02, max_beta=0.99)
    torch.testing.assert_close(rebuilt.alpha_bars, expected.alpha_bars, rtol=0, atol=0)
    assert not torch.equal(rebuilt.alpha_bars, NoiseSchedule("cosine", 1000).alpha_bars)


def test_the_table_is_copied_to_another_device_once_and_kept():
    s = NoiseSchedule("cosine", 50)
    assert s.table("cpu") is s.alpha_bars
    on_meta = s.table("meta")
    assert on_meta.device.type == "meta" and on_meta.shape == s.alpha_bars.shape
    assert s.table(torch.device("meta")) is on_meta
