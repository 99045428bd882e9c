"""Point-cloud inputs at their boundaries: shape folders and their caches, normalisation statistics, training pools,
the PyG interface and the completion command line (each test was written against a one-line change the rest of the
suite let through)."""

import numpy as np
import pytest
import torch

from multigen.config import load_config
from multigen.export import export_model
from pointcloud import pyg
from pointcloud.cli import _to_model_frame, complete_main
from pointcloud.cli import main as pointcloud_cli
from pointcloud.datasets import Labelled, Normalizer, Resampled, ShapeFolder
from pointcloud.domain import PointCloud, PointCloudConfig
from pointcloud.io import PointCloudError, read_points

from .test_pointcloud_pyg import SMALL


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    domain = PointCloud(load_config(PointCloudConfig, None, SMALL))
    torch.manual_seed(0)
    return export_model(domain.build_model(), domain, tmp_path_factory.mktemp("gap_export") / "export")


def _points(root, name, n=200, seed=0):
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / name, np.random.default_rng(seed).normal(size=(n, 3)))


def test_a_train_folder_without_a_val_folder_is_split_every_tenth_file(tmp_path):
    """``root/train`` and ``root/val`` are the splits only when both exist; a lone ``train`` folder is just files."""
    for i in range(10):
        _points(tmp_path / "train", f"s{i}.npy", seed=i)
    _points(tmp_path, "top.npy", seed=99)
    val, train = ShapeFolder(tmp_path, "val", 64), ShapeFolder(tmp_path, "train", 64)
    assert len(val) == 1 and len(train) == 10 and not set(val.files) & set(train.files)


def test_a_file_given_as_the_shape_folder_is_named(tmp_path):
    _points(tmp_path, "a.npy")
    with pytest.raises(NotADirectoryError, match=r"shape folder .*a.npy is a file: give the folder"):
        ShapeFolder(tmp_path / "a.npy", "train", 64)


def test_the_cache_keeps_each_seeds_subset_apart(tmp_path):
    """A cached cloud is the subset of its own seed: another seed is not served the first one's cache entry."""
    _points(tmp_path / "shapes", "a.npy", n=500)
    root, cache = tmp_path / "shapes", tmp_path / "cache"
    first = ShapeFolder(root, "train", 64, seed=0, cache_dir=cache)[0]
    other = ShapeFolder(root, "train", 64, seed=1, cache_dir=cache)[0]
    uncached = ShapeFolder(root, "train", 64, seed=1, cache_dir=tmp_path / "fresh")[0]
    assert torch.equal(other, uncached) and not torch.equal(first, other)


def test_the_default_cache_is_not_read_as_shapes_by_a_run_with_another(tmp_path):
    for i in range(3):
        _points(tmp_path, f"s{i}.npy", seed=i)
    [ShapeFolder(tmp_path, "train", 64)[i] for i in range(2)]  # fills <root>/.multigen_cache
    other = ShapeFolder(tmp_path, "train", 64, cache_dir=tmp_path / "elsewhere")
    assert [p.name for p in other.files] == ["s0.npy", "s1.npy"]


def test_a_cached_cloud_is_checked_as_a_read_one(tmp_path):
    _points(tmp_path, "a.npy")
    _points(tmp_path, "b.npy", seed=1)
    folder = ShapeFolder(tmp_path, "train", 64)
    folder[0]
    (cached,) = (tmp_path / ".multigen_cache").glob("*.npy")
    np.save(cached, np.ones((64, 3), np.float32))  # as an older multigen, which let coincident points through
    with pytest.raises(PointCloudError, match=r"a.npy \(cached as .*\): all 64 points coincide"):
        folder[0]


def test_a_cache_file_cut_short_is_named_and_made_anew(tmp_path):
    _points(tmp_path, "a.npy")
    _points(tmp_path, "b.npy", seed=1)
    folder = ShapeFolder(tmp_path, "train", 64)
    first = folder[0]
    (cached,) = (tmp_path / ".multigen_cache").glob("*.npy")
    for damaged in (cached.read_bytes()[:100], b""):  # a run killed as it wrote, or a full disk
        cached.write_bytes(damaged)
        with pytest.warns(UserWarning, match=r"the cache of .*a.npy, is damaged \(.*\): reading .*a.npy again"):
            again = folder[0]
        assert torch.equal(again, first) and np.array_equal(np.load(cached), first.numpy())


def test_global_normalization_without_a_scale_is_refused():
    for scale in (0.0, -1.0):
        with pytest.raises(ValueError, match="global normalization needs its statistics"):
            Normalizer("global", [0.0, 0.0, 0.0], scale)


def test_fitted_statistics_include_the_last_training_cloud():
    near, far = torch.zeros(10, 3), torch.full((10, 3), 10.0)
    n = Normalizer.fit([near, far])
    assert torch.allclose(n.centre, torch.full((3,), 5.0, dtype=torch.float64)) and n.scale == pytest.approx(5 * 3**0.5)
    n = Normalizer.fit([near, near, far], max_shapes=2)  # evenly spread picks: the first and the last
    assert torch.allclose(n.centre, torch.full((3,), 5.0, dtype=torch.float64))


def test_a_pool_of_exactly_the_drawn_size_gives_all_its_points():
    pool = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    drawn = Resampled([pool], 64)[0]
    assert drawn.shape == (64, 3)
    assert sorted(map(tuple, drawn.tolist())) == sorted(map(tuple, pool.tolist()))


def test_labels_must_match_the_clouds():
    with pytest.raises(ValueError, match="2 labels for 3 clouds"):
        Labelled([torch.zeros(4, 3)] * 3, torch.tensor([0, 1]))


def test_to_batch_refuses_clouds_that_are_not_3d_points():
    with pytest.raises(PointCloudError, match=r"expected clouds of shape \(B, N, 3\), got \(2, 5, 2\)"):
        pyg.to_batch(torch.zeros(2, 5, 2))


def test_to_batch_refuses_an_observed_mask_of_other_clouds():
    with pytest.raises(PointCloudError, match=r"observed: a mask \(B, N\) = \(2, 4\) for the clouds, got \(3, 4\)"):
        pyg.to_batch(torch.randn(2, 4, 3), torch.zeros(3, 4, dtype=torch.bool))


def test_to_batch_keeps_each_clouds_own_observed_mask():
    observed = torch.tensor([[True, False, False, False], [True, True, True, False]])
    batch = pyg.to_batch(torch.randn(2, 4, 3), observed)
    for i in range(2):
        assert torch.equal(batch.observed[batch.batch == i], observed[i])


def test_partial_frame_puts_the_half_diagonal_at_the_radius():
    points = np.random.default_rng(0).normal(size=(50, 3)) * [3.0, 1.0, 2.0] + [10.0, -4.0, 7.0]
    centre, scale = _to_model_frame(points, "partial", 0.8, Normalizer("shape"))
    frame = (points - centre) / scale
    assert np.linalg.norm(frame.max(0) - frame.min(0)) / 2 == pytest.approx(0.8)
    np.testing.assert_allclose((frame.max(0) + frame.min(0)) / 2, 0, atol=1e-12)


def test_max_partial_must_leave_points_to_generate(export, tmp_path, capsys):
    np.save(tmp_path / "p.npy", np.random.default_rng(0).normal(size=(200, 3)))
    assert complete_main(["--checkpoint", str(export), "--input", str(tmp_path / "p.npy"), "--max-partial", "128",
                          "--out", str(tmp_path / "o")]) == 2
    assert "--max-partial must be between 1 and 127" in capsys.readouterr().err


def test_generated_points_return_to_the_partials_place(export, tmp_path):
    """With ``--normalize partial`` the completion is mapped back around the partial, far from the origin."""
    partial = np.random.default_rng(0).normal(size=(20, 3)) + 100.0
    np.save(tmp_path / "p.npy", partial)
    assert complete_main(["--checkpoint", str(export), "--input", str(tmp_path / "p.npy"), "--num", "1",
                          "--steps", "2", "--normalize", "partial", "--out", str(tmp_path / "o")]) == 0
    cloud = read_points(tmp_path / "o" / "completion_000.ply")
    assert np.array_equal(cloud[:20], partial)
    assert np.abs(cloud[20:].mean(0) - 100.0).max() < 20


def test_a_coincident_partial_is_completed_where_nothing_scales_it_by_its_extent(export, tmp_path):
    """Points already in the model's frame may all lie at one place (a single observed spot); only a whole shape, or
    a partial that --normalize partial scales by its size, needs extent."""
    np.save(tmp_path / "p.npy", np.full((20, 3), 0.1))
    assert complete_main(["--checkpoint", str(export), "--input", str(tmp_path / "p.npy"), "--num", "1", "--steps",
                          "2", "--normalize", "none", "--out", str(tmp_path / "o")]) == 0
    assert np.isfinite(read_points(tmp_path / "o" / "completion_000.ply")).all()
    with pytest.raises(PointCloudError, match="p.npy: all 20 points coincide"):
        read_points(tmp_path / "p.npy", need_extent=True)


def test_a_npy_point_file_numpy_cannot_read_is_a_point_cloud_error(tmp_path):
    """The point reader's own error (which the command lines report in one line), not the core's plain DataError."""
    (tmp_path / "scan.npy").write_text("0 0 0\n1 1 1\n")
    with pytest.raises(PointCloudError, match=r"scan.npy: not a readable .npy array"):
        read_points(tmp_path / "scan.npy")


def test_scan_writes_an_upper_case_ply_suffix(tmp_path):
    np.save(tmp_path / "cloud.npy", np.random.default_rng(0).normal(size=(500, 3)))
    out = tmp_path / "scan.PLY"
    assert pointcloud_cli(["scan", "--input", str(tmp_path / "cloud.npy"), "--out", str(out),
                           "--view", "1", "0", "0"]) == 0
    assert 0 < len(read_points(out)) < 500
