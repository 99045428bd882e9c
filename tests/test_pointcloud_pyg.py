"""torch_geometric interop: ragged partials in a Batch completed and kept exactly, the CLI's .pt in and out."""

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.transforms import NormalizeScale

from multigen import load_pretrained
from multigen.config import load_config
from multigen.export import export_model
from pointcloud import pyg
from pointcloud.cli import complete_main, main as pointcloud_cli
from pointcloud.domain import PointCloud, PointCloudConfig
from pointcloud.io import PointCloudError, read_points
from pointcloud.shapes import normalize

SMALL = ["data.points=128", "model.width=0.25", "model.voxel_resolution=0.25", "task.partial_points=30",
         "sample.steps=2"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    domain = PointCloud(load_config(PointCloudConfig, None, SMALL))
    torch.manual_seed(0)
    out = export_model(domain.build_model(), domain, tmp_path_factory.mktemp("pyg_export"))
    return load_pretrained(out)


def test_ragged_partials_in_a_batch_are_completed_and_kept_exactly(pretrained):
    g = torch.Generator().manual_seed(0)
    partials = Batch.from_data_list([Data(pos=torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.3)
                                     for n in (10, 45, 3)])
    done = pyg.complete(pretrained, partials, generator=torch.Generator().manual_seed(1))
    assert done.num_graphs == 3 and done.pos.dtype == torch.float64
    for i, n in enumerate((10, 45, 3)):
        cloud, observed = done.pos[done.batch == i], done.observed[done.batch == i]
        assert cloud.shape == (128, 3) and observed.sum() == n and observed[:n].all()
        assert torch.equal(cloud[:n], partials.get_example(i).pos)  # bit-exact, float64 kept
        assert torch.isfinite(cloud).all()


def test_integer_partials_do_not_round_what_is_generated(pretrained):
    """An int64 partial came back as int64, its generated points rounded to -1, 0 and 1."""
    partial = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0]])
    done = pyg.complete(pretrained, Data(pos=partial), generator=torch.Generator().manual_seed(1))
    assert done.pos.dtype == torch.float64 and torch.equal(done.pos[:5], partial.double())
    assert not torch.equal(done.pos[5:], done.pos[5:].round())
    assert [pyg.float_holding(d) for d in (torch.float16, torch.int16, torch.int32, torch.float32)] == [
        torch.float32, torch.float32, torch.float64, torch.float32]


def test_bad_partials_are_named(pretrained):
    with pytest.raises(PointCloudError, match="partial 1 has 128 points"):
        pyg.complete(pretrained, Batch.from_data_list([Data(pos=torch.randn(5, 3)), Data(pos=torch.randn(128, 3))]))
    nan = torch.randn(6, 3)
    nan[2, 1] = float("nan")
    with pytest.raises(PointCloudError, match="cloud 0 of the torch_geometric input: point 2 is not finite"):
        pyg.complete(pretrained, Data(pos=nan))


def test_sample_and_dense_round_trip(pretrained):
    batch = pyg.sample(pretrained, 2, generator=torch.Generator().manual_seed(0))
    assert batch.num_graphs == 2 and batch.pos.shape == (256, 3)
    assert [c.shape for c in pyg.clouds_of(batch)] == [(128, 3), (128, 3)]


def test_unit_sphere_transform_equals_ours_and_pyg_normalize_scale_does_not():
    points = np.random.default_rng(0).normal(size=(200, 3)) * [2.0, 0.5, 1.0] + [3.0, -1.0, 0.5]
    ours = pyg.NormalizeUnitSphere()(Data(pos=torch.from_numpy(points)))
    np.testing.assert_array_equal(ours.pos.numpy(), normalize(points))
    theirs = NormalizeScale()(Data(pos=torch.from_numpy(points)))
    assert not np.allclose(theirs.pos.numpy(), normalize(points), atol=1e-2)
    whole = pyg.NormalizeUnitSphere()(Data(pos=torch.tensor([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]]))).pos
    assert whole.is_floating_point() and whole.abs().max() > 0.5  # (integers: every point 0, it was)
    for bad, message in [(torch.ones(4, 3), "all 4 points coincide"), (torch.zeros(0, 3), "has no points")]:
        with pytest.raises(PointCloudError, match=f"the transformed Data's pos.*{message}"):
            pyg.NormalizeUnitSphere()(Data(pos=bad))


def test_cli_reads_a_data_file_and_writes_batches(pretrained, tmp_path):
    export = tmp_path / "export"
    export_model(pretrained.model, pretrained.domain, export)
    partial = torch.randn(20, 3, dtype=torch.float64)
    torch.save(Data(pos=partial), tmp_path / "partial.pt")
    np.testing.assert_array_equal(read_points(tmp_path / "partial.pt"), partial.numpy())
    assert complete_main(["--checkpoint", str(export), "--input", str(tmp_path / "partial.pt"), "--num", "2",
                          "--steps", "2", "--out", str(tmp_path / "out")]) == 0
    done = torch.load(tmp_path / "out" / "completions.pt", weights_only=False)
    assert done.num_graphs == 2 and int(done.observed.sum()) == 40
    assert torch.equal(done.pos[done.batch == 1][:20], partial)
    assert pointcloud_cli(["sample", "--checkpoint", str(export), "--num", "2", "--steps", "2",
                           "--out", str(tmp_path / "s")]) == 0
    assert torch.load(tmp_path / "s" / "samples.pt", weights_only=False).num_graphs == 2
    import trimesh  # a scan stored triangulated: its vertices are the partial, not samples of its surface

    scan = np.random.default_rng(0).normal(size=(25, 3)).astype(np.float32)
    trimesh.Trimesh(scan, [[0, 1, 2], [2, 3, 4]], process=False).export(tmp_path / "scan.ply")
    assert complete_main(["--checkpoint", str(export), "--input", str(tmp_path / "scan.ply"), "--num", "1",
                          "--steps", "2", "--out", str(tmp_path / "scan_out")]) == 0
    assert np.array_equal(read_points(tmp_path / "scan_out" / "completion_000.ply")[:25], scan)
    torch.save(Batch.from_data_list([Data(pos=partial), Data(pos=partial)]), tmp_path / "two.pt")
    with pytest.raises(PointCloudError, match="other than one torch_geometric Data"):
        read_points(tmp_path / "two.pt")
