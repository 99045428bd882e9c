"""Class-conditional point clouds: the network's class embedding, the data's classes and their proportions, the
labels training sees, and sampling by class, drawn from the prior, or guided."""

import numpy as np
import pytest
import torch
from torch import nn

from multigen import Known
from multigen.config import load_config
from multigen.export import export_model, load_pretrained
from multigen.trainer import train
from pointcloud.cli import main as pointcloud_cli
from pointcloud.datasets import Labelled
from pointcloud.domain import PointCloud, PointCloudConfig
from pointcloud.model import PointLevel, PVCNNUNet, PVConv, pvd_spec
from pointcloud.shapes import ProceduralShapes

SMALL = ["data.points=256", "model.width=0.25", "model.voxel_resolution=0.25", "task.partial_points=40"]


def domain_with(*extra: str) -> PointCloud:
    return PointCloud(load_config(PointCloudConfig, None, [*SMALL, "model.class_conditional=true", *extra]))


def test_network_starts_as_the_unconditional_one_and_tells_classes_apart():
    torch.manual_seed(0)
    net = PVCNNUNet(pvd_spec(0.25, 0.25, 256), extra_channels=1, classes=3)
    nn.init.normal_(net.head[-1].weight, std=0.1)  # the head starts at zero: make the output depend on the input
    x, t, flag = torch.randn(2, 256, 3), torch.rand(2), torch.zeros(2, 1, 256)
    none = net(x, t, flag)
    assert torch.equal(net(x, t, flag, torch.tensor([3, 3])), none)  # index K is no class
    assert torch.equal(net(x, t, flag, torch.tensor([0, 2])), none)  # every class embedding is zero at start
    nn.init.normal_(net.label.weight)
    a, b = net(x, t, flag, torch.tensor([0, 0])), net(x, t, flag, torch.tensor([1, 1]))
    assert not torch.allclose(a, b) and torch.equal(net(x, t, flag, torch.tensor([3, 3])), net(x, t, flag))
    with pytest.raises(ValueError, match="not class-conditional"):
        PVCNNUNet(pvd_spec(0.25, 0.25, 256), extra_channels=1)(x, t, flag, torch.tensor([0, 0]))


def test_classes_are_the_families_when_there_are_several():
    domain = domain_with("data.num_train=12")
    assert domain.class_names == ["chair", "table", "airplane", "torus", "vase"] and domain.conditional
    shapes = ProceduralShapes(num_shapes=12)
    labels = domain.class_labels("train")
    assert [domain.class_names[i] for i in labels] == [shapes.family(i) for i in range(12)]
    assert torch.allclose(domain.class_prior(), torch.tensor([3, 3, 2, 2, 2], dtype=torch.double) / 12)
    assert domain.build_model().label.num_embeddings == 6
    assert PointCloud(load_config(PointCloudConfig)).class_names == domain.class_names  # the default
    for unconditional in (domain_with("data.families=[airplane]"), domain_with("model.class_conditional=false")):
        assert unconditional.class_names == [] and not unconditional.conditional
        assert unconditional.build_model().label is None
    assert domain_with("data.source=folder", "data.root=x").class_names == []


def test_an_export_from_before_classes_loads_unconditional(tmp_path):
    """model.class_conditional's default became true; an export without the key was trained without classes."""
    domain = domain_with("model.class_conditional=false")
    out = export_model(domain.build_model(), domain, tmp_path / "export")
    config = out / "config.yaml"
    config.write_text(config.read_text().replace("  class_conditional: false\n", ""))
    assert "class_conditional" not in config.read_text()
    pretrained = load_pretrained(out)
    assert not pretrained.config.model.class_conditional and pretrained.model.label is None


def test_training_batches_carry_the_class_or_none_at_the_dropout_rate():
    domain = domain_with("data.num_train=10", "task.class_dropout=0")
    train_set = domain.build_dataset("train")
    assert isinstance(train_set, Labelled) and not isinstance(domain.build_dataset("val"), Labelled)
    cloud, label = train_set[7]
    assert cloud.shape == (256, 3) and label == 2  # the seventh shape is an airplane
    batch = domain.collate_fn([train_set[i] for i in range(10)])
    assert torch.equal(batch["label"], torch.arange(10) % 5) and batch["points"].shape == (10, 256, 3)
    assert torch.equal(domain_with("task.class_dropout=1").collate_fn([train_set[i] for i in range(4)])["label"],
                       torch.full((4,), 5))
    torch.manual_seed(0)
    dropped = domain_with("task.class_dropout=0.1").collate_fn([train_set[i % 10] for i in range(2000)])["label"]
    assert 0.08 < (dropped == 5).float().mean() < 0.12


class LabelSpy(nn.Module):
    """Predicts zero and records the labels it is called with."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.labels: list[torch.Tensor] = []

    def forward(self, x, t, features, label=None):
        self.labels.append(label)
        return torch.zeros_like(x)


def test_sampling_by_class_from_the_prior_or_with_none():
    domain = domain_with("sample.steps=1", "sample.sampler=ddim")
    spy = LabelSpy()
    domain.sample(spy, 3, condition="torus")
    assert torch.equal(spy.labels[-1], torch.tensor([3, 3, 3]))
    domain.sample(spy, 2, condition=["vase", "chair"])
    assert torch.equal(spy.labels[-1], torch.tensor([4, 0]))
    domain.sample(spy, 3, condition=["vase", 1, 5])  # names and indices mixed
    assert torch.equal(spy.labels[-1], torch.tensor([4, 1, 5]))
    domain.sample(spy, 2, condition=torch.tensor([1, 5]))
    assert torch.equal(spy.labels[-1], torch.tensor([1, 5]))
    # generation: classes in the training proportions, stratified (each within one sample of its share)
    for n in (1, 7, 64):
        counts = torch.zeros(6)
        for seed in range(200):
            domain.sample(spy, n, generator=torch.Generator().manual_seed(seed))
            one = torch.bincount(spy.labels[-1], minlength=6)
            assert one[5] == 0 and ((one[:5] - n * domain.class_prior()).abs() < 1).all()
            counts += one
        assert torch.allclose(counts[:5] / (200 * n), domain.class_prior().float(), atol=0.1 / n ** 0.5)
    mask = torch.zeros(2, 256, dtype=torch.bool)
    mask[:, :40] = True
    domain.sample(spy, 2, known=Known(mask, torch.zeros(2, 256, 3)))  # completion of an unlabelled scan: no class
    assert torch.equal(spy.labels[-1], torch.tensor([5, 5]))
    for bad, message in [("boat", "unknown classes"), (torch.tensor([0, 1, 2]), "2 class indices"),
                         (torch.tensor([0.0, 1.0]), "class indices"), (torch.tensor([0, 6]), "class indices")]:
        with pytest.raises(ValueError, match=message):
            domain.sample(spy, 2, condition=bad)
    unconditional = domain_with("model.class_conditional=false")
    with pytest.raises(ValueError, match="takes no condition"):
        unconditional.sample(spy, 2, condition="chair")
    with pytest.raises(ValueError, match="guidance=2.0"):
        unconditional.sample(spy, 2, guidance=2.0)


def test_guidance_runs_the_class_and_no_class_as_one_batch_keeping_the_partial():
    domain = domain_with("sample.steps=2", "sample.sampler=ddim")
    torch.manual_seed(0)
    model = domain.build_model().eval()
    nn.init.normal_(model.label.weight)
    nn.init.normal_(model.head[-1].weight, std=0.1)
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append((args[0].shape[0], args[3])))
    values = torch.randn(2, 256, 3) * 0.3
    mask = torch.zeros(2, 256, dtype=torch.bool)
    mask[:, :40] = True
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    guided = domain.sample(model, 2, condition="chair", known=Known(mask, values), guidance=3.0, generator=g())
    assert torch.equal(guided[mask], values[mask])
    assert calls[-1][0] == 4 and torch.equal(calls[-1][1], torch.tensor([0, 0, 5, 5]))
    plain = domain.sample(model, 2, condition="chair", known=Known(mask, values), generator=g())
    assert calls[-1][0] == 2 and not torch.allclose(guided, plain)
    # guidance 0 is the model without a class
    unguided = domain.sample(model, 2, condition="chair", known=Known(mask, values), guidance=0.0, generator=g())
    none = domain.sample(model, 2, condition=torch.tensor([5, 5]), known=Known(mask, values), generator=g())
    assert torch.allclose(unguided, none, atol=1e-5)


def test_a_class_conditional_run_exports_and_samples_by_class(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = load_config(PointCloudConfig, "configs/pointcloud/tiny.yaml", [
        "model.class_conditional=true", "train.max_steps=3", "train.checkpoint_every=0", "train.tensorboard=false",
        "sample.steps=2", "eval.num_shapes=4", "data.num_train=8", f"train.output_dir={out}",
    ])
    train(PointCloud, cfg)
    pretrained = load_pretrained(out / "export")
    assert pretrained.domain.class_names == ["torus", "table"] and pretrained.model.label.num_embeddings == 3
    assert pointcloud_cli(["sample", "--checkpoint", str(out / "export"), "--num", "2", "--steps", "2",
                           "--class", "table", "--guidance", "2", "--guidance-interval", "0.1", "0.9",
                           "--out", str(tmp_path / "tables")]) == 0
    assert (tmp_path / "tables" / "sample_001.ply").is_file()
    assert "classes: sample 0 table, sample 1 table" in capsys.readouterr().out
    assert pointcloud_cli(["sample", "--checkpoint", str(out / "export"), "--num", "2", "--steps", "2",
                           "--out", str(tmp_path / "drawn")]) == 0
    assert "classes: sample 0 torus, sample 1 table" in capsys.readouterr().out  # stratified: one of each
    assert pointcloud_cli(["sample", "--checkpoint", str(out / "export"), "--num", "1", "--class", "vase",
                           "--out", str(tmp_path / "x")]) == 2


def test_shapenet_categories_are_counted_at_fit_and_exported(pc15k, tmp_path):
    domain = domain_with("data.source=shapenet", f"data.root={pc15k}", "data.categories=[chair,airplane]",
                         "data.points=64", "data.pool=0")
    with pytest.raises(ValueError, match="call fit"):
        domain.class_prior()
    domain.fit()
    assert domain.cfg.data.class_counts == [3, 3] and torch.equal(domain.class_labels("train"),
                                                                   torch.tensor([0, 0, 0, 1, 1, 1]))
    domain.cfg.data.class_counts = [0, 3]  # a prior with only airplanes
    pretrained = load_pretrained(export_model(domain.build_model(), domain, tmp_path / "export"))
    spy = LabelSpy()
    pretrained.domain.sample(spy, 8, steps=1, sampler="ddim")
    assert torch.equal(spy.labels[-1], torch.ones(8, dtype=torch.long))


@pytest.fixture
def pc15k(tmp_path):
    from pointcloud.datasets import SHAPENET_SYNSETS

    rng = np.random.default_rng(0)
    for name in ("chair", "airplane"):
        folder = tmp_path / "pc15k" / SHAPENET_SYNSETS[name] / "train"
        folder.mkdir(parents=True)
        for i in range(3):
            np.save(folder / f"{i}.npy", rng.normal(size=(200, 3)).astype(np.float32))
    return tmp_path / "pc15k"


def _pvd_network(**kw):
    torch.manual_seed(0)
    return PVCNNUNet(pvd_spec(0.25, 0.25, 256), **kw).eval()


def test_the_point_branch_grouping_interpolation_and_observed_flag_reach_the_output():
    from .test_nn import capture

    torch.manual_seed(0)
    conv = PVConv(8, 8, 4, 16).eval()
    with torch.no_grad():
        conv.voxel[3].weight.zero_()
        conv.voxel[3].bias.zero_()  # the voxel branch gives 0: what is left is the point branch
        out = conv(torch.randn(1, 8, 50), PointLevel(torch.rand(1, 50, 3) - 0.5), torch.randn(1, 16))
    assert out.abs().max() > 1e-3
    net = _pvd_network()
    grouping = net.encoder[0]
    offsets = capture(grouping.mlp, inputs=True)
    with torch.no_grad():
        net(torch.randn(1, 256, 3) * 0.5, torch.rand(1))
    norms = offsets["x"][:, :3].norm(dim=1)  # offsets to the ball's centre, in units of its radius
    assert norms.max() <= 1 + 1e-5 and norms.max() > 1.5 * grouping.spec.radius
    up = net.decoder[-1]
    coarse, coarse_xyz = torch.randn(1, 5, 4), torch.rand(1, 4, 3)
    skip = torch.randn(1, up.mlp[0].in_channels - 5, 10)
    up.mlp, up.convs = torch.nn.Identity(), torch.nn.ModuleList()
    xyz = torch.cat([coarse_xyz, torch.rand(1, 6, 3)], 1)  # the first 4 fine points are the coarse ones
    out = up(coarse, coarse_xyz, skip, PointLevel(xyz), torch.randn(1, 16))
    torch.testing.assert_close(out[:, :5, :4], coarse, atol=1e-5, rtol=1e-5)  # inverse-distance: exact there
    flagged = _pvd_network(extra_channels=1)
    torch.nn.init.normal_(flagged.head[-1].weight)
    x, t = torch.randn(1, 256, 3), torch.rand(1)
    with torch.no_grad():
        assert (flagged(x, t, torch.zeros(1, 1, 256)) - flagged(x, t, torch.ones(1, 1, 256))).abs().max() > 1e-4
