"""The core on meta and a real device: samplers, diffusion loss and bound, guidance, toy2d.

Every test takes the ``device`` fixture (tests/conftest.py): ``meta`` always, where a tensor made on
the CPU by mistake meets a meta tensor and raises; ``cuda`` (or ``$MULTIGEN_TEST_DEVICE``) when present, else the CPU,
where the same code runs for real. A generator is made on the device wherever one is passed, as a
user sampling on a GPU does.
"""

from __future__ import annotations

import pytest
import torch

from multigen.config import load_config
from multigen.diffusion import GaussianDiffusion
from multigen.guidance import classifier_free_guidance, drop_condition
from multigen.samplers import Known, sample
from multigen.schedules import NoiseSchedule
from multigen.toy2d import Toy2D, Toy2DConfig

from .conftest import device_generator

SCHEDULE = NoiseSchedule("cosine", 100)


def _denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    assert t.device == x.device and t.shape == x.shape[:1], (t.device, t.shape)
    return 0.5 * x * t[:, None, None]


def _known(device: torch.device) -> Known:
    mask = torch.zeros(3, 4, 2, dtype=torch.bool, device=device)
    mask[:, :2] = True
    return Known(mask, torch.ones(3, 4, 2, device=device))


@pytest.mark.parametrize(
    "sampler,kw",
    [("ddpm", {}), ("ddpm", {"resample": 2}), ("ddim", {}), ("ddim", {"eta": 1.0}), ("dpm_solver_pp", {})],
)
@pytest.mark.parametrize("with_known", [False, True], ids=["free", "known"])
def test_core_samplers_keep_to_the_device(device, sampler, kw, with_known):
    known = _known(device) if with_known else None
    out = sample(_denoiser, (3, 4, 2), SCHEDULE, sampler=sampler, steps=5, known=known,
                 generator=device_generator(device), device=device, **kw)
    assert out.device == device and out.shape == (3, 4, 2)
    if device.type != "meta" and known is not None:
        assert torch.equal(out[known.mask], known.values[known.mask])


def test_staggered_dpm_solver_keeps_to_the_device(device):
    delay = torch.tensor([0, 1, 3, 0], device=device).expand(3, 4)  # items (3, 4) of size 2, each with a time
    denoiser = lambda x, t: 0.5 * x * t[..., None]  # noqa: E731
    known = _known(device)
    out = sample(denoiser, (3, 4, 2), SCHEDULE, steps=5, known=known, delay=delay, device=device)
    assert out.device == device and out.shape == (3, 4, 2)
    if device.type != "meta":
        assert torch.equal(out[known.mask], known.values[known.mask])


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
@pytest.mark.parametrize("weighting", ["uniform", "snr", "min_snr"])
def test_diffusion_loss_and_denoiser_keep_to_the_device(device, param, weighting):
    d = GaussianDiffusion(SCHEDULE, param, weighting, clip_x0=1.0)
    x0 = torch.randn(3, 4, 2, device=device)
    mask = torch.ones(3, 4, 1, device=device)
    loss = d.loss(lambda x, t: x * t[:, None, None], x0, loss_mask=mask)
    assert loss.device == device and loss.shape == (3,)
    x0_hat = d.denoiser(lambda x, t: x)(x0, torch.full((3,), 0.5, device=device))
    assert x0_hat.device == device


@pytest.mark.parametrize("decoder", ["gaussian", "discretized"])
def test_variational_bound_keeps_to_the_device(device, decoder):
    d = GaussianDiffusion(NoiseSchedule("cosine", 10), "x0")
    out = d.variational_bound(lambda x, t: x.clamp(-1, 1), torch.rand(2, 5, device=device) * 2 - 1, decoder=decoder)
    assert all(v.device == device and v.shape == (2,) for v in out.values())


def test_guidance_keeps_to_the_device(device):
    cond = torch.randn(3, 5, device=device)
    null = torch.zeros(5)  # a CPU null embedding is moved to the condition's device
    dropped = drop_condition(cond, null, 0.5, generator=device_generator(device))
    guided = classifier_free_guidance(lambda x, t, c: x + c.mean(1)[:, None, None], dropped, null, 2.0)
    out = sample(guided, (3, 4, 2), SCHEDULE, sampler="ddim", steps=3, device=device)
    assert out.device == device


def test_toy2d_trains_and_samples_on_the_device(device, tmp_path):
    cfg = load_config(Toy2DConfig, overrides=[f"train.output_dir={tmp_path}", "model.hidden=16", "sample.steps=3",
                                              "sample.sampler=ddpm"])
    domain = Toy2D(cfg)
    model = domain.build_model().to(device)
    loss = domain.training_loss(model, torch.randn(8, 2, device=device))
    assert loss.device == device and loss.shape == ()
    out = domain.sample(model, 4, generator=device_generator(device))
    assert out.device == device and out.shape == (4, 2)
