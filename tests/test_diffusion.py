"""Gaussian diffusion: parameterisations, posterior, loss weighting, masks and the variational bound."""

import itertools
import math

import pytest
import torch

from multigen.diffusion import (
    PARAMETERIZATIONS,
    EstimateHistory,
    GaussianDiffusion,
    _discretized_gaussian_log_likelihood,
    convert,
    expand_like,
    gaussian_posterior,
)
from multigen.schedules import NoiseSchedule


@pytest.mark.parametrize("src,dst", list(itertools.permutations(PARAMETERIZATIONS, 2)))
def test_conversions_round_trip_and_match_definitions(src, dst):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64)
    abar = torch.rand(8, 1, generator=g, dtype=torch.float64) * 0.98 + 0.01
    a, s = abar.sqrt(), (1 - abar).sqrt()
    x_t = a * x0 + s * eps
    truth = {"eps": eps, "x0": x0, "v": a * eps - s * x0}
    torch.testing.assert_close(convert(truth[src], x_t, a, s, src, dst), truth[dst])
    torch.testing.assert_close(convert(convert(truth[src], x_t, a, s, src, dst), x_t, a, s, dst, src), truth[src])


def test_posterior_is_bayes_rule_for_gaussians():
    """q(x_s | x_t, x0) ∝ q(x_t | x_s) q(x_s | x0), multiplied out as Gaussian densities."""
    sched = NoiseSchedule("linear", 100, beta_end=0.14)
    x0, x_t = torch.tensor([0.7], dtype=torch.float64), torch.tensor([-0.3], dtype=torch.float64)
    for s, t in [(0, 1), (3, 4), (10, 60), (50, 100)]:
        abar_s, abar_t = sched.alpha_bar(torch.tensor([s])), sched.alpha_bar(torch.tensor([t]))
        mean, var = gaussian_posterior(x0, x_t, abar_s, abar_t)
        a_ts, v_ts = (abar_t / abar_s).sqrt(), 1 - abar_t / abar_s  # x_t | x_s
        m0, v0 = abar_s.sqrt() * x0, 1 - abar_s  # x_s | x0
        if s == 0:
            assert mean.item() == pytest.approx(x0.item()) and var.item() == 0
            continue
        prec = a_ts**2 / v_ts + 1 / v0
        torch.testing.assert_close(var, 1 / prec)
        torch.testing.assert_close(mean, (a_ts * x_t / v_ts + m0 / v0) / prec)


def test_q_sample_moments():
    d = GaussianDiffusion(NoiseSchedule("cosine", 1000))
    x0 = torch.full((200000, 1), 0.5)
    steps = torch.full((200000,), 400)
    xt = d.q_sample(x0, steps, torch.randn_like(x0))
    abar = d.schedule.alpha_bar(torch.tensor(400)).item()
    assert xt.mean().item() == pytest.approx(0.5 * math.sqrt(abar), abs=0.01)
    assert xt.var().item() == pytest.approx(1 - abar, abs=0.01)


def _loss_with_model_error(param, weighting, steps):
    """Loss of a model whose x0 estimate is off by exactly 0.1 everywhere."""
    d = GaussianDiffusion(NoiseSchedule("cosine", 1000), param, weighting, min_snr_gamma=5.0)
    x0 = torch.randn(len(steps), 4, dtype=torch.float64)
    noise = torch.randn_like(x0)

    def model(x_t, t):
        a, s = d.coefficients(steps, x_t)
        return convert(x0 + 0.1, x_t, a, s, "x0", param)

    return d, d.loss(model, x0, steps=steps, noise=noise)


@pytest.mark.parametrize("param", PARAMETERIZATIONS)
def test_loss_weightings_in_x0_terms(param):
    steps = torch.tensor([10, 200, 500, 900])
    d, _ = _loss_with_model_error(param, "uniform", steps)
    snr = torch.exp(d.schedule.log_snr(steps))
    x0_mse = 0.01
    _, snr_loss = _loss_with_model_error(param, "snr", steps)
    torch.testing.assert_close(snr_loss, snr * x0_mse, check_dtype=False, rtol=1e-4, atol=0)
    _, min_snr_loss = _loss_with_model_error(param, "min_snr", steps)
    torch.testing.assert_close(min_snr_loss, snr.clamp(max=5.0) * x0_mse, check_dtype=False, rtol=1e-4, atol=0)
    _, uniform = _loss_with_model_error(param, "uniform", steps)
    native = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}[param]
    torch.testing.assert_close(uniform, native * x0_mse, check_dtype=False, rtol=1e-4, atol=0)


def test_stratified_steps_put_one_step_in_each_stratum_and_are_uniform_overall():
    d = GaussianDiffusion(NoiseSchedule("cosine", 1000), time_sampling="stratified")
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([d.random_steps(8, torch.device("cpu"), generator=g) for _ in range(4000)])
    assert draws.min() >= 1 and draws.max() <= 1000
    strata = (draws - 1) // 125  # {1..1000} in 8 strata of 125 steps
    assert (strata == torch.arange(8)).all()
    counts = torch.bincount(draws.flatten() - 1, minlength=1000).reshape(10, 100).sum(1).double()
    assert ((counts - 3200).abs() < 4 * 3200**0.5).all()  # each tenth of the steps: 3 200 of 32 000 draws
    with pytest.raises(ValueError, match="time sampling"):
        GaussianDiffusion(NoiseSchedule("cosine", 10), time_sampling="sobol")


def test_uniform_steps_cover_every_step_equally():
    d = GaussianDiffusion(NoiseSchedule("cosine", 10))
    draws = d.random_steps(50_000, torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=12).double()
    assert counts[0] == 0 and counts[11] == 0  # steps 1..T only
    assert ((counts[1:11] - 5000).abs() < 4 * 5000**0.5).all(), counts


def test_the_denoiser_reads_the_samplers_float_times_as_their_integer_steps():
    """Samplers pass ``model_time(step)`` = step / T in float32; ``steps_of`` must give back the step exactly (a
    float32 i / T can fall just below i / T, so flooring it would use the level below)."""
    for T in (10, 1000, 4000):
        d = GaussianDiffusion(NoiseSchedule("cosine", T))
        steps = torch.arange(T + 1)
        assert torch.equal(d.steps_of(d.schedule.model_time(steps)), steps)


def test_loss_mask_ignores_masked_elements():
    d = GaussianDiffusion(NoiseSchedule("cosine", 100), "eps")
    x0 = torch.randn(4, 6)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, :3] = True
    steps, noise = torch.tensor([5, 20, 50, 90]), torch.randn(4, 6)
    good = lambda x, t: noise.clone()  # noqa: E731  perfect eps everywhere

    def bad_outside_mask(x, t):
        out = noise.clone()
        out[:, 3:] += 100.0
        return out

    assert d.loss(good, x0, mask, steps, noise).abs().max() == 0
    assert d.loss(bad_outside_mask, x0, mask, steps, noise).abs().max() == 0
    assert d.loss(bad_outside_mask, x0, None, steps, noise).min() > 1.0


def _gaussian_x0_model(d, mu, var):
    """Exact x0 predictor (in d's parameterisation) for data N(mu, var) per dimension."""

    def model(x_t, t):
        steps = torch.round(t.double() * d.timesteps).long()
        a, s = d.coefficients(steps, x_t)
        x0 = mu + a * var / (a**2 * var + s**2) * (x_t - a * mu)
        return convert(x0, x_t, a, s, "x0", d.parameterization)

    return model


def _expected_bound(d, mu, var, x0):
    """The bound's expectation over every x_t given x0, in closed form (all terms are Gaussian)."""
    sched, T = d.schedule, d.timesteps
    abar = sched.alpha_bars
    total = 0.5 * (abar[T] * x0**2 + (1 - abar[T]) - 1 - torch.log(1 - abar[T]))  # prior, exact
    for t in range(1, T + 1):
        a, s = abar[t].sqrt(), (1 - abar[t]).sqrt()
        k = a * var / (a**2 * var + s**2)  # x0_hat = mu + k (x_t - a mu)
        sq_err = (1 - k * a) ** 2 * (x0 - mu) ** 2 + (k * s) ** 2  # E[(x0 - x0_hat)^2 | x0]
        if t == 1:
            beta1 = 1 - abar[1]
            total = total + 0.5 * torch.log(2 * math.pi * beta1) + sq_err / (2 * beta1)
        else:
            beta_t = 1 - abar[t] / abar[t - 1]
            c0 = abar[t - 1].sqrt() * beta_t / (1 - abar[t])
            post_var = (1 - abar[t - 1]) / (1 - abar[t]) * beta_t
            total = total + c0**2 * sq_err / (2 * post_var)
    return total.sum(1)


def test_variational_bound_matches_its_closed_form_expectation_and_bounds_the_nll():
    torch.manual_seed(0)
    mu, var = 0.3, 0.25
    d = GaussianDiffusion(NoiseSchedule("linear", 200, beta_start=5e-4, beta_end=0.1), "eps")
    x0 = mu + math.sqrt(var) * torch.randn(4000, 2, dtype=torch.float64)
    vb = d.variational_bound(_gaussian_x0_model(d, mu, var), x0)
    expected = _expected_bound(d, mu, var, x0)
    diff = vb["total"] - expected
    stderr = diff.std() / math.sqrt(len(diff))
    assert diff.mean().abs() < 4 * stderr + 1e-6, (diff.mean(), stderr)
    true_nll = (0.5 * (math.log(2 * math.pi * var) + (x0 - mu) ** 2 / var)).sum(1)
    gap = vb["total"] - true_nll  # the estimate of the bound, not only its closed form, lies above the NLL
    assert gap.mean() > 4 * gap.std() / math.sqrt(len(gap)), "a variational bound never beats the true NLL"
    for key in ("prior", "transitions", "decoder"):
        assert torch.isfinite(vb[key]).all()
    assert (vb["prior"] >= 0).all() and (vb["transitions"] >= 0).all()
    torch.testing.assert_close(vb["bits_per_dim"], vb["total"] / (2 * math.log(2)))
    worse = d.variational_bound(_gaussian_x0_model(d, mu + 0.5, var), x0)
    assert worse["total"].mean() > vb["total"].mean() + 0.5


def test_discretized_decoder_gives_probabilities():
    """Over the 256 bins of 8-bit data in [-1, 1] the decoder's probabilities sum to 1 (outer bins are open)."""
    bins = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, std in [(0.0, 0.1), (0.93, 0.02), (-1.4, 0.5), (0.3, 3.0)]:
        log_p = _discretized_gaussian_log_likelihood(bins, torch.tensor(mean), torch.tensor(std), 2 / 255)
        assert torch.logsumexp(log_p, 0).exp().item() == pytest.approx(1.0, abs=1e-9), (mean, std)
    # the bound's decoder term is that log-probability at the data
    d = GaussianDiffusion(NoiseSchedule("cosine", 50), "x0")
    x0 = bins[torch.randint(0, 256, (16, 3))]
    vb = d.variational_bound(lambda x, t: x0, x0, decoder="discretized")
    std = d.schedule.betas[0].sqrt()
    expected = -_discretized_gaussian_log_likelihood(x0, x0, std, 2 / 255).sum(1)
    torch.testing.assert_close(vb["decoder"], expected)


@pytest.mark.parametrize("param", ["x0", "v"])
def test_training_target_is_exact_at_pure_noise(param):
    """At t = T (alpha ~ 5e-5 on the cosine schedule) a float32 target derived from eps by dividing by
    alpha was off by 3e-3; the target is computed from x0 and the noise directly."""
    d = GaussianDiffusion(NoiseSchedule("cosine", 1000), param)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g)
    steps = torch.full((64,), 1000)
    a, s = (v.double() for v in d.coefficients(steps, x0.double()))
    exact = x0.double() if param == "x0" else a * noise.double() - s * x0.double()
    loss = d.loss(lambda x, t: exact.float(), x0, steps=steps, noise=noise)
    assert loss.max().item() < 1e-12, loss.max()


@pytest.mark.parametrize("weighting", ["uniform", "snr", "min_snr"])
def test_a_step_per_item_weights_each_item_by_its_own_step_and_step_zero_carries_no_loss(weighting):
    """Steps ``(B, N)`` for data ``(B, N, D)``: the per-sample loss is the mean of the items' own weighted losses, as
    if each item were a sample of its own; an item at step 0 (given clean) adds 0 and nothing non-finite."""
    d = GaussianDiffusion(NoiseSchedule("cosine", 100), "v", weighting)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 2, generator=g), torch.randn(3, 4, 2, generator=g)
    steps = torch.randint(1, 101, (3, 4), generator=g)
    model = lambda x, t: 0.5 * x * expand_like(t, x)  # noqa: E731
    per_item = d.loss(model, x0.flatten(0, 1)[:, None], steps=steps.flatten(), noise=noise.flatten(0, 1)[:, None])
    torch.testing.assert_close(d.loss(model, x0, steps=steps, noise=noise), per_item.view(3, 4).mean(1))
    steps[:, 0] = 0
    loss = d.loss(model, x0, loss_mask=(steps > 0)[..., None], steps=steps, noise=noise)
    expect = d.loss(model, x0[:, 1:], steps=steps[:, 1:], noise=noise[:, 1:])
    assert loss.isfinite().all()
    torch.testing.assert_close(loss, expect)


def test_estimate_history_fits_the_last_estimate_to_each_call():
    """Self-conditioning's memory: nothing before the first estimate; a call with fewer rows keeps the first ones
    (a guidance branch leaving), one with more gets zeros for the new rows (a branch joining)."""
    history, x = EstimateHistory(), torch.randn(4, 3)
    assert history.previous(x) is None
    history.update(x.requires_grad_())
    assert not history.previous(x).requires_grad and torch.equal(history.previous(x[:2]), x[:2])
    grown = history.previous(torch.zeros(6, 3))
    assert torch.equal(grown[:4], x) and torch.equal(grown[4:], torch.zeros(2, 3))


def test_a_network_output_of_the_wrong_shape_is_refused_in_training_and_sampling():
    d = GaussianDiffusion(NoiseSchedule("cosine", 100))
    drops_a_column = lambda x, t: x[:, :1]  # noqa: E731
    with pytest.raises(ValueError, match=r"the network returned shape \(8, 1\) for x_t of shape \(8, 2\)"):
        d.loss(drops_a_column, torch.randn(8, 2))
    with pytest.raises(ValueError, match=r"the network returned shape \(8, 1\) for x_t of shape \(8, 2\)"):
        d.denoiser(drops_a_column)(torch.randn(8, 2), torch.full((8,), 0.5))


def test_data_of_one_value_an_item_and_settings_that_ruin_training_or_sampling():
    """The loss of data (B,) was an IndexError (the samplers take it); min_snr_gamma <= 0 trained nothing or gave
    negative losses, clip_x0 <= 0 made every x0 one constant: refused."""
    schedule = NoiseSchedule("cosine", 100)
    diffusion = GaussianDiffusion(schedule, "eps")
    assert diffusion.loss(lambda x, t: x, torch.randn(8)).shape == (8,)
    assert diffusion.variational_bound(lambda x, t: x * 0, torch.randn(8))["total"].shape == (8,)
    for kwargs, says in ((dict(min_snr_gamma=0.0), "min_snr_gamma must be a finite number > 0"),
                         (dict(clip_x0=-1.0), "clip_x0 must be a finite number > 0")):
        with pytest.raises(ValueError, match=says):
            GaussianDiffusion(schedule, "eps", **kwargs)
