"""One sampling contract: ``Domain.sample(model, n, condition=None, known=None, generator=None, **settings)``
means the same in every domain, and a setting that cannot act is an error naming it."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch.utils.data import default_collate

from multigen.config import ConfigError, SampleConfig, load_config
from multigen.export import export_model, load_pretrained
from multigen.samplers import Known
from multigen.toy2d import Toy2D, Toy2DConfig
from pointcloud.domain import PointCloudConfig

SMALL = {
    "toy2d": ("multigen.toy2d:Toy2D", ["model.hidden=8"]),
    "video": ("video.domain:Video", ["data.frames=3", "data.size=8", "model.base_channels=8", "model.channel_mults=[1]",
                                     "model.head_channels=8", "model.attn_levels=[]", "diffusion.timesteps=20",
                                     "sample.steps=4", "eval.context=2"]),
    "pointcloud": ("pointcloud.domain:PointCloud", ["data.points=64", "model.width=0.25",
                                                    "model.voxel_resolution=0.25", "task.partial_points=10"]),
    "discrete": ("discrete.domain:Discrete", ["data.source=digits", "data.levels=4", "process.timesteps=8",
                                              "model.dim=16", "model.depth=1", "model.heads=1"]),
}


def _domain(name: str, *extra: str):
    from multigen.domain import get_domain

    path, overrides = SMALL[name]
    cls = get_domain(path)
    domain = cls(load_config(cls.config_class, overrides=[*overrides, *extra]))
    domain.fit()
    return domain


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_domain_names_an_unknown_setting_and_refuses_a_condition(name):
    domain = _domain(name)
    model = domain.build_model()
    with pytest.raises(TypeError, match=r"takes no setting 'stpes'; its settings are .*steps"):
        domain.sample(model, 1, stpes=3)
    # point clouds are class-conditional by default: a condition that is no class is the error there
    with pytest.raises(ValueError, match="takes no condition|condition: 1 class indices"):
        domain.sample(model, 1, condition=torch.zeros(1, 4))
    with pytest.raises(ConfigError, match="sample.steps: must be >= "):
        domain.sample_settings(steps=-1)
    for n in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=f"number of samples must be a positive integer, got {n!r}"):
            domain.sample(model, n)


@pytest.mark.parametrize("name", sorted(set(SMALL) - {"toy2d"}))
@pytest.mark.parametrize("first_pass", [True, False])
def test_every_parameter_takes_part_in_every_training_step(name, first_pass, monkeypatch):
    """DDP reduces every parameter's gradient on every step: none may be left out of a step, whichever way the
    self-conditioning coin falls (two processes whose coins differ would stall)."""
    monkeypatch.setattr("multigen.diffusion.host_coin", lambda p: first_pass)
    monkeypatch.setattr("discrete.model.host_coin", lambda p: first_pass)
    domain = _domain(name, *([] if name == "pointcloud" else ["model.self_condition=true"]))  # class-conditional
    model = domain.build_model().train()
    data = domain.build_dataset("train")
    batch = (domain.collate_fn or default_collate)([data[i] for i in range(2)])
    torch.manual_seed(0)
    domain.training_loss(model, batch).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_domain_samples_with_a_double_precision_network_in_double_precision(name):
    """A network cast to float64 samples in float64 (times come as float32: the embeddings take them in the
    network's dtype), known parts kept exactly; discrete ids are the same draw as the float32 network's."""
    domain = _domain(name)
    model = domain.build_model()
    shape = (2, *domain.sample_shape())
    known = None
    if name in ("video", "pointcloud"):
        mask = torch.zeros(shape[:2], dtype=torch.bool)
        mask[:, 0] = True
        known = Known(mask, torch.rand(shape) * 0.5)
    single = domain.sample(model, 2, known=known, generator=torch.Generator().manual_seed(0), steps=3)
    double = domain.sample(model.double(), 2, known=known, generator=torch.Generator().manual_seed(0), steps=3)
    if name == "discrete":
        assert torch.equal(double, single)
        return
    assert double.dtype == torch.float64 and double.shape == single.shape and double.isfinite().all()
    if known is not None:
        assert torch.equal(double[:, 0], known.values[:, 0].double())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_domain_names_a_known_part_that_does_not_fit_its_samples(name):
    domain = _domain(name)
    model, shape = domain.build_model(), (2, *domain.sample_shape())
    wrong = (2, *[s + 1 for s in shape[1:]])
    values = torch.zeros(wrong, dtype=torch.long if name == "discrete" else torch.float32)
    mask = torch.zeros(shape[:2] if name in ("video", "pointcloud") else shape, dtype=torch.bool)
    with pytest.raises(ValueError, match=rf"known values of shape \({wrong[0]}, {wrong[1]}.* do not fit samples of "
                                         rf"shape \({shape[0]}, {shape[1]}"):
        domain.sample(model, 2, known=Known(mask, values), steps=2)
    if name in ("toy2d", "discrete"):  # the others' masks (one per frame or point) are checked by item_mask
        with pytest.raises(ValueError, match=r"known mask of shape \(3,\) does not fit samples of shape"):
            domain.sample(model, 2, known=Known(torch.zeros(3, dtype=torch.bool), torch.zeros(shape).long()),
                          steps=2)


def test_known_tokens_outside_the_vocabulary_are_named():
    domain = _domain("discrete")
    shape = (1, *domain.sample_shape())
    known = Known(torch.ones(shape, dtype=torch.bool), torch.full(shape, 9999))
    message = r"known.values: token ids in \[0, 4\) \(the data's categories; the mask token is 4\), got 9999"
    with pytest.raises(ValueError, match=message):
        domain.sample(domain.build_model(), 1, known=known, steps=2)


def test_the_discrete_domain_names_the_gaussian_settings_it_does_not_take():
    domain = _domain("discrete")
    for setting in ("sampler", "eta", "resample", "guidance"):
        with pytest.raises(TypeError, match=f"takes no setting '{setting}'"):
            domain.sample(domain.build_model(), 1, **{setting: 1})
    assert domain.sample_settings(temperature=0.5, steps=4).temperature == 0.5


@pytest.mark.parametrize("name", ["toy2d", "video", "pointcloud"])
def test_gaussian_settings_must_fit_the_sampler(name):
    domain = _domain(name)
    with pytest.raises(ValueError, match="eta=0.5 only applies to the ddim sampler"):
        domain.sample_settings(sampler="dpm_solver_pp", eta=0.5)
    with pytest.raises(ValueError, match="resample=2 only applies to the ddpm sampler"):
        domain.sample_settings(sampler="ddim", resample=2)
    assert domain.sample_settings(sampler="ddim", eta=1.0).eta == 1.0


def test_the_configs_sampler_settings_do_not_follow_another_sampler():
    """The point-cloud completion config resamples DDPM steps twice; asking for DDIM leaves resampling at 1, while
    a config whose own sampler cannot use its setting is an error when the domain is built (not at the first sampling
    of a long run), naming the key; so is guidance on a domain without a condition."""
    domain = _domain("pointcloud", "sample.sampler=ddpm", "sample.resample=2")
    assert domain.sample_settings(sampler="ddim").resample == 1
    assert domain.sample_settings().resample == 2
    for domain, overrides, message in [
        ("pointcloud", ["sample.sampler=ddim", "sample.resample=2"], "sample.resample=2 only applies to the ddpm"),
        ("toy2d", ["sample.eta=0.5"], "sample.eta=0.5 only applies to the ddim sampler, not to 'dpm_solver_pp'"),
        ("toy2d", ["sample.guidance=2"], "sample.guidance=2.0: toy2d samples have no condition"),
    ]:
        with pytest.raises(ConfigError, match=message):
            _domain(domain, *overrides)


def test_point_cloud_configs_sample_generation_with_dpm_solver_and_completion_with_resampled_ddpm():
    settings = lambda path: load_config(PointCloudConfig, path).sample  # noqa: E731
    for path in (None, "configs/pointcloud/default.yaml"):
        s = settings(path)
        assert (s.sampler, s.steps, s.spacing, s.resample) == ("dpm_solver_pp", 20, "karras", 1)
    for name in ("completion", "tiny"):
        s = settings(f"configs/pointcloud/{name}.yaml")
        assert (s.sampler, s.steps, s.spacing, s.resample) == ("ddpm", 250, "auto", 2)


def test_guidance_needs_a_condition():
    with pytest.raises(ValueError, match="guidance=2.0: pointcloud samples have no condition"):
        _domain("pointcloud", "model.class_conditional=false").sample_settings(guidance=2.0)
    with pytest.raises(ValueError, match="guidance=2.0: toy2d samples have no condition"):
        _domain("toy2d").sample_settings(guidance=2.0)
    assert _domain("video").sample_settings(guidance=2.0).guidance == 2.0
    assert _domain("pointcloud").sample_settings(guidance=2.0).guidance == 2.0  # the class


def test_video_guidance_of_a_residual_model_moves_its_unconditional_branch_to_the_residuals(monkeypatch):
    """A residual model's unconditional branch drew whole frames: guidance 0 on it must give what the same network
    gives as a model of whole frames (x0 estimates unclamped, as the two clamp in different frames; up to the
    starting noise's alpha_T * reference, as the samplers start from pure noise: 5e-5 at T = 1000); any scale keeps
    the observed frames; a model of whole frames is guided too."""
    from video.sampling import generate

    residual = _domain("video", "model.residual_scale=1.5", "diffusion.timesteps=1000", "diffusion.clip_x0=null")
    whole = _domain("video", "model.residual=false")
    model, g = residual.build_model(), lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with torch.no_grad():  # the condition's input weights start at zero: give the condition an effect
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g()) * 0.1)
    observed, mask = torch.rand(2, 3, 1, 8, 8) * 2 - 1, torch.tensor([[True, False, True], [True, False, False]])
    opts = residual.model_options()

    def run(guidance: float, frames: torch.Tensor = observed, interval=(0.0, 1.0), **kw) -> torch.Tensor:
        settings = residual.sample_settings(sampler="ddim", steps=4, guidance=guidance, guidance_interval=interval)
        return generate(model, residual.diffusion, frames, mask, settings, generator=g(), **kw)

    scale = opts["residual_scale"]  # the null branch learnt whole frames times the scale
    with monkeypatch.context() as m:  # frames times the scale leave [-1, 1] on purpose: not a user's frames
        m.setattr("video.sampling.check_observed", lambda *args: None)
        unconditional = run(0.0, observed * scale, residual=False) / scale
    moved = run(0.0, **opts)
    assert (moved - unconditional.clamp(-1, 1))[~mask].abs().max() < 3e-3
    conditional = run(1.0, **opts)
    assert (conditional - moved)[~mask].abs().max() > 0.3, "the two branches differ"
    for guidance in (0.0, 2.0):
        assert torch.equal(run(guidance, **opts)[mask], observed[mask])
    times = []  # the float times the sampler evaluates the network at
    hook = model.register_forward_pre_hook(lambda module, args: times.append(args[1][0].item()))
    run(1.0, **opts)
    hook.remove()
    assert torch.equal(run(2.0, interval=(0.0, min(times) / 2), **opts), conditional), "guided at no step"
    one_step = run(2.0, interval=(sorted(times)[1],) * 2, **opts)
    assert not torch.equal(one_step, conditional) and not torch.equal(one_step, run(2.0, **opts))
    free = [generate(model, residual.diffusion, observed, None, residual.sample_settings(steps=3, guidance=s),
                     generator=g(), **opts) for s in (1.0, 2.0)]
    assert torch.equal(*free), "nothing observed: the condition is the null one, guidance has nothing to scale"
    known = Known(mask, observed)  # the same network as a model of whole frames
    guided = whole.sample(model, 2, known=known, guidance=2.0, steps=2, generator=g())
    assert torch.equal(guided[mask], observed[mask])
    assert not torch.equal(guided, whole.sample(model, 2, known=known, steps=2, guidance=1.0, generator=g()))


def test_pretrained_sample_passes_settings_on_and_the_domain_checks_them(tmp_path):
    domain = Toy2D(load_config(Toy2DConfig, overrides=["model.hidden=8"]))
    export_model(domain.build_model(), domain, tmp_path / "export")
    p = load_pretrained(tmp_path / "export")
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = p.sample(4, sampler="ddim", steps=3, generator=g())
    b = domain.sample(p.model, 4, sampler="ddim", steps=3, generator=g())
    assert torch.equal(a, b)
    assert not torch.equal(p.sample(4, sampler="ddim", steps=3, temperature=0.5, generator=g()), a)
    with pytest.raises(TypeError, match="takes no setting 'length'"):
        p.sample(4, length=5)


def test_an_export_written_with_task_guidance_loads_it_as_sample_guidance(tmp_path):
    domain = _domain("video", "sample.guidance=1.5", "model.residual=false")
    out = export_model(domain.build_model(), domain, tmp_path / "export")
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["task"]["guidance"] = config["sample"].pop("guidance")  # as exports before the move wrote it
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    assert load_pretrained(out).config.sample.guidance == 1.5
    assert "guidance" in {f for f in SampleConfig.__dataclass_fields__}


def test_an_export_from_before_the_blend_reference_keeps_the_nearest_frame_reference(tmp_path):
    """model.reference's default became ``blend``; an export without the key was trained with ``nearest``."""
    domain = _domain("video")
    out = export_model(domain.build_model(), domain, tmp_path / "export")
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"].pop("reference") == "blend"  # as exports before the key existed wrote it
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    assert load_pretrained(out).config.model.reference == "nearest"
    assert _domain("video").cfg.model.reference == "blend"


def test_an_export_from_before_the_guidance_interval_keeps_guiding_every_step(tmp_path):
    """The video default became guidance 2 at t in [0.8, 1]; an export without the interval guided at every step (at
    its own scale), and one without either key sampled unguided."""
    domain = _domain("video", "sample.guidance=1.5")
    out = export_model(domain.build_model(), domain, tmp_path / "export")
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["sample"].pop("guidance_interval") == [0.8, 1.0]  # as exports before the key existed wrote it
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    assert tuple(load_pretrained(out).config.sample.guidance_interval) == (0.0, 1.0)
    assert load_pretrained(out).config.sample.guidance == 1.5
    config["sample"].pop("guidance")
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    assert load_pretrained(out).config.sample.guidance == 1.0
    default = _domain("video").cfg.sample
    assert (default.guidance, tuple(default.guidance_interval)) == (2.0, (0.8, 1.0))


def test_an_export_with_reference_input_loads_the_wider_network(tmp_path):
    """model.reference_input widens the network's input by the reference frames; its export loads as such."""
    domain = _domain("video", "model.reference_input=true", "model.reference=motion")
    out = export_model(domain.build_model(), domain, tmp_path / "export")
    loaded = load_pretrained(out)
    assert loaded.config.model.reference_input is True and loaded.model.cond_channels == 3
    assert loaded.sample(1, steps=2).shape[0] == 1
    assert _domain("video").cfg.model.reference_input is False


def test_an_export_from_before_the_unconditional_temperature_samples_unconditionally_at_its_temperature(tmp_path):
    """The video default samples unconditional clips at temperature 1; an export without the key used
    ``sample.temperature`` for them too (None)."""
    domain = _domain("video")
    out = export_model(domain.build_model(), domain, tmp_path / "export")
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["sample"].pop("unconditional_temperature") == 1.0  # as exports before the key existed wrote it
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    settings = load_pretrained(out).config.sample
    assert settings.unconditional_temperature is None
    assert settings.sampler_arguments(observed=False)["temperature"] == settings.temperature == 0.2


def test_the_unconditional_temperature_applies_where_nothing_is_observed():
    s = SampleConfig(temperature=0.3)
    assert s.sampler_arguments(observed=False)["temperature"] == s.sampler_arguments()["temperature"] == 0.3
    s = SampleConfig(temperature=0.3, unconditional_temperature=1.0)
    assert (s.sampler_arguments()["temperature"], s.sampler_arguments(observed=False)["temperature"]) == (0.3, 1.0)
    with pytest.raises(ConfigError, match="sample.unconditional_temperature: must be >= 0"):
        _domain("toy2d").sample_settings(unconditional_temperature=-1.0)
