"""Samplers with the exact denoiser of Gaussian data: right distribution, equivalences, known part kept."""

import argparse
import math

import numpy as np
import pytest
import torch

from multigen.benchmarking import sampler_setting
from multigen.samplers import (DEFAULT_SPACING, SAMPLERS, SPACINGS, Known, ddim, ddpm, dpm_solver_pp, is_whole, sample,
                               sampling_grid)
from multigen.schedules import NoiseSchedule
from multigen.testing import gaussian_mixture_denoiser

N = 20000
SCHEDULE = NoiseSchedule("cosine", 1000)
MEAN = torch.tensor([[0.5, -0.3]], dtype=torch.float64)
COV = torch.tensor([[[0.5, 0.2], [0.2, 0.3]]], dtype=torch.float64)
ONE = torch.ones(1, dtype=torch.float64)


def _noise(seed=0):
    return torch.randn(N, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _run(sampler, steps, denoiser, seed=0, **kw):
    grid = sampling_grid(SCHEDULE, steps, DEFAULT_SPACING[sampler.__name__])
    return sampler(denoiser, _noise(seed), grid, generator=torch.Generator().manual_seed(seed + 1), **kw)


@pytest.mark.parametrize(
    "name,sampler,steps,kw",
    [("ddpm-1000", ddpm, 1000, {}), ("ddpm-1000-resample-3", ddpm, 1000, {"resample": 3}),
     ("ddim-50", ddim, 50, {}), ("ddim-eta1-200", ddim, 200, {"eta": 1.0}), ("dpm++-20", dpm_solver_pp, 20, {})],
)
def test_samples_of_gaussian_data_have_its_mean_and_covariance(name, sampler, steps, kw):
    x = _run(sampler, steps, gaussian_mixture_denoiser(ONE, MEAN, COV, SCHEDULE), **kw)
    # sampling error of N = 20000 draws: ~0.005 on the mean, ~0.01 on the covariance entries
    assert (x.mean(0) - MEAN[0]).abs().max() < 0.02, (name, x.mean(0))
    assert (torch.cov(x.T) - COV[0]).abs().max() < 0.03, (name, torch.cov(x.T))


def _bimodal(var=0.05):
    """1-D mixture 0.3 N(-1, var) + 0.7 N(1, var) and its exact CDF."""
    w = torch.tensor([0.3, 0.7], dtype=torch.float64)
    m = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
    c = torch.full((2, 1, 1), var, dtype=torch.float64)
    cdf = lambda x: sum(w[k] * 0.5 * (1 + torch.erf((x - m[k, 0]) / math.sqrt(2 * var))) for k in range(2))  # noqa: E731
    return (w, m, c), cdf


def _ode_cdf_error(sampler, steps, D, cdf, **kw):
    """Exact Kolmogorov distance of a deterministic sampler's output to the data, without sampling noise.

    In 1-D the probability-flow ODE is a monotone map z -> x, so P(x_out <= x(z)) = Phi(z):
    push a fine grid of z through the sampler and compare Phi(z) with the data CDF at x(z).
    """
    z = torch.linspace(-4.5, 4.5, 3001, dtype=torch.float64)[:, None]
    x = sampler(D, z, sampling_grid(SCHEDULE, steps, **kw))[:, 0]
    assert (x[1:] >= x[:-1]).all(), "the ODE map must be monotone"
    phi = 0.5 * (1 + torch.erf(z[:, 0] / math.sqrt(2)))
    return float((phi - cdf(x)).abs().max())


def _ks(x, cdf):
    x = x.sort().values
    emp = torch.arange(1, len(x) + 1, dtype=torch.float64) / len(x)
    F = cdf(x)
    return float(torch.maximum(emp - F, F - emp + 1 / len(x)).max())


def test_dpm_solver_converges_on_a_bimodal_mixture_faster_than_ddim():
    mix, cdf = _bimodal()
    D = gaussian_mixture_denoiser(*mix, SCHEDULE)
    err = {n: _ode_cdf_error(dpm_solver_pp, n, D, cdf, spacing="log_snr") for n in (10, 20, 50)}
    ddim50 = min(_ode_cdf_error(ddim, 50, D, cdf, spacing=sp) for sp in ("time", "log_snr"))
    print("DPM-Solver++ Kolmogorov error by steps", err, "DDIM-50", ddim50)
    assert err[10] > err[20] > err[50]
    assert err[20] < 0.012 and err[50] < 0.003
    assert ddim50 > err[20], "second order: 20 DPM-Solver++ steps beat 50 DDIM steps"
    # 1000 ancestral steps, measured on 5000 samples: DPM-Solver++ at 20 steps is within its sampling error
    n = 5000
    x = ddpm(D, torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
             sampling_grid(SCHEDULE, 1000, "time"), generator=torch.Generator().manual_seed(1))[:, 0]
    ks_ddpm = _ks(x, cdf)
    assert ks_ddpm < 1.6 / math.sqrt(n), "DDPM-1000 samples the mixture (KS test at the 1% level)"
    assert err[20] < 1.6 / math.sqrt(n)


def test_dpm_solver_is_second_order_on_uneven_steps():
    """On Gaussian data the probability-flow ODE has a closed form: x_T maps to m + s (x_T - alpha_T m) / sqrt(
    alpha_T^2 s^2 + sigma_T^2). On steps even in time (uneven in log-SNR, so the multistep ratio r is not 1)
    DPM-Solver++(2M)'s error falls faster than first order as the steps double, and far below DDIM's (first
    order). 100 000 levels make the rounding of the grid to integer steps negligible."""
    schedule = NoiseSchedule("cosine", 100_000)
    m, s = 1.5, 0.3
    D = gaussian_mixture_denoiser(torch.ones(1), torch.tensor([[m]]), torch.tensor([[[s * s]]]), schedule)
    x_T = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    abar = schedule.alpha_bar(torch.tensor([schedule.timesteps])).double()
    exact = m + s * (x_T - abar.sqrt() * m) / (abar * s * s + 1 - abar).sqrt()

    def error(sampler, steps):
        return (sampler(D, x_T.clone(), sampling_grid(schedule, steps, "time")) - exact).abs().max().item()

    assert error(dpm_solver_pp, 20) > 3 * error(dpm_solver_pp, 40)
    assert error(dpm_solver_pp, 40) < 0.1 * error(ddim, 40)


def test_ddim_eta_one_is_ancestral_ddpm():
    mix, cdf = _bimodal(0.1)
    D = gaussian_mixture_denoiser(*mix, SCHEDULE)
    for steps in (1000, 37):
        noise = torch.randn(2000, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        grid = sampling_grid(SCHEDULE, steps)
        a = ddpm(D, noise, grid, generator=torch.Generator().manual_seed(4))
        b = ddim(D, noise, grid, eta=1.0, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)  # same noise draws, same path
    # and in distribution: it passes a KS test against the mixture (1% level)
    noise = torch.randn(5000, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x = ddim(D, noise, sampling_grid(SCHEDULE, 1000), eta=1.0, generator=torch.Generator().manual_seed(6))[:, 0]
    assert _ks(x, cdf) < 1.6 / math.sqrt(5000)


def test_ddim_eta_zero_is_deterministic_given_the_start_noise():
    D = gaussian_mixture_denoiser(ONE, MEAN, COV, SCHEDULE)
    grid = sampling_grid(SCHEDULE, 25)
    a = ddim(D, _noise(0), grid, generator=torch.Generator().manual_seed(1))  # noqa: E501
    b = ddim(D, _noise(0), grid, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, ddim(D, _noise(1), grid))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_each_plain_sampler_names_a_known_part_that_does_not_fit_its_state(name):
    """Called directly (not through ``sample``), a sampler names the shapes of a known mask or values that do not
    fit ``x`` rather than failing inside ``expand``."""
    grid, noise = sampling_grid(SCHEDULE, 3), _noise(0)
    fits, wrong = torch.ones(noise.shape, dtype=torch.bool), torch.ones(noise.shape[0], 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"known values of shape \(\d+, 3\) do not fit samples of shape"):
        SAMPLERS[name](lambda x, t: x, noise, grid, known=Known(fits, torch.zeros(wrong.shape)))
    with pytest.raises(ValueError, match=r"known mask of shape \(\d+, 3\) does not fit samples of shape"):
        SAMPLERS[name](lambda x, t: x, noise, grid, known=Known(wrong, torch.zeros(noise.shape)))
    with pytest.raises(TypeError, match=r"Known: values must be a torch tensor .* got numpy.ndarray"):
        Known(fits, np.zeros(noise.shape))  # an array a user read from a file, say


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_known_entries_are_kept_bit_exactly(name, dtype):
    D = gaussian_mixture_denoiser(ONE, MEAN, COV, SCHEDULE)
    g = torch.Generator().manual_seed(0)
    values = torch.randn(64, 2, generator=g, dtype=dtype)
    mask = torch.rand(64, 2, generator=g) < 0.5
    denoise = lambda x, t: D(x.double(), t).to(x.dtype)  # noqa: E731
    out = sample(denoise, (64, 2), SCHEDULE, sampler=name, steps=15, known=Known(mask, values),
                 generator=torch.Generator().manual_seed(1), dtype=dtype)
    assert torch.equal(out[mask], values[mask])
    assert not torch.equal(out[~mask], values[~mask])
    # a broadcast mask: the first coordinate of every sample is known
    out = sample(denoise, (64, 2), SCHEDULE, sampler=name, steps=15,
                 known=Known(torch.tensor([True, False]), values), generator=torch.Generator().manual_seed(1),
                 dtype=dtype)
    assert torch.equal(out[:, 0], values[:, 0])


@pytest.mark.parametrize("spacing", SPACINGS)
def test_grids_are_strictly_decreasing_from_T_to_clean(spacing):
    for steps in (1, 2, 5, 20, 200, 999, 1000):
        grid = sampling_grid(SCHEDULE, steps, spacing)
        assert grid.steps == steps and grid.t[0] == 1.0 and grid.t[-1] == 0.0 and grid.alpha_bar[-1] == 1.0
        assert (grid.t[1:] < grid.t[:-1]).all()
    grid = sampling_grid(SCHEDULE, 20, spacing)
    log_snr = torch.log(grid.alpha_bar) - torch.log1p(-grid.alpha_bar)
    if spacing == "log_snr":  # evenly spaced between the clip level and step 1, up to integer rounding
        gaps = log_snr[2:-1].diff()
        assert gaps.max() < 1.5 * gaps.min() + 0.05


@pytest.mark.parametrize("spacing", ["log_snr", "karras"])
def test_grid_levels_are_the_nearest_steps_to_their_closed_form_targets(spacing):
    """Between step 1 and the level where sigma/alpha = 80, the interior levels are evenly spaced in log-SNR, or
    (Karras et al.) in (sigma/alpha)^(1/7): each chosen step is the step nearest its target, computed here from
    the schedule's alpha_bar alone."""
    steps = 10
    abar = SCHEDULE.alpha_bar(torch.arange(1, SCHEDULE.timesteps + 1)).double()
    log_s = 0.5 * (torch.log1p(-abar) - torch.log(abar))  # log(sigma / alpha) at steps 1..T, increasing
    lo, hi = float(log_s[0]), min(float(log_s[-1]), math.log(80.0))
    u = torch.linspace(0, 1, steps, dtype=torch.float64)[1:]
    if spacing == "log_snr":
        target = hi + u * (lo - hi)
    else:
        rho = 7.0
        target = rho * torch.log(math.exp(hi / rho) + u * (math.exp(lo / rho) - math.exp(hi / rho)))
    nearest = (log_s[None, :] - target[:, None]).abs().argmin(1) + 1
    grid = sampling_grid(SCHEDULE, steps, spacing)
    chosen = torch.round(grid.t * SCHEDULE.timesteps).long()
    assert chosen[0] == SCHEDULE.timesteps and chosen[-1] == 0
    assert torch.equal(chosen[1:-1], nearest), (chosen, nearest)


def test_grid_and_argument_errors():
    with pytest.raises(ValueError, match=r"\[1, 1000\]"):
        sampling_grid(SCHEDULE, 1001)
    with pytest.raises(ValueError, match="unknown grid spacing"):
        sampling_grid(SCHEDULE, 10, "cubic")
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(lambda x, t: x, (2, 2), SCHEDULE, sampler="euler")
    with pytest.raises(ValueError, match="resample=0: .* an integer >= 1"):
        ddpm(lambda x, t: x, torch.zeros(2, 2), sampling_grid(SCHEDULE, 4), resample=0)


def test_resampling_moves_replacement_inpainting_toward_the_true_conditional():
    """Imposing the noised known part at every step (replacement) does not sample p(x2 | x1) exactly, however
    many steps; RePaint's resampling corrects most of it. Gaussian data with correlation 0.9, x1 = 1.2 known."""
    cov = torch.tensor([[[0.5, 0.45], [0.45, 0.5]]], dtype=torch.float64)
    D = gaussian_mixture_denoiser(ONE, MEAN, cov, SCHEDULE)
    true_mean = float(MEAN[0, 1] + cov[0, 1, 0] / cov[0, 0, 0] * (1.2 - MEAN[0, 0]))  # 0.33
    known = Known(torch.tensor([True, False]), torch.tensor([[1.2, 0.0]], dtype=torch.float64))
    error = {r: abs(float(_run(ddpm, 50, D, known=known, resample=r)[:, 1].mean()) - true_mean) for r in (1, 10)}
    # measured: replacement alone 0.20 off (0.13 against 0.33), with 10 passes per step 0.014; sampling error ~0.003
    assert error[1] > 0.15 and error[10] < 0.05, error


def test_benchmark_sampler_setting_parses_and_names_the_choices():
    assert sampler_setting("ddim:50") == ("ddim", 50)
    for bad in ["ddim", "nope:5", "ddim:0", "ddim:x"]:
        with pytest.raises(argparse.ArgumentTypeError, match="SAMPLER:STEPS with SAMPLER one of"):
            sampler_setting(bad)


@pytest.mark.parametrize("sampler,setting", [("dpm_solver_pp", {"eta": 0.5}), ("ddpm", {"eta": 1.0}),
                                             ("ddim", {"resample": 2}), ("dpm_solver_pp", {"resample": 3})])
def test_a_setting_the_sampler_never_uses_is_an_error(sampler, setting):
    """Dropping eta or resample silently made a user believe it acted."""
    (name,) = setting
    with pytest.raises(ValueError, match=f"{name}=.* only applies to the {'ddim' if name == 'eta' else 'ddpm'}"):
        sample(lambda x, t: x, (2, 2), SCHEDULE, sampler=sampler, steps=3, **setting)


def test_resample_without_a_known_part_is_valid_and_takes_each_step_once():
    calls = []
    sample(lambda x, t: calls.append(1) or x, (2, 2), SCHEDULE, sampler="ddpm", steps=3, resample=2)
    assert len(calls) == 3


@pytest.mark.parametrize("sampler,steps", [("ddim", 50), ("dpm_solver_pp", 20)])
def test_temperature_scales_a_deterministic_samplers_spread_about_the_mean(sampler, steps):
    """Gaussian data: the probability-flow map is affine, so x_T scaled by tau gives mean + tau * spread."""
    D = gaussian_mixture_denoiser(ONE, MEAN, COV, SCHEDULE)
    x = sample(D, (N, 2), SCHEDULE, sampler=sampler, steps=steps, temperature=0.5, dtype=torch.float64,
               generator=torch.Generator().manual_seed(0))
    assert (x.mean(0) - MEAN[0]).abs().max() < 0.01, x.mean(0)
    assert (torch.cov(x.T) - 0.25 * COV[0]).abs().max() < 0.01, torch.cov(x.T)


@pytest.mark.parametrize("sampler,kw", [("ddpm", {}), ("ddim", {}), ("ddim", {"eta": 1.0}), ("dpm_solver_pp", {})])
def test_temperature_zero_gives_the_mean_of_gaussian_data(sampler, kw):
    D = gaussian_mixture_denoiser(ONE, MEAN, COV, SCHEDULE)
    x = sample(D, (8, 2), SCHEDULE, sampler=sampler, steps=50, temperature=0.0, dtype=torch.float64,
               generator=torch.Generator().manual_seed(0), **kw)
    assert (x - MEAN).abs().max() < 1e-4, x


def test_the_known_part_is_noised_to_the_marginal_of_its_level():
    """``Known.impose`` draws the known entries from q(x_t | x0) = N(sqrt(abar) x0, (1 - abar) I), the rest kept."""
    x0 = torch.tensor([2.0, -1.0], dtype=torch.float64)
    known = Known(torch.tensor([True, False]), x0)
    x = torch.full((200_000, 2), 7.0, dtype=torch.float64)
    out = known.impose(x, torch.tensor(0.25, dtype=torch.float64), torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 1], x[:, 1])
    assert abs(out[:, 0].mean().item() - 0.5 * 2.0) < 0.01 and abs(out[:, 0].var().item() - 0.75) < 0.01
    assert torch.equal(known.impose(x, torch.tensor(0.25, dtype=torch.float64), torch.Generator().manual_seed(0)),
                       out)  # drawn from the generator given
    assert torch.equal(known.impose(x, torch.tensor(1.0), None)[:, 0], x0[0].expand(len(x)))


def test_temperature_keeps_the_known_part_and_rejects_a_negative_value():
    D = gaussian_mixture_denoiser(ONE, MEAN, COV, SCHEDULE)
    values = torch.randn(4, 2, dtype=torch.float64)
    known = Known(torch.tensor([[True, False]]), values)
    x = sample(D, (4, 2), SCHEDULE, sampler="ddpm", steps=20, temperature=0.3, known=known, dtype=torch.float64)
    assert torch.equal(x[:, 0], values[:, 0])
    for bad in (-0.5, math.inf):  # (infinity gave NaN samples)
        with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
            sample(D, (4, 2), SCHEDULE, temperature=bad)
    assert not is_whole(torch.tensor([5])) and is_whole(torch.tensor(5))  # (a 1-element tensor failed in linspace)


def test_a_staggered_dpm_solver_takes_each_independent_items_own_path():
    """Gaussian data's exact denoiser treats every sample alone: started late or not, each follows the unstaggered
    solver's path to the bit, and known items (clean throughout) come out as their values."""
    denoiser = gaussian_mixture_denoiser(ONE, MEAN, COV, SCHEDULE)
    grid = sampling_grid(SCHEDULE, 12, "log_snr")
    delay = torch.randint(0, 9, (N,), generator=torch.Generator().manual_seed(3))
    plain = dpm_solver_pp(denoiser, _noise(), grid)
    assert torch.equal(dpm_solver_pp(denoiser, _noise(), grid, delay=delay), plain)
    mask = (torch.arange(N) % 3 == 0)[:, None]
    values = torch.full((N, 2), 7.0, dtype=torch.float64)
    out = dpm_solver_pp(denoiser, _noise(), grid, delay=delay, known=Known(mask, values))
    assert torch.equal(out[mask[:, 0]], values[mask[:, 0]]) and torch.equal(out[~mask[:, 0]], plain[~mask[:, 0]])


def test_a_staggered_item_waits_its_delay_and_a_known_one_is_seen_clean():
    grid = sampling_grid(SCHEDULE, 5, "log_snr")
    seen = []

    def spy(x, t):
        seen.append(t.clone())
        return torch.zeros_like(x)

    delay = torch.tensor([[0, 2, 5, 0]])
    known = Known(torch.tensor([[False, False, False, True]])[..., None], torch.ones(1, 4, 3))
    out = dpm_solver_pp(spy, torch.randn(1, 4, 3), grid, delay=delay, known=known)
    assert len(seen) == 5 + 5  # the last item finishes 5 steps after the first
    for n, t in enumerate(seen):
        expect = [float(grid.t[min(max(n - d, 0), 5)]) for d in (0, 2, 5)] + [0.0]
        assert t.shape == (1, 4) and t[0].tolist() == pytest.approx(expect), n
    assert torch.equal(out[0, 3], torch.ones(3)) and torch.equal(out[0, :3], torch.zeros(3, 3))


def test_only_dpm_solver_takes_a_delay():
    for sampler in ("ddpm", "ddim"):
        with pytest.raises(ValueError, match="dpm_solver_pp"):
            sample(lambda x, t: x, (2, 3), SCHEDULE, sampler=sampler, steps=3, delay=torch.zeros(2, dtype=torch.long))


def test_a_grid_started_at_a_time_is_its_tail_from_the_first_level_not_above_it():
    grid = sampling_grid(SCHEDULE, 10, "time")  # t = 1, 0.9, ..., 0.1, 0
    tail = grid.starting_at(0.35)
    assert tail.t.tolist() == pytest.approx([0.3, 0.2, 0.1, 0.0]) and torch.equal(tail.alpha_bar, grid.alpha_bar[7:])
    assert torch.equal(grid.starting_at(1.0).t, grid.t) and tail.steps == 3
    assert grid.starting_at(0.05).t.tolist() == pytest.approx([0.1, 0.0])  # below every noisy level: the last step


def test_a_sampler_started_from_a_guess_first_sees_it_noised_to_the_tails_first_level():
    """On a coarse grid (10 steps, start 0.35: first level t = 0.3) at temperature 0 the first denoiser call gets
    exactly ``sqrt(alpha_bar(0.3)) init`` and ``t = 0.3``, for every sampler."""
    init = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    level = sampling_grid(SCHEDULE, 10, "time").starting_at(0.35)
    for sampler in SAMPLERS:
        seen = []

        def spy(x, t):
            seen.append((x.clone(), t.clone()))
            return torch.zeros_like(x)

        sample(spy, (4, 2), SCHEDULE, sampler=sampler, steps=10, spacing="time", init=init, start=0.35,
               temperature=0.0, dtype=torch.float64)
        x, t = seen[0]
        assert float(level.t[0]) == pytest.approx(0.3) and t.tolist() == pytest.approx([0.3] * 4), sampler
        assert torch.allclose(x, float(level.alpha_bar[0]) ** 0.5 * init, rtol=0, atol=1e-12), sampler
        assert len(seen) == 3, sampler  # levels 0.3, 0.2, 0.1, then clean


def test_started_from_a_noised_guess_ddpm_samples_gaussian_datas_posterior_given_that_level():
    """SDEdit with the exact denoiser: from ``init`` noised to level a (``x_a = sqrt(a) init + sqrt(1 - a) z``),
    ancestral steps sample ``p(x0 | x_a)``, so over the draws of ``z`` the samples have mean
    ``mu + sqrt(a) K (init - mu)`` and covariance ``Sigma - sqrt(a) K Sigma + (1 - a) K K^T``, with
    ``K = sqrt(a) Sigma (a Sigma + (1 - a) I)^-1``: a closed form, not the data's own mean and covariance."""
    init = torch.tensor([1.5, 1.0], dtype=torch.float64)
    a = float(sampling_grid(SCHEDULE, 1000, "time").starting_at(0.3).alpha_bar[0])
    sigma, eye = COV[0], torch.eye(2, dtype=torch.float64)
    gain = a**0.5 * sigma @ torch.linalg.inv(a * sigma + (1 - a) * eye)
    mean = MEAN[0] + a**0.5 * gain @ (init - MEAN[0])
    cov = sigma - a**0.5 * gain @ sigma + (1 - a) * gain @ gain.T
    x = sample(gaussian_mixture_denoiser(ONE, MEAN, COV, SCHEDULE), (N, 2), SCHEDULE, sampler="ddpm", steps=1000,
               init=init.expand(N, 2), start=0.3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert (mean - MEAN[0]).abs().max() > 0.2 and (cov - COV[0]).abs().max() > 0.1  # far from the data's own
    assert (x.mean(0) - mean).abs().max() < 0.02, (x.mean(0), mean)
    assert (torch.cov(x.T) - cov).abs().max() < 0.02, (torch.cov(x.T), cov)


@pytest.mark.parametrize("kw,match", [
    ({"start": 0.5}, "go together"), ({"init": torch.zeros(4, 2)}, "go together"),
    ({"init": torch.zeros(4, 2), "start": 0.0}, r"\(0, 1\]"), ({"init": torch.zeros(4, 2), "start": 1.5}, r"\(0, 1\]"),
    ({"init": torch.zeros(3, 2), "start": 0.5}, "init of shape"),
    ({"init": torch.zeros(4, 2), "start": 0.5, "delay": torch.zeros(4, dtype=torch.long)}, "delay"),
])
def test_a_start_below_one_needs_an_init_of_the_samples_shape(kw, match):
    sampler = "dpm_solver_pp" if "delay" in kw else "ddpm"
    with pytest.raises(ValueError, match=match):
        sample(lambda x, t: x, (4, 2), SCHEDULE, sampler=sampler, steps=10, **kw)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_a_denoiser_of_the_wrong_shape_is_refused_not_broadcast(sampler):
    """A network that drops a dimension would broadcast into samples that look right in shape (every column equal)."""
    with pytest.raises(ValueError, match=r"the denoiser returned shape \(4, 1\) for x_t of shape \(4, 2\)"):
        sample(lambda x, t: x[:, :1], (4, 2), SCHEDULE, sampler=sampler, steps=3)
    if sampler == "dpm_solver_pp":  # the staggered solver too
        with pytest.raises(ValueError, match=r"the denoiser returned shape \(4, 1\) for x_t of shape \(4, 2\)"):
            sample(lambda x, t: x[:, :1], (4, 2), SCHEDULE, sampler=sampler, steps=3, delay=torch.tensor([0, 1, 0, 2]))


def test_ddim_called_directly_checks_its_eta():
    grid, noise = sampling_grid(SCHEDULE, 5), torch.randn(4, 2)
    for eta in (-1.0, 5.0):
        with pytest.raises(ValueError, match=rf"eta={eta}: DDIM's eta lies in \[0, 1\]"):
            ddim(lambda x, t: x, noise, grid, eta=eta)
