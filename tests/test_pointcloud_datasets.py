"""File datasets: PointFlow's ShapeNet PC15k layout, mesh/point folders with a cache, normalisation round trips."""

import os
import warnings

import numpy as np
import pytest
import torch
import trimesh

from multigen.config import ConfigError, load_config
from multigen.export import export_model, load_pretrained
from pointcloud import datasets
from pointcloud.cli import main as pointcloud_cli
from pointcloud.datasets import SHAPENET_SYNSETS, Normalizer, Resampled, ShapeFolder, ShapeNetPC15k
from pointcloud.domain import PointCloud, PointCloudConfig
from pointcloud.io import PointCloudError, read_points


@pytest.fixture
def pc15k(tmp_path):
    """A miniature PC15k tree: chairs (train/val/test) and airplanes (train/test only)."""
    rng = np.random.default_rng(0)
    for synset, splits in [(SHAPENET_SYNSETS["chair"], ("train", "val", "test")),
                           (SHAPENET_SYNSETS["airplane"], ("train", "test"))]:
        for split in splits:
            folder = tmp_path / synset / split
            folder.mkdir(parents=True)
            for i in range(3):
                np.save(folder / f"{split}_{i}.npy", rng.normal(size=(600, 3)).astype(np.float32))
    return tmp_path


def test_shapenet_by_name_or_synset_with_fixed_subsets(pc15k):
    train = ShapeNetPC15k(pc15k, ["chair", SHAPENET_SYNSETS["airplane"]], "train", points=128)
    assert len(train) == 6 and train[0].shape == (128, 3) and train[0].dtype == torch.float64
    assert torch.equal(train[4], train[4])  # the same subset at every access (exact resume)
    full = np.load(train.files[0])
    assert np.isin(train[0].numpy(), full).all()  # points are the file's, unchanged
    # airplanes have no val folder: val falls back to test
    val = ShapeNetPC15k(pc15k, ["airplane"], "val", points=64)
    assert all(f.parent.name == "test" for f in val.files)
    assert {f.parent.name for f in ShapeNetPC15k(pc15k, ["chair"], "val", points=64).files} == {"val"}


def test_training_clouds_drawn_afresh_from_a_pool(pc15k):
    """``data.pool``: each access draws ``data.points`` distinct points of the shape's fixed pool, from the global
    RNG (so a resumed run, whose RNG state is restored, draws the same); validation clouds stay fixed."""
    cfg = load_config(PointCloudConfig, overrides=["data.source=shapenet", f"data.root={pc15k}", "data.points=64",
                                                   "data.pool=500", "data.normalization=shape"])
    domain = PointCloud(cfg)
    train, pools = domain.build_dataset("train"), domain.fixed_clouds("train", 500)
    assert isinstance(train, Resampled) and len(train) == len(pools) == 3
    torch.manual_seed(0)
    a, b = train[1], train[1]
    assert a.shape == (64, 3) and not torch.equal(a, b)  # a new sampling of the same shape
    pool = pools[1]
    for cloud in (a, b):
        hits = (cloud[:, None] == pool[None]).all(-1)  # (64, 500): which pool point each drawn point is
        assert (hits.sum(1) == 1).all() and (hits.sum(0) <= 1).all()  # every point from the pool, none twice
    torch.manual_seed(0)
    assert torch.equal(train[1], a)  # a function of the RNG state
    val = domain.build_dataset("val")
    assert not isinstance(val, Resampled) and torch.equal(val[0], val[0])
    bank = domain.fixed_clouds("train")  # the nearest-training-shape baseline searches fixed clouds
    assert torch.equal(bank[2], bank[2]) and bank[2].shape == (64, 3)
    # a pool larger than a file is the whole file (PC15k files have 15 000 points; these 600)
    big = PointCloud(load_config(PointCloudConfig, overrides=["data.source=shapenet", f"data.root={pc15k}",
                                                              "data.points=64", "data.pool=15000"]))
    big.fit()
    assert big.fixed_clouds("train", 15000)[0].shape == (600, 3) and big.build_dataset("train")[0].shape == (64, 3)
    with pytest.raises(ConfigError, match="data.pool=32: training clouds of data.points=64"):
        PointCloud(load_config(PointCloudConfig, overrides=["data.points=64", "data.pool=32"]))
    with pytest.raises(PointCloudError, match="shape 0 has 500 points; 600 are drawn"):
        Resampled(pools, 600)[0]


def test_shapenet_errors_name_the_problem(pc15k, tmp_path):
    with pytest.raises(FileNotFoundError, match="category 'sofa'"):
        ShapeNetPC15k(pc15k, ["sofa"], "train", points=64)
    with pytest.raises(FileNotFoundError, match="not found"):
        ShapeNetPC15k(tmp_path / "nowhere", ["chair"], "train", points=64)
    with pytest.raises(PointCloudError, match="600 points; the model takes 1000"):
        ShapeNetPC15k(pc15k, ["chair"], "train", points=1000)[0]
    bad = pc15k / SHAPENET_SYNSETS["chair"] / "train" / "train_0.npy"
    arr = np.load(bad)
    arr[5, 1] = np.nan
    np.save(bad, arr)
    with pytest.raises(PointCloudError, match="train_0.npy: point 5 is not finite"):
        ShapeNetPC15k(pc15k, ["chair"], "train", points=64)[0]


@pytest.fixture
def mesh_folder(tmp_path):
    """Boxes and cylinders as .obj/.off/.stl/.ply meshes, offset to (5, 5, 5) and about 3 units large."""
    root = tmp_path / "meshes"
    (root / "sub").mkdir(parents=True)
    for i in range(10):
        mesh = trimesh.creation.box(extents=(3, 2, 1 + 0.1 * i)) if i % 2 else trimesh.creation.cylinder(1.5, 2.5)
        mesh.apply_translation((5, 5, 5))
        mesh.export(root / ("sub" if i % 3 else "") / f"shape_{i}.{['obj', 'off', 'stl', 'ply'][i % 4]}")
    np.save(root / "points.npy", np.random.default_rng(0).normal(5, 1, (500, 3)))
    return root


def test_shape_folder_splits_samples_meshes_and_caches(mesh_folder, monkeypatch):
    train, val = ShapeFolder(mesh_folder, "train", 256), ShapeFolder(mesh_folder, "val", 256)
    assert len(train) + len(val) == 11 and len(val) == 1 and not set(train.files) & set(val.files)
    first = [train[i] for i in range(len(train))]
    assert all(c.shape == (256, 3) and torch.isfinite(c).all() for c in first)
    assert len(list((mesh_folder / ".multigen_cache").glob("*.npy"))) == len(train)
    assert len(ShapeFolder(mesh_folder, "train", 128)[0]) == 128  # another size is another cache entry
    pooled = ShapeFolder(mesh_folder, "train", 2048, least=128)  # training pools (data.pool) of up to 2 048 points
    k = next(i for i, f in enumerate(pooled.files) if f.name == "points.npy")
    mesh = next(i for i, f in enumerate(pooled.files) if f.suffix == ".obj")
    assert len(pooled[k]) == 500 and len(pooled[mesh]) == 2048  # a point file whole, a mesh sampled to the pool
    with pytest.raises(PointCloudError, match="500 points; the model takes 2048"):
        ShapeFolder(mesh_folder, "train", 2048)[k]  # the pool's cache entry is not a fixed cloud's
    monkeypatch.setattr(datasets, "read_points", lambda *a, **k: pytest.fail("read a cached shape again"))
    again = ShapeFolder(mesh_folder, "train", 256)
    assert all(torch.equal(a, again[i]) for i, a in enumerate(first))


def test_processes_filling_one_cache_at_once_do_not_collide(mesh_folder, monkeypatch):
    """The processes of a run (every one calls ``fit``) cache the same shape at the same moment: here a second
    process, with its own id, saves and renames the shape between this one's save and rename."""
    shapes = ShapeFolder(mesh_folder, "train", 64)
    save = np.save

    def save_while_another_process_does(path, cloud):
        save(path, cloud)
        if not getattr(save_while_another_process_does, "busy", False):
            save_while_another_process_does.busy = True
            with monkeypatch.context() as m:
                m.setattr(os, "getpid", lambda: 999_999)
                ShapeFolder(mesh_folder, "train", 64)[0]

    monkeypatch.setattr(datasets.np, "save", save_while_another_process_does)
    first = shapes[0]
    assert torch.equal(first, ShapeFolder(mesh_folder, "train", 64)[0])
    assert not list((mesh_folder / ".multigen_cache").glob("*tmp*"))


def test_shape_folder_skips_its_cache_named_absolute_beside_a_relative_root(mesh_folder, monkeypatch):
    monkeypatch.chdir(mesh_folder.parent)
    cache = (mesh_folder / "cache").resolve()
    first = ShapeFolder(mesh_folder.name, "train", 64, cache_dir=cache)
    [first[i] for i in range(len(first))]  # fills the cache inside the folder
    assert len(list(cache.glob("*.npy"))) == len(first)
    assert ShapeFolder(mesh_folder.name, "train", 64, cache_dir=cache).files == first.files


def test_a_small_folder_holds_out_its_last_file_and_a_degenerate_file_is_named(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(tmp_path / f"s{i}.npy", rng.normal(size=(50, 3)))
    train, val = ShapeFolder(tmp_path, "train", 32), ShapeFolder(tmp_path, "val", 32)
    assert [p.name for p in train.files] == ["s0.npy", "s1.npy"] and [p.name for p in val.files] == ["s2.npy"]
    np.save(tmp_path / "s1.npy", np.ones((50, 3)))  # every point the same: no extent to normalise
    with pytest.raises(PointCloudError, match="s1.npy: all 50 points coincide"):
        ShapeFolder(tmp_path, "train", 32)[1]
    for extra in tmp_path.glob("s[12].npy"):
        extra.unlink()
    with pytest.raises(FileNotFoundError, match="no val shapes"):  # one file: nothing to hold out
        ShapeFolder(tmp_path, "val", 32)


def test_point_text_files_are_read_with_spaces_tabs_or_commas(tmp_path):
    """The same cloud (with normals, which are dropped) as ``x y z``, tab- and comma-separated text."""
    cloud = np.random.default_rng(0).normal(size=(50, 6))
    read = {}
    for name, sep in (("spaces.xyz", " "), ("tabs.txt", "\t"), ("commas.xyz", ",")):
        np.savetxt(tmp_path / name, cloud, delimiter=sep, fmt="%.9e")
        read[name] = read_points(tmp_path / name)
    assert read["spaces.xyz"].shape == (50, 3)
    assert all(np.array_equal(r, read["spaces.xyz"]) for r in read.values())
    np.testing.assert_allclose(read["commas.xyz"], cloud[:, :3], rtol=1e-8)


def test_empty_point_files_say_so(tmp_path):
    for name in ("empty.xyz", "empty.txt"):
        (tmp_path / name).write_text("")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy's own warning about the empty file is not passed on
            with pytest.raises(PointCloudError, match=f"{name} has no points"):
                read_points(tmp_path / name)
    for name, says in (("empty.npy", "empty.npy: not a readable .npy array"), ("empty.pt", "empty.pt could not be read")):
        (tmp_path / name).write_bytes(b"")  # zero bytes: torch raises EOFError
        with pytest.raises(PointCloudError, match=says):
            read_points(tmp_path / name)


def test_channels_first_clouds_are_refused(tmp_path):
    cloud = np.random.default_rng(0).normal(size=(500, 3))
    np.save(tmp_path / "pvd.npy", cloud.T)  # (3, N), as PVD's code stores clouds: not three points of N columns
    with pytest.raises(PointCloudError, match=r"pvd.npy: shape \(3, 500\) looks channels-first"):
        read_points(tmp_path / "pvd.npy")
    np.save(tmp_path / "ok.npy", cloud)
    assert read_points(tmp_path / "ok.npy").shape == (500, 3)
    np.savetxt(tmp_path / "normals.xyz", np.eye(3).repeat(2, axis=1))  # three points with normals: (3, 6)
    assert read_points(tmp_path / "normals.xyz").shape == (3, 3)
    with pytest.raises(IsADirectoryError, match="is a folder, not a point cloud file"):  # (it was "not found")
        read_points(tmp_path)


def test_a_ply_scan_stored_triangulated_is_its_points_where_asked(tmp_path):
    """A completion's partial keeps every scan point: a .ply with faces is read as its vertices there, while a
    training folder samples its surface."""
    import trimesh

    y, x = np.mgrid[0:5, 0:5]
    vertices = np.stack([x.ravel(), y.ravel(), (x * y).ravel() * 0.1], 1).astype(np.float32)  # as PLY stores them
    faces = [[i * 5 + j, i * 5 + j + 1, i * 5 + j + 5] for i in range(4) for j in range(4)]
    trimesh.Trimesh(vertices, faces, process=False).export(tmp_path / "scan.ply")
    assert np.array_equal(read_points(tmp_path / "scan.ply", ply_as_points=True), vertices)
    assert read_points(tmp_path / "scan.ply", num_points=40).shape == (40, 3)


def test_shape_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no train shapes"):
        ShapeFolder(tmp_path, "train", 64)
    (tmp_path / "broken.obj").write_text("v 0 0 0\nf 1 2 3\n")
    with pytest.raises(PointCloudError, match="broken.obj"):
        ShapeFolder(tmp_path, "train", 64)[0]


def test_normalizers_round_trip():
    cloud = torch.randn(300, 3, dtype=torch.float64) * 4 + 7
    for mode in ("shape", "global", "none"):
        n = Normalizer.fit([cloud, cloud + 1]) if mode == "global" else Normalizer(mode)
        out = n(cloud)
        if mode != "none":
            assert out.norm(dim=1).max() <= 1 + 1e-5
        if mode != "shape":
            assert torch.allclose(n.invert(out).double(), cloud, atol=1e-4)
    with pytest.raises(ValueError, match="unknown normalization"):
        Normalizer("minmax")


def test_folder_domain_records_global_normalization_and_samples_in_data_units(mesh_folder, tmp_path):
    cfg = load_config(PointCloudConfig, None, [f"data.root={mesh_folder}", "data.source=folder", "data.points=128",
                                               "model.width=0.25", "model.voxel_resolution=0.25"])
    domain = PointCloud(cfg)
    domain.fit()
    centre, scale = np.array(cfg.data.centre), cfg.data.scale
    assert np.abs(centre - 5).max() < 0.5 and 1.5 < scale < 4.5
    train = domain.build_dataset("train")
    assert max(float(train[i].norm(dim=1).max()) for i in range(len(train))) <= 1 + 1e-5
    export = export_model(domain.build_model(), domain, tmp_path / "export")
    again = load_pretrained(export).domain
    assert again.cfg.data.scale == scale and again.normalizer.mode == "global"
    assert pointcloud_cli(["sample", "--checkpoint", str(export), "--num", "1", "--steps", "2",
                           "--out", str(tmp_path / "s")]) == 0
    points = read_points(tmp_path / "s" / "sample_000.ply")
    assert np.abs(points.mean(0) - centre).max() < scale  # in the data's units, around the data's centre


def test_extra_columns_of_an_xyz_file_are_not_read_as_coordinates(tmp_path):
    from pointcloud.io import read_points

    points = np.random.default_rng(0).normal(size=(10, 6))  # x y z and normals
    np.savetxt(tmp_path / "a.xyz", points)
    np.testing.assert_allclose(read_points(tmp_path / "a.xyz"), points[:, :3])


def test_a_shape_far_from_the_origin_keeps_its_detail_through_normalisation(tmp_path):
    """A 2 m cube at map coordinates (500 km, 4 000 km): rounded to float32 before it was normalised, its 256
    points kept 9 distinct heights. Kept in float64 until the normaliser, every point keeps its own."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        for i in range(2):
            np.save(tmp_path / split / f"{i}.npy", np.array([5e5, 4e6, 50.0]) + rng.uniform(-1, 1, (4000, 3)))
    for normalization in ("global", "shape"):
        domain = PointCloud(load_config(PointCloudConfig, overrides=[
            "data.source=folder", f"data.root={tmp_path}", "data.points=256", f"data.normalization={normalization}"]))
        domain.fit()
        cloud = domain.build_dataset("val")[0]
        assert cloud.dtype == torch.float32 and all(len(cloud[:, k].unique()) > 250 for k in range(3))


def test_folder_splits_of_modelnet_and_hidden_files(tmp_path):
    """``<class>/train`` and ``<class>/test`` are the splits (test files were trained on, 6 of 20), and files or
    folders whose names start with a dot are not shapes (Jupyter's checkpoint copies were trained on)."""
    cube = np.random.default_rng(0).normal(size=(300, 3))
    for name in ("chair/train/a", "chair/train/b", "chair/test/c", "desk/train/d", "desk/test/e",
                 "chair/train/.ipynb_checkpoints/a-checkpoint", "chair/train/._b"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / f"{name}.npy", cube)
    names = {split: sorted(f.stem for f in ShapeFolder(tmp_path, split, 64).files) for split in ("train", "val")}
    assert names == {"train": ["a", "b", "d"], "val": ["c", "e"]}


def test_evaluation_of_file_data_spreads_over_its_categories_and_needs_two_shapes(pc15k, tmp_path):
    """Held-out files come sorted by category: the first eval.num_shapes were all chairs, against samples of every
    class. And one held-out shape scored a perfect coverage and 1-NNA for any model: an error before training."""
    from multigen.domain import DataError

    cfg = load_config(PointCloudConfig, overrides=[
        "data.source=shapenet", f"data.root={pc15k}", "data.categories=[chair,airplane]", "data.points=64",
        "eval.num_shapes=2", "data.normalization=shape"])
    domain = PointCloud(cfg)
    val = domain.build_dataset("val")
    labels = domain.class_labels("val")
    assert labels.tolist() == [0, 0, 0, 1, 1, 1] and labels[domain.held_out_picks(len(val))].tolist() == [0, 1]
    domain.check_held_out(val)
    (two := tmp_path / "two").mkdir()
    np.save(two / "a.npy", np.random.default_rng(0).normal(size=(300, 3)))
    np.save(two / "b.npy", np.random.default_rng(1).normal(size=(300, 3)))
    one = PointCloud(load_config(PointCloudConfig, overrides=[
        "data.source=folder", f"data.root={two}", "data.points=64", "data.normalization=shape"]))
    with pytest.raises(DataError, match="the held-out split has 1 shape; evaluation compares sets of at least 2"):
        one.check_held_out(one.build_dataset("val"))


def test_a_given_centre_is_kept_and_settings_that_contradict_are_named(pc15k):
    """README: the centre and scale are fitted 'each unless given' (a given centre was overwritten); a centre of two
    coordinates was a shape error deep in the normaliser; a category named twice made two classes of one."""
    base = ["data.source=shapenet", f"data.root={pc15k}", "data.points=64"]
    domain = PointCloud(load_config(PointCloudConfig, overrides=[*base, "data.centre=[1.0,2.0,3.0]"]))
    domain.fit()
    d = domain.cfg.data
    raw = domain._raw_dataset("train", d.pool)  # the points training draws from
    far = max(float((raw[i] - torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).norm(dim=1).max())
              for i in range(len(raw)))
    assert list(d.centre) == [1.0, 2.0, 3.0] and d.scale == pytest.approx(far)
    with pytest.raises(ConfigError, match=r"data.centre: 3 coordinates \(x, y, z\), or none to fit them"):
        PointCloud(load_config(PointCloudConfig, overrides=[*base, "data.centre=[1.0,2.0]", "data.scale=5"]))
    with pytest.raises(ConfigError, match="a category named twice"):
        PointCloud(load_config(PointCloudConfig,
                               overrides=[*base, f"data.categories=[chair,'{SHAPENET_SYNSETS['chair']}']"]))


def test_clouds_outside_the_unit_ball_without_normalisation_are_warned_of(pc15k):
    domain = PointCloud(load_config(PointCloudConfig, overrides=[
        "data.source=shapenet", f"data.root={pc15k}", "data.points=64", "data.normalization=none"]))
    with pytest.warns(UserWarning, match="data.normalization=none: training clouds reach .* use global or shape"):
        domain.fit()
