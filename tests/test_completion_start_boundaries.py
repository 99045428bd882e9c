"""A completion's start (SDEdit over retrieval): the training bank, the one-sided Chamfer it is searched by, the
errors of an empty search, and the start's time and scale as the sampler receives them."""

import pytest
import torch
from torch import nn

from multigen import Known
from multigen.config import load_config
from multigen.samplers import sampling_grid
from pointcloud.domain import PointCloud, PointCloudConfig, chamfer_to

SMALL = ["data.points=256", "model.width=0.25", "model.voxel_resolution=0.25", "task.partial_points=40"]


def small_domain(*extra: str) -> PointCloud:
    return PointCloud(load_config(PointCloudConfig, None, [*SMALL, *extra]))


class Spy(nn.Module):
    """Predicts zero and records the ``x`` and ``t`` of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t, features, label=None):
        self.calls.append((x.clone(), t.clone()))
        return torch.zeros_like(x)


def _partial_mask(n: int) -> torch.Tensor:
    mask = torch.zeros(n, 256, dtype=torch.bool)
    mask[:, :40] = True
    return mask


def test_the_training_bank_takes_the_shape_nearest_each_evenly_spaced_position():
    """Bank entry ``i`` of ``k`` is the training shape nearest position ``i (n - 1) / (k - 1)``, ends included."""
    domain = small_domain()
    train = domain.fixed_clouds("train")
    n = len(train)
    for k in (5, 7, 12, 13):
        bank, index = domain.training_bank(k)
        exact = torch.arange(k, dtype=torch.float64) * (n - 1) / (k - 1)
        assert ((index - exact).abs() <= 0.5).all(), (k, index.tolist(), exact.tolist())
        assert torch.equal(bank[3], train[int(index[3])].float())


def test_chamfer_to_is_the_mean_squared_distance_to_the_nearest_shape_point():
    """One-sided Chamfer from a partial to each bank shape: the mean over the partial's points of the squared distance
    to the nearest point of the shape (a mean, so one far point weighs 1/P: not the worst point's distance)."""
    partial = torch.tensor([[0.0, 0, 0], [10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]])
    near_but_one = torch.cat([partial[:3], torch.tensor([[0.0, 0, 11.0]])])  # three exact, one at distance 1
    all_off = partial + torch.tensor([0.6, 0.0, 0.0])  # each at distance 0.6 (0.36 squared)
    bank = torch.stack([near_but_one, all_off])
    assert chamfer_to(partial, bank).tolist() == pytest.approx([0.25, 0.36], rel=1e-4)
    g = torch.Generator().manual_seed(0)
    partial, bank = torch.randn(30, 3, generator=g), torch.randn(4, 50, 3, generator=g)
    brute = ((partial[None, :, None] - bank[:, None]) ** 2).sum(-1).amin(2).mean(1)
    torch.testing.assert_close(chamfer_to(partial, bank), brute)


def test_a_class_missing_from_the_bank_is_an_error_naming_the_setting():
    """A one-shape bank holds one class (the first training shape's); a partial asked of another finds none."""
    domain = small_domain("model.class_conditional=true")
    bank, index = domain.training_bank(1)
    other = int(domain.class_labels("train")[index[0]] + 1) % len(domain.class_names)
    with pytest.raises(ValueError, match="raise task.completion_bank"):
        domain.nearest_training_shapes([bank[0, :40]], 1, labels=torch.tensor([other]))


def test_a_start_for_several_clouds_names_the_one_without_known_points():
    domain = small_domain("task.completion_bank=12")
    shapes = torch.stack([domain.fixed_clouds("val")[i] for i in range(3)])
    mask = _partial_mask(3)
    mask[1] = False
    with pytest.raises(ValueError, match="cloud 1 has none"):
        domain.start_clouds(shapes, mask)


def test_a_completion_starts_at_task_completion_start_by_default_and_generation_at_one():
    """``start=None``: a completion's first call is at the grid's first level at or below
    ``task.completion_start``, a generation's at t = 1; ``start=1`` completes from noise."""
    domain = small_domain("task.completion_bank=12", "task.completion_start=0.3")
    shapes = torch.stack([domain.fixed_clouds("val")[i] for i in range(2)])
    known = Known(_partial_mask(2), shapes)
    for kw, first in [({"known": known}, 0.3), ({"known": known, "start": 1.0}, 1.0), ({}, 1.0)]:
        spy = Spy()
        domain.sample(spy, 2, sampler="ddim", steps=10, spacing="time", **kw)
        assert spy.calls[0][1].tolist() == pytest.approx([first] * 2), kw
        assert len(spy.calls) == round(first * 10), kw


def test_a_completion_start_enters_the_sampler_in_the_diffusion_frame():
    """Diffusion runs on clouds times ``model.diffusion_scale``: at temperature 0 the first call sees the start
    cloud times the scale times ``sqrt(alpha_bar)`` of the start level at every generated point."""
    domain = small_domain("task.completion_bank=12", "model.diffusion_scale=2.0")
    shapes = torch.stack([domain.fixed_clouds("val")[i] for i in range(2)])
    mask = _partial_mask(2)
    spy = Spy()
    domain.sample(spy, 2, known=Known(mask, shapes), sampler="ddim", steps=10, spacing="time",
                  start=0.35, temperature=0.0)
    start = domain.start_clouds(shapes, mask)
    level = float(sampling_grid(domain.diffusion.schedule, 10, "time").starting_at(0.35).alpha_bar[0])
    x = spy.calls[0][0]
    torch.testing.assert_close(x[~mask], level**0.5 * 2.0 * start[~mask])


def test_a_class_conditional_completion_starts_from_a_shape_of_the_asked_class():
    """Completing a partial of a class-``a`` training shape as class ``b``: the start is the nearest class-``b``
    shape holding the partial, not the shape the partial came from."""
    domain = small_domain("model.class_conditional=true", "task.completion_bank=12")
    bank, index = domain.training_bank(12)
    classes = domain.class_labels("train")[index]
    shapes, mask = bank[5:6], _partial_mask(1)
    other = (classes[5] + 1) % len(domain.class_names)
    spy = Spy()
    domain.sample(spy, 1, known=Known(mask, shapes), condition=other[None], sampler="ddim", steps=10,
                  spacing="time", start=0.35, temperature=0.0)
    asked, own = domain.start_clouds(shapes, mask, other[None]), domain.start_clouds(shapes, mask)
    assert not torch.allclose(asked[~mask], own[~mask])
    level = float(sampling_grid(domain.diffusion.schedule, 10, "time").starting_at(0.35).alpha_bar[0])
    x = spy.calls[0][0][:1]  # the conditional branch (guidance runs both as one batch)
    torch.testing.assert_close(x[~mask], level**0.5 * domain.scale * asked[~mask])


def test_the_completion_baselines_are_the_nearest_training_shape_without_and_with_the_partial():
    """On held-out shapes the two retrieval baselines differ: the nearest training shape as it is, and that shape
    holding the observed points (:func:`with_partial`)."""
    from pointcloud.domain import with_partial
    from pointcloud.metrics import chamfer
    from pointcloud.views import partial_masks

    domain = small_domain("task.completion=1.0", "task.completion_bank=12", "sample.steps=1", "sample.sampler=ddim")
    shapes = torch.stack([domain.fixed_clouds("val")[i] for i in range(3)])
    metrics = domain.evaluate_completion(Spy(), shapes, torch.Generator().manual_seed(0))
    mask = partial_masks(shapes, 40, seed=domain.cfg.sample.seed)
    partials = [s[m] for s, m in zip(shapes, mask)]
    nearest = domain.nearest_training_shapes(partials, 12)
    kept = torch.stack([with_partial(n, p) for n, p in zip(nearest, partials)])
    plain, held = chamfer(nearest, shapes).mean().item(), chamfer(kept, shapes).mean().item()
    assert abs(plain - held) > 1e-4
    assert metrics["completion/baseline_nearest_train_chamfer"] == pytest.approx(plain, rel=1e-6)
    assert metrics["completion/baseline_nearest_train_with_partial_chamfer"] == pytest.approx(held, rel=1e-6)


def test_a_start_whose_training_shapes_are_gone_says_to_start_from_noise(tmp_path):
    """An export completing away from the shape folder it was trained on: a start below 1 needs those shapes, and
    the error says so and names the way round (start = 1), not only the missing folder."""
    import shutil

    import numpy as np

    from multigen.domain import DataError

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (tmp_path / "clouds" / split).mkdir(parents=True)
        for i in range(2):
            np.save(tmp_path / "clouds" / split / f"c{i}.npy", rng.normal(0, 0.5, (256, 3)).astype(np.float32))
    domain = small_domain("data.source=folder", f"data.root={tmp_path / 'clouds'}", "task.completion_start=0.1")
    domain.fit()
    shutil.rmtree(tmp_path / "clouds")
    shapes = torch.randn(1, 256, 3) * 0.3
    with pytest.raises(DataError, match=r"shape folder .*clouds.* not found.*start from noise instead \(start=1"):
        domain.start_clouds(shapes, _partial_mask(1))
    spy = Spy()
    domain.sample(spy, 1, known=Known(_partial_mask(1), shapes), start=1.0, sampler="ddim", steps=2)  # from noise
    assert len(spy.calls) == 2
