"""Classifier-free guidance."""

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


def test_drop_condition_rate():
    cond = torch.ones(20000, 2)
    out = drop_condition(cond, torch.zeros(2), 0.2, generator=torch.Generator().manual_seed(0))
    dropped = (out == 0).all(1).float().mean().item()
    assert abs(dropped - 0.2) < 0.015
    assert ((out == 0).all(1) | (out == 1).all(1)).all(), "whole samples are dropped"
    assert drop_condition(cond, torch.zeros(2), 0.0) is cond
