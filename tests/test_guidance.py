"""Classifier-free guidance."""

import pytest
import torch

from multigen.guidance import classifier_free_guidance, drop_condition


def cond_denoiser(x, t, cond):
    return x * 0.5 + cond * t[:, None]


def test_scale_one_is_the_conditional_model_and_scale_s_extrapolates():
    x, t = torch.randn(4, 3), torch.rand(4)
    cond, null = torch.randn(4, 3), torch.zeros(3)
    torch.testing.assert_close(classifier_free_guidance(cond_denoiser, cond, null, 1.0)(x, t), cond_denoiser(x, t, cond))
    d_c, d_u = cond_denoiser(x, t, cond), cond_denoiser(x, t, null.expand(4, 3))
    for s in (0.0, 3.0):
        torch.testing.assert_close(classifier_free_guidance(cond_denoiser, cond, null, s)(x, t), d_u + s * (d_c - d_u))


def test_guidance_limited_to_an_interval_of_times_leaves_the_other_samples_conditional():
    """Inside ``[lo, hi]`` the guided estimate, outside it the conditional one (per sample: the times may differ);
    a call whose times all lie outside runs the conditional branch alone; a reversed interval is an error."""
    calls = []

    def counting(x, t, cond):
        calls.append(len(x))
        return cond_denoiser(x, t, cond)

    x, t = torch.randn(4, 3), torch.tensor([0.1, 0.3, 0.5, 0.9])
    cond, null = torch.randn(4, 3), torch.zeros(3)
    full, plain = classifier_free_guidance(cond_denoiser, cond, null, 3.0)(x, t), cond_denoiser(x, t, cond)
    limited = classifier_free_guidance(counting, cond, null, 3.0, interval=(0.3, 0.5))
    out, inside = limited(x, t), torch.tensor([False, True, True, False])
    torch.testing.assert_close(out[inside], full[inside])
    torch.testing.assert_close(out[~inside], plain[~inside])
    assert not torch.allclose(full[~inside], plain[~inside]), "guidance acts at those times when not limited"
    assert calls == [8]
    torch.testing.assert_close(limited(x, torch.full((4,), 0.7)), cond_denoiser(x, torch.full((4,), 0.7), cond))
    assert calls == [8, 4], "no unconditional branch when no time is inside"
    whole = classifier_free_guidance(cond_denoiser, cond, null, 3.0, interval=(0.0, 1.0))
    torch.testing.assert_close(whole(x, t), full)
    with pytest.raises(ValueError, match="need 0 <= lo <= hi <= 1"):
        classifier_free_guidance(cond_denoiser, cond, null, 3.0, interval=(0.6, 0.2))


def test_drop_condition_rate():
    cond = torch.ones(20000, 2)
    out = drop_condition(cond, torch.zeros(2), 0.2, generator=torch.Generator().manual_seed(0))
    dropped = (out == 0).all(1).float().mean().item()
    assert abs(dropped - 0.2) < 0.015
    assert ((out == 0).all(1) | (out == 1).all(1)).all(), "whole samples are dropped"
    assert drop_condition(cond, torch.zeros(2), 0.0) is cond
    assert torch.equal(drop_condition(cond, torch.zeros(2), 1.0), torch.zeros_like(cond))
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"p is a probability in \[0, 1\], got"):
            drop_condition(cond, torch.zeros(2), p)


def _gaussian_denoiser(mean: torch.Tensor, var: float, alpha: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The exact x0 estimate for data ``N(mean, var I)`` from ``x_t = alpha x0 + sqrt(1 - alpha^2) noise``."""
    a = alpha[:, None]
    return mean + a * var / (a**2 * var + 1 - a**2) * (x - a * mean)


def test_a_null_branch_that_learnt_moved_data_is_moved_back_by_its_offset():
    """A conditional branch that learnt N(m1, v1) and a null branch that learnt N(m0 + c, v0), guided with
    ``null_offset=c``, equal the guidance of the exact denoisers of N(m1, v1) and N(m0, v0) at every scale."""
    g = torch.Generator().manual_seed(0)
    m1, m0, c = (torch.randn(6, generator=g) for _ in range(3))
    alpha_of = lambda t: torch.cos(t * torch.pi / 2)  # noqa: E731
    x, t = torch.randn(5, 6, generator=g) * 2, torch.rand(5, generator=g)

    def denoiser(x, t, cond):  # cond: 1 = conditional, 0 = null
        return torch.where(cond[:, None] > 0, _gaussian_denoiser(m1, 0.3, alpha_of(t), x),
                           _gaussian_denoiser(m0 + c, 1.7, alpha_of(t), x))

    d_c, d_u = _gaussian_denoiser(m1, 0.3, alpha_of(t), x), _gaussian_denoiser(m0, 1.7, alpha_of(t), x)
    cond, null = torch.ones(5), torch.zeros(())
    for s in (0.0, 1.0, 2.5):
        guided = classifier_free_guidance(denoiser, cond, null, s, null_offset=c.expand(5, 6), alpha=alpha_of)
        torch.testing.assert_close(guided(x, t), d_u + s * (d_c - d_u))
    assert not torch.allclose(classifier_free_guidance(denoiser, cond, null, 0.0)(x, t), d_u), "the offset matters"
    with pytest.raises(ValueError, match="null_offset needs the schedule's alpha"):
        classifier_free_guidance(denoiser, cond, null, 2.0, null_offset=c)


def test_a_condition_for_another_batch_is_named():
    """``cond`` holds one condition a sample: one for another batch size was concatenated with the null ones and
    reached the user's denoiser as a batch of the wrong size (its own error, or a silent broadcast of one
    condition to every sample); it is a ValueError naming both sizes, at every scale."""
    def den(x, t, c):
        return x + c.sum(-1, keepdim=True)

    x, t = torch.randn(4, 2), torch.rand(4)
    for scale in (1.0, 2.0):
        guided = classifier_free_guidance(den, torch.ones(1, 3), torch.zeros(3), scale)
        with pytest.raises(ValueError, match=r"cond holds 1 conditions for a batch of 4 samples"):
            guided(x, t)
    assert classifier_free_guidance(den, torch.ones(4, 3), torch.zeros(3), 2.0)(x, t).shape == (4, 2)
