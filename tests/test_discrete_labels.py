"""Label maps for D3PM: reading label images and arrays, resizing and cropping, the built-in scenes, the domain's
fitted classes and baselines, and the CLI's samples and scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from discrete.data import TokenError
from discrete.domain import Discrete, DiscreteConfig, save_grid_picture
from discrete.labels import (SCENE_CLASSES, LabelMaps, SceneMaps, boundary_rate, check_ids, class_distance, colour,
                             infer_classes, label_files, palette, read_label_image, read_label_maps, scene_map,
                             short_side_to, write_label_image)
from multigen.config import ConfigError, load_config


def _domain(*overrides: str) -> Discrete:
    return Discrete(load_config(DiscreteConfig, overrides=["data.source=labels", "process.timesteps=8",
                                                           "model.dim=8", "model.depth=1", "data.num_train=256",
                                                           *overrides]))


def _png(path, ids, mode: str = "L") -> None:
    img = Image.fromarray(np.asarray(ids, dtype=np.uint16 if mode == "I;16" else np.uint8))
    if mode == "P":
        img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (3 * 253))
    img.save(path)


def test_label_images_give_their_ids_not_their_colours(tmp_path):
    ids = np.array([[0, 1, 2], [2, 1, 0]])
    _png(tmp_path / "p.png", ids, "P")  # palette colours red, green, blue: the ids are the indices
    _png(tmp_path / "l.png", ids * 7, "L")
    _png(tmp_path / "w.png", ids * 20_000, "I;16")  # 16-bit ids above 255 survive
    Image.fromarray(ids.astype(bool)).save(tmp_path / "b.png")  # bilevel
    assert torch.equal(read_label_image(tmp_path / "p.png"), torch.tensor(ids))
    assert torch.equal(read_label_image(tmp_path / "l.png"), torch.tensor(ids * 7))
    assert torch.equal(read_label_image(tmp_path / "w.png"), torch.tensor(ids * 20_000))
    assert torch.equal(read_label_image(tmp_path / "b.png"), torch.tensor(ids.astype(bool)).long())
    assert read_label_image(tmp_path / "p.png").dtype == torch.int64


def test_colour_float_lossy_and_corrupt_images_are_refused_by_name(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(TokenError, match=r"rgb\.png is a RGB image; .*palette .*data\.pattern"):
        read_label_image(tmp_path / "rgb.png")
    Image.new("F", (4, 4)).save(tmp_path / "f.tif")
    with pytest.raises(TokenError, match=r"f\.tif is a F image"):
        read_label_image(tmp_path / "f.tif")
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    with pytest.raises(TokenError, match=r"cut\.png is not a readable label image"):
        read_label_image(tmp_path / "cut.png")
    Image.new("L", (4, 4)).save(tmp_path / "grey.png", format="JPEG", quality=100)  # lossy whatever its name
    with pytest.raises(TokenError, match=r"grey\.png is a JPEG image; label images are PNG, BMP, TIFF \(JPEG's "
                                         r"compression changes the ids\)"):
        read_label_image(tmp_path / "grey.png")
    Image.new("P", (4, 4)).save(tmp_path / "p.gif")
    with pytest.raises(TokenError, match=r"p\.gif is a GIF image; label images are PNG, BMP, TIFF$"):
        read_label_image(tmp_path / "p.gif")


@pytest.mark.parametrize("classes", [6, 256, 300])
def test_write_label_image_round_trips(tmp_path, classes):
    m = torch.randint(0, classes, (5, 7), generator=torch.Generator().manual_seed(0))
    m[0, 0] = classes - 1
    write_label_image(m, tmp_path / "m.png", classes)
    assert torch.equal(read_label_image(tmp_path / "m.png"), m)
    assert Image.open(tmp_path / "m.png").mode == ("P" if classes <= 256 else "I;16")


def test_a_folder_lists_label_images_by_pattern_in_path_order_skipping_hidden_and_jpeg(tmp_path):
    for name in ["b/x_labelIds.png", "a/y_labelIds.png", "a/y_color.png", "a/.z_labelIds.png", ".h/w_labelIds.png",
                 "c.PNG", "d.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        _png(tmp_path / name, [[1]])
    names = [p.relative_to(tmp_path).as_posix() for p in label_files(tmp_path)]
    assert names == ["a/y_color.png", "a/y_labelIds.png", "b/x_labelIds.png", "c.PNG"]
    names = [p.relative_to(tmp_path).as_posix() for p in label_files(tmp_path, "*_labelIds.png")]
    assert names == ["a/y_labelIds.png", "b/x_labelIds.png"]
    for name in ["n/m10.png", "n/m2.png", "n/m1.png", "n2/m1.png", "n10/m1.png"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        _png(tmp_path / name, [[1]])
    names = [p.relative_to(tmp_path).as_posix() for p in label_files(tmp_path, "*m*")]
    assert names == ["n/m1.png", "n/m2.png", "n/m10.png", "n2/m1.png", "n10/m1.png"]  # numbers by value
    with pytest.raises(TokenError, match=r"no label images matching '\*\.tif' .*JPEG is not one"):
        read_label_maps(tmp_path, "*.tif")
    with pytest.raises(FileNotFoundError, match="label maps .*nothing not found"):
        read_label_maps(tmp_path / "nothing")


def test_a_npy_of_label_maps_and_its_refusals(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.save(tmp_path / "m.npy", arr)
    maps, names = read_label_maps(tmp_path / "m.npy")
    assert names == [f"{tmp_path / 'm.npy'}[0]", f"{tmp_path / 'm.npy'}[1]"]
    assert torch.equal(torch.stack(maps), torch.tensor(arr, dtype=torch.int64))
    for bad in (arr[0], arr.astype(np.float32), arr[:0]):
        np.save(tmp_path / "bad.npy", bad)
        with pytest.raises(TokenError, match=r"bad\.npy must hold label maps as a non-empty integer array \(N, H, W\)"):
            read_label_maps(tmp_path / "bad.npy")
    (tmp_path / "m.txt").write_text("0 1")
    with pytest.raises(TokenError, match=r"a folder of label images \(\.png, .*\), one of them, or a \.npy"):
        read_label_maps(tmp_path / "m.txt")


def test_ids_outside_the_classes_name_their_map():
    maps = [torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 255], [1, 1]])]
    check_ids(maps, ["a", "b"], 256)
    with pytest.raises(TokenError, match=r"^b: class id 255 is outside \[0, 6\) \(data\.vocab_size\) \(255 is the "):
        check_ids(maps, ["a", "b"], 6)
    with pytest.raises(TokenError, match=r"^a: class id -1 is outside \[0, 6\) \(data\.vocab_size\)$"):
        check_ids([torch.tensor([[-1]])], ["a"], 6)


def test_nearest_resizing_keeps_ids_and_aspect():
    m = torch.arange(6).reshape(2, 3)
    up = short_side_to(m, 4)  # 2x: each id becomes a 2x2 block
    assert torch.equal(up, m.repeat_interleave(2, 0).repeat_interleave(2, 1))
    big = torch.arange(64 * 96).reshape(64, 96)
    down = short_side_to(big, 32)
    assert down.shape == (32, 48) and torch.equal(down, big[1::2, 1::2])  # the pixel nearest each new centre
    assert short_side_to(big.T, 32).shape == (48, 32)
    assert short_side_to(torch.zeros(5, 500, dtype=torch.long), 2).shape == (2, 200)


def test_label_maps_are_cut_square_centred_or_at_random():
    m = torch.arange(4 * 8).reshape(4, 8)
    val = LabelMaps([m], 4, random_crop=False)
    assert torch.equal(val[0], m[:, 2:6]) and val[0].dtype == torch.int64
    train = LabelMaps([m], 4, random_crop=True)
    torch.manual_seed(0)
    lefts = {int(train[0][0, 0]) for _ in range(64)}
    assert lefts == {0, 1, 2, 3, 4}  # every square of the map, none outside it


def test_scenes_are_seeded_layouts_of_every_class_with_held_out_seeds_apart():
    a, b = scene_map(32, 7), scene_map(32, 7)
    assert torch.equal(a, b) and a.shape == (32, 32) and a.dtype == torch.int64
    scenes = torch.stack([SceneMaps(64, 32)[i] for i in range(64)])
    assert set(scenes.unique().tolist()) == set(range(len(SCENE_CLASSES)))
    assert (scenes[:, 0] == 0).float().mean() > 0.6 and (scenes[:, -1] != 0).all()  # sky on top, never at the foot
    held_out = torch.stack([SceneMaps(64, 32, "val")[i] for i in range(64)])
    assert not (held_out[:, None] == scenes[None]).flatten(2).all(-1).any()  # no held-out scene is a training one
    with pytest.raises(IndexError):
        SceneMaps(4, 32)[4]


def test_palette_is_voc_and_distinct():
    p = palette(256)
    assert p[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]] and p[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in p.tolist()}) == 256


def test_the_domain_fits_classes_from_both_splits_and_holds_out_the_last_tenth(tmp_path):
    for i in range(10):
        _png(tmp_path / f"m{i:02d}.png", np.full((6, 8), 3 if i < 9 else 4))  # id 4 only in the held-out map
    domain = _domain(f"data.path={tmp_path}", "data.size=4")
    with pytest.raises(ValueError, match="data.vocab_size is 0: call fit"):
        domain.data_vocab
    domain.fit()
    assert domain.cfg.data.vocab_size == 5 and domain.vocab == 6  # and the mask token
    assert len(domain.build_dataset("train")) == 9 and domain.build_dataset("val")[0].unique().tolist() == [4]
    assert domain.sample_shape() == (4, 4)
    with pytest.raises(TokenError, match=r"m09\.png: class id 4 is outside \[0, 4\)"):
        _domain(f"data.path={tmp_path}", "data.vocab_size=4").fit()
    one_held_out = _domain(f"data.path={tmp_path}", f"data.val_path={tmp_path / 'm09.png'}", "data.size=4")
    one_held_out.fit()  # one label image as the held-out maps, left out of the training folder's ten
    assert len(one_held_out.build_dataset("train")) == 9 and len(one_held_out.build_dataset("val")) == 1
    assert one_held_out.cfg.data.vocab_size == 5
    with pytest.raises(TokenError, match="the held-out maps are the training maps themselves"):
        _domain(f"data.path={tmp_path}", f"data.val_path={tmp_path}/").fit()
    one = tmp_path / "one"
    one.mkdir()
    _png(one / "m.png", [[0]])
    with pytest.raises(TokenError, match="holds one label map: it cannot be split"):
        _domain(f"data.path={one}").fit()


def test_a_held_out_folder_picked_by_the_pattern_and_the_built_in_scenes(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    for i in range(3):
        _png(tmp_path / "train" / f"{i}_labelIds.png", np.full((4, 4), i))
    _png(tmp_path / "val" / "v_labelIds.png", np.full((4, 4), 1))
    Image.new("RGB", (4, 4)).save(tmp_path / "val" / "v_color.png")  # not a label image: the pattern leaves it
    domain = _domain(f"data.path={tmp_path / 'train'}", f"data.val_path={tmp_path / 'val'}", "data.size=4",
                     "data.pattern=*_labelIds.png")
    domain.fit()
    assert len(domain.build_dataset("train")) == 3 and len(domain.build_dataset("val")) == 1
    scenes = _domain("data.num_train=10")
    scenes.fit()
    assert scenes.data_vocab == len(SCENE_CLASSES) and len(scenes.build_dataset("train")) == 10
    assert isinstance(scenes.build_dataset("val"), SceneMaps)


def test_label_configs_are_checked_before_a_run():
    with pytest.raises(ConfigError, match="data.size: .* must be even; got 31"):
        _domain("data.size=31")
    with pytest.raises(ConfigError, match="data.val_path: given without data.path"):
        _domain("data.val_path=x")
    domain = _domain()
    domain.fit()
    with pytest.raises(ValueError, match=r"length=4: labels grids have a fixed shape \(32, 32\)"):
        domain.sample_settings(length=4)


def test_the_layout_baseline_is_each_positions_add_one_cross_entropy(tmp_path):
    maps = np.zeros((10, 2, 2), dtype=np.uint8)
    maps[:, 0, 1] = 1  # position (row 0, column 1) always class 1, the rest class 0
    maps[:5, 1, 0] = 2  # (row 1, column 0) class 2 in half of the training maps
    np.save(tmp_path / "m.npy", maps)
    domain = _domain(f"data.path={tmp_path / 'm.npy'}", "data.size=2", "data.vocab_size=3")
    domain.fit()
    data = torch.tensor([[[0, 1], [2, 0]]])
    n = 9  # training maps; add-one over 3 classes at every position
    expected = -np.mean([np.log2((n + 1) / (n + 3)), np.log2((n + 1) / (n + 3)), np.log2(6 / (n + 3)),
                         np.log2((n + 1) / (n + 3))])
    scores = domain.baselines(data)
    assert abs(scores["baseline_position_bits"] - expected) < 1e-12
    counts = np.array([22 + 1, 9 + 1, 5 + 1])  # over all 36 training pixels
    expected = -(2 * np.log2(counts[0] / counts.sum()) + np.log2(counts[1] / counts.sum())
                 + np.log2(counts[2] / counts.sum())) / 4
    assert abs(scores["baseline_unigram_bits"] - expected) < 1e-12
    with pytest.raises(ValueError, match=r"grids of shape \(1, 4\) scored against training grids of shape \(2, 2\)"):
        domain.baselines(torch.zeros(1, 1, 4, dtype=torch.long))


def test_the_baselines_read_the_training_maps_once_per_domain(tmp_path, monkeypatch):
    np.save(tmp_path / "m.npy", np.arange(40, dtype=np.uint8).reshape(10, 2, 2) % 3)
    domain = _domain(f"data.path={tmp_path / 'm.npy'}", "data.size=2", "data.vocab_size=3")
    domain.fit()
    reads = []
    read = Discrete._training_tokens
    monkeypatch.setattr(Discrete, "_training_tokens", lambda self: reads.append(1) or read(self))
    data = torch.tensor([[[0, 1], [2, 0]]])
    first = domain.baselines(data)
    assert domain.baselines(data) == first and domain.unigram_bits(data) == first["baseline_unigram_bits"]
    assert len(reads) == 1


def test_a_model_evaluates_against_both_baselines_and_draws_pictures(tmp_path):
    domain = _domain("data.size=8", "eval.num_sequences=2")
    domain.fit()
    model = domain.build_model()
    scores = domain.evaluate(model, domain.build_dataset("val"))
    assert set(scores) == {"elbo_bits_per_token", "elbo_bits_stderr", "baseline_unigram_bits",
                           "baseline_position_bits"}
    assert scores["baseline_position_bits"] < scores["baseline_unigram_bits"]
    grids = domain.sample(model, 3, steps=4, generator=torch.Generator().manual_seed(0))
    assert grids.shape == (3, 8, 8) and ((grids >= 0) & (grids < 6)).all()
    out = domain.save_samples(grids, tmp_path / "step")
    picture = np.asarray(Image.open(out))
    assert out.suffix == ".png" and picture.shape == (17 * 8, 17 * 8, 3)  # 2x2 tiles of 8, a gap between, 8x
    assert (picture[:64, :64] == palette(6)[grids[0]].numpy().repeat(8, 0).repeat(8, 1)).all()


@pytest.fixture(scope="module")
def label_export(tmp_path_factory):
    from multigen.export import export_model

    domain = _domain("data.size=8")
    domain.fit()
    return str(export_model(domain.build_model(), domain, tmp_path_factory.mktemp("labels") / "export"))


def test_cli_samples_label_maps_as_images_it_scores_back(label_export, tmp_path, capsys):
    from discrete.cli import main

    out = tmp_path / "drawn"
    assert main(["sample", "--checkpoint", label_export, "--num", "3", "--steps", "4", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["sample_000.png", "sample_001.png", "sample_002.png"]
    assert (tmp_path / "drawn.png").is_file() and "wrote 3 samples to" in capsys.readouterr().out
    maps, _ = read_label_maps(out)
    assert all(m.shape == (8, 8) and m.max() < 6 for m in maps)
    assert main(["sample", "--checkpoint", label_export, "--num", "1", "--out", str(out)]) == 2
    assert "already holds samples" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", label_export, "--prompt", "a", "--out", str(tmp_path / "x")]) == 2
    assert "--prompt, --infill and --length are for text and token models" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", label_export]) == 2
    assert "name a folder for them with --out" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", label_export, "--out", str(tmp_path / "p.png")]) == 2
    assert "names a picture; it is the folder for the samples" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()
    assert main(["sample", "--checkpoint", label_export, "--num", "1", "--steps", "2", "--out",
                 str(tmp_path / "run.v2")]) == 0
    assert (tmp_path / "run.v2.png").is_file() and (tmp_path / "run.v2" / "sample_000.png").is_file()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", label_export, "--data", str(out), "--batch-size", "2"]) == 0
    assert f"{out}: " in (printed := capsys.readouterr().out) and "bits/pixel" in printed and "3 sequence(s)" in printed


def test_cli_eval_names_a_label_file_outside_the_classes(label_export, tmp_path, capsys):
    from discrete.cli import main

    _png(tmp_path / "m.png", np.full((8, 8), 9))
    assert main(["eval", "--checkpoint", label_export, "--data", str(tmp_path)]) == 2
    assert f"{tmp_path / 'm.png'}: class id 9 is outside [0, 6)" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", label_export, "--data", str(tmp_path), "--pattern", "*.tif"]) == 2
    assert "no label images matching '*.tif'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_tiny_model_beats_the_layout_baseline_on_held_out_scenes(tmp_path):
    """Where a scene's horizon, road and objects are, each position's training frequencies know only on average:
    a model that has learnt the scenes' structure scores the held-out ones well below them (100 steps: 0.475 ± 0.009
    bits/pixel against 0.987; an untrained one scores near log2 7 = 2.8)."""
    from multigen.trainer import read_log, train

    train(Discrete, load_config(DiscreteConfig, None, [
        "data.source=labels", "data.size=16", "process.timesteps=32", "model.dim=16", "model.depth=1",
        "train.optimizer=adamw", "train.batch_size=32", "train.lr=2e-3", "train.adam_betas=[0.9,0.99]",
        "train.lr_decay=none", "train.grad_clip=1", "train.warmup_steps=20", "train.max_steps=100",
        "train.sample_every=0", "train.checkpoint_every=0", "train.tensorboard=false", "train.ema_decay=0.9",
        "eval.num_sequences=128", "eval.batch_size=128", f"train.output_dir={tmp_path}"]))
    m = [r for r in read_log(tmp_path) if "eval/elbo_bits_per_token" in r][-1]
    assert m["eval/elbo_bits_per_token"] + 4 * m["eval/elbo_bits_stderr"] < 0.6 * m["eval/baseline_position_bits"], m
    assert m["eval/baseline_position_bits"] < m["eval/baseline_unigram_bits"] - 0.5, m


@pytest.mark.parametrize("flag,key", [("--min-p", "min_p"), ("--remask", "remask")])
def test_cli_sampling_shares_reach_the_sampler_and_one_outside_0_1_is_refused(label_export, tmp_path, capsys, flag,
                                                                             key):
    """``--min-p`` and ``--remask`` reach the sampler (on an untrained network each changes what is drawn); a value
    outside [0, 1] is an error naming the setting."""
    from discrete.cli import main
    from multigen import load_pretrained

    p = load_pretrained(label_export)
    assert main(["sample", "--checkpoint", label_export, "--num", "3", "--steps", "4", flag, "0.5", "--out",
                 str(tmp_path / "cut")]) == 0
    drawn = torch.stack(read_label_maps(tmp_path / "cut")[0])
    for value, same in ((0.5, True), (0.0, False)):
        expected = p.domain.sample(p.model, 3, steps=4, generator=torch.Generator().manual_seed(0), **{key: value})
        assert torch.equal(drawn, expected) == same, value
    assert main(["sample", "--checkpoint", label_export, "--out", str(tmp_path / "x"), flag, "1.5"]) == 2
    assert f"sample.{key}" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=f"sample.{key}"):
        _domain(f"sample.{key}=-0.1")


def test_cli_infills_the_hole_of_a_label_map_and_keeps_the_rest_exactly(label_export, tmp_path, capsys):
    from discrete.cli import main

    ids = np.tile(np.arange(16) % 6, (16, 1))  # 16x16, cut by the model (size 8) to its centred 8x8 after halving
    ids[4:12, 4:12] = 255  # the hole: the middle half, which halving makes the middle 4x4
    _png(tmp_path / "edit.png", ids)
    out = tmp_path / "filled"
    assert main(["sample", "--checkpoint", label_export, "--num", "2", "--steps", "4", "--out", str(out),
                 "--infill-map", str(tmp_path / "edit.png")]) == 0
    kept = short_side_to(torch.tensor(ids, dtype=torch.long), 8)
    hole = kept == 255
    assert hole.sum() == 16
    for m in read_label_maps(out)[0]:
        assert torch.equal(m[~hole], kept[~hole]) and (m[hole] < 6).all()
    _png(tmp_path / "full.png", np.zeros((8, 8)))
    assert main(["sample", "--checkpoint", label_export, "--out", str(tmp_path / "x"), "--infill-map",
                 str(tmp_path / "full.png")]) == 2
    assert "full.png has no pixel of --hole-id 255 (after it is cut to (8, 8)): nothing to generate" in \
        capsys.readouterr().err
    ids[1, 1] = 7  # a pixel the halving keeps
    _png(tmp_path / "bad.png", ids)
    assert main(["sample", "--checkpoint", label_export, "--out", str(tmp_path / "y"), "--infill-map",
                 str(tmp_path / "bad.png")]) == 2
    assert "bad.png: class id 7 is outside [0, 6)" in capsys.readouterr().err


def test_class_counts_are_inferred_within_limits_and_the_ignore_value_is_named():
    assert infer_classes([torch.tensor([[0, 2]]), torch.tensor([[1]])], ["a", "b"]) == 3
    with pytest.raises(TokenError, match="^b: class id -1 is negative$"):
        infer_classes([torch.tensor([[0]]), torch.tensor([[-1]])], ["a", "b"])
    with pytest.raises(TokenError, match=r"one class id \(0\); a model needs at least two"):
        infer_classes([torch.zeros(2, 2, dtype=torch.long)], ["a"])
    with pytest.raises(TokenError, match="^b: class id 70000; a label map's ids are below 65536$"):
        infer_classes([torch.tensor([[1]]), torch.tensor([[70000]])], ["a", "b"])
    with pytest.raises(TokenError, match=r"^b: class id 255 among 4 others is likely the 'ignore' value .*"
                                         r"data\.vocab_size=256"):
        infer_classes([torch.tensor([[0, 1, 2]]), torch.tensor([[3, 255]])], ["a", "b"])
    assert infer_classes([torch.arange(256).view(16, 16)], ["a"]) == 256  # every id used: 256 real classes


def test_held_out_maps_inside_the_training_folder_are_never_trained_on(tmp_path):
    (tmp_path / "val").mkdir()
    for i in range(4):
        _png(tmp_path / f"t{i}.png", np.full((4, 4), 1))
    _png(tmp_path / "val" / "v.png", np.full((4, 4), 2))
    domain = _domain(f"data.path={tmp_path}", f"data.val_path={tmp_path / 'val'}", "data.size=4")
    domain.fit()
    train = domain.build_dataset("train")
    assert len(train) == 4 and all(train[i].unique().tolist() == [1] for i in range(4))
    assert domain.cfg.data.vocab_size == 3  # the held-out class still counted


def test_scenes_refuse_fewer_classes_and_odd_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"data.vocab_size=3: the built-in scenes have 6 classes \(sky, grass"):
        _domain("data.vocab_size=3")
    frames = [Image.fromarray(np.full((2, 2), i, dtype=np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(TokenError, match=r"pages\.tif holds 3 images; a label image holds one map"):
        read_label_image(tmp_path / "pages.tif")
    np.save(tmp_path / "u.npy", np.full((1, 2, 2), 2**64 - 1, dtype=np.uint64))
    with pytest.raises(TokenError, match=r"u\.npy: class id 18446744073709551615; a label map's ids are below"):
        read_label_maps(tmp_path / "u.npy")


def test_evaluating_label_folders_leaves_the_random_state_alone(tmp_path):
    for i in range(10):
        _png(tmp_path / f"m{i}.png", np.arange(48).reshape(6, 8) % 3)
    domain = _domain(f"data.path={tmp_path}", "data.size=4", "eval.num_sequences=1")
    domain.fit()
    model = domain.build_model()
    torch.manual_seed(0)
    first = domain.evaluate(model, domain.build_dataset("val"))
    after = torch.rand(1)
    torch.manual_seed(1)
    second = domain.evaluate(model, domain.build_dataset("val"))
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(1))
    assert first["baseline_position_bits"] == second["baseline_position_bits"]


def test_cli_samples_digit_grids_as_grey_pictures(tmp_path, capsys):
    from discrete.cli import main
    from multigen.export import export_model

    domain = Discrete(load_config(DiscreteConfig, overrides=["data.source=digits", "data.levels=4",
                                                             "process.timesteps=8", "model.dim=8", "model.depth=1"]))
    domain.fit()
    export = export_model(domain.build_model(), domain, tmp_path / "export")
    assert main(["sample", "--checkpoint", str(export), "--num", "2", "--steps", "2", "--out",
                 str(tmp_path / "d")]) == 0
    one = np.asarray(Image.open(tmp_path / "d" / "sample_001.png"))
    assert one.shape == (64, 64, 3) and set(np.unique(one)) <= {0, 85, 170, 255}  # 4 grey levels, 8x, no gap
    assert (one[..., 0] == one[..., 2]).all()
    assert np.asarray(Image.open(tmp_path / "d.png")).shape == (8 * 8, 8 * 17, 3)  # the two side by side
    assert main(["sample", "--checkpoint", str(export), "--out", str(tmp_path / "e"), "--infill-map", "x.png"]) == 2
    assert "--infill-map is for label-map models; this one draws digits grids" in capsys.readouterr().err


def test_edges_and_class_mix_of_label_maps():
    halves = torch.zeros(1, 4, 4, dtype=torch.long)
    halves[..., 2:] = 1  # one vertical edge: 4 of the 12 side-by-side pairs, none of the 12 stacked ones
    assert boundary_rate(halves) == pytest.approx(4 / 24)
    assert boundary_rate(halves.transpose(1, 2)) == pytest.approx(4 / 24)
    assert boundary_rate(torch.zeros(2, 3, 5, dtype=torch.long)) == 0
    assert boundary_rate(torch.tensor([[[0, 1], [1, 0]]])) == 1
    zeros, ones = torch.zeros(2, 2, 2, dtype=torch.long), torch.ones(1, 2, 2, dtype=torch.long)
    assert class_distance(zeros, ones, 3) == 1 and class_distance(zeros, zeros[:1], 3) == 0
    assert class_distance(halves, zeros, 2) == 0.5


def test_evaluation_draws_samples_against_the_held_out_maps():
    domain = _domain("data.size=8", "eval.num_sequences=3", "eval.num_samples=2", "sample.steps=2")
    domain.fit()
    model = domain.build_model()
    val = domain.build_dataset("val")
    scores = domain.evaluate(model, val)
    assert scores["held_out_boundary_rate"] == boundary_rate(torch.stack([val[i] for i in range(3)]))
    assert 0 < scores["sample_boundary_rate"] <= 1 and 0 <= scores["sample_class_distance"] <= 1
    assert scores == domain.evaluate(model, val)  # seeded samples
    domain.cfg.eval.num_samples = 0
    assert set(domain.evaluate(model, val)) == {"elbo_bits_per_token", "elbo_bits_stderr", "baseline_unigram_bits",
                                                "baseline_position_bits"}


# Found by mutation testing (each fails on a mutant of the code it names)

def test_two_page_tiff_refused(tmp_path):
    frames = [Image.fromarray(np.full((2, 2), i, dtype=np.uint8)) for i in range(2)]
    frames[0].save(tmp_path / "two.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(TokenError, match=r"two\.tif holds 2 images"):
        read_label_image(tmp_path / "two.tif")


def test_32bit_grey_tiff_gives_its_ids(tmp_path):
    ids = np.array([[0, 70000], [3, 1]], dtype=np.int32)
    Image.fromarray(ids).save(tmp_path / "i.tif")  # mode I
    assert torch.equal(read_label_image(tmp_path / "i.tif"), torch.tensor(ids, dtype=torch.long))


def test_relative_held_out_folder_inside_training_folder(tmp_path, monkeypatch):
    (tmp_path / "val").mkdir()
    for i in range(4):
        _png(tmp_path / f"t{i}.png", np.full((4, 4), 1))
    _png(tmp_path / "val" / "v.png", np.full((4, 4), 2))
    monkeypatch.chdir(tmp_path)
    domain = _domain("data.path=.", "data.val_path=val", "data.size=4")
    domain.fit()
    assert len(domain.build_dataset("train")) == 4


def test_one_upper_case_label_image(tmp_path):
    _png(tmp_path / "M.PNG", [[0, 1]])
    maps, names = read_label_maps(tmp_path / "M.PNG")
    assert len(maps) == 1 and maps[0].tolist() == [[0, 1]]


def test_npy_id_65536_refused(tmp_path):
    np.save(tmp_path / "m.npy", np.array([[[0, 65536]]], dtype=np.int32))
    with pytest.raises(TokenError, match="class id 65536; a label map's ids are below 65536"):
        read_label_maps(tmp_path / "m.npy")


def test_two_classes_are_enough():
    assert infer_classes([torch.tensor([[0, 1]])], ["a"]) == 2


def test_id_65536_refused_by_infer():
    with pytest.raises(TokenError, match="^a: class id 65536; a label map's ids are below 65536$"):
        infer_classes([torch.tensor([[0, 65536]])], ["a"])


def test_ids_above_255_are_not_the_ignore_value():
    assert infer_classes([torch.tensor([[0, 300]])], ["a"]) == 301


def test_ignore_heuristic_threshold_is_128_used_ids():
    with pytest.raises(TokenError, match="class id 255 among 126 others"):
        infer_classes([torch.cat([torch.arange(126), torch.tensor([255])])[None]], ["a"])  # 127 ids used
    assert infer_classes([torch.cat([torch.arange(127), torch.tensor([255])])[None]], ["a"]) == 256  # 128 used


def test_held_out_scenes_start_at_seed_1e9():
    assert torch.equal(SceneMaps(2, 16, "val")[1], scene_map(16, 10**9 + 1))


def test_negative_scene_index_refused():
    with pytest.raises(IndexError):
        SceneMaps(4, 8)[-1]


def test_colour_clamps_ids_outside_the_classes():
    assert torch.equal(colour(torch.tensor([[6, -1]]), 6), palette(6)[[5, 0]][None])


def test_65536_classes_write_16_bit(tmp_path):
    m = torch.tensor([[0, 65535]])
    write_label_image(m, tmp_path / "m.png", 65536)
    assert torch.equal(read_label_image(tmp_path / "m.png"), m)


def test_scenes_keep_a_larger_vocab_size():
    domain = _domain("data.vocab_size=8")
    domain.fit()
    assert domain.data_vocab == 8


def test_label_maps_are_reread_when_the_pattern_changes(tmp_path):
    for i in range(10):
        _png(tmp_path / f"{'a' if i < 5 else 'b'}{i}.png", np.full((4, 4), i % 2))
    domain = _domain(f"data.path={tmp_path}", "data.size=4")
    domain.fit()
    assert len(domain.build_dataset("train")) == 9
    domain.cfg.data.pattern = "a*"
    assert len(domain.build_dataset("train")) == 4


def test_scenes_refuse_one_class():
    with pytest.raises(ConfigError, match="data.vocab_size=1: the built-in scenes have 6 classes"):
        _domain("data.vocab_size=1")


def test_large_grids_are_drawn_one_pixel_a_cell(tmp_path):
    out = save_grid_picture(torch.zeros(1, 128, 128, 3, dtype=torch.uint8), tmp_path / "big.png")
    assert Image.open(out).size == (128, 128)


def test_pictures_are_tiled_row_by_row(tmp_path):
    pictures = torch.stack([torch.full((2, 2, 3), 50 * (i + 1), dtype=torch.uint8) for i in range(3)])
    out = np.asarray(Image.open(save_grid_picture(pictures, tmp_path / "t.png")))  # 2x2 tiles, 32x scale
    assert out[0, -1, 0] == 100 and out[-1, 0, 0] == 150 and out[-1, -1, 0] == 0


def test_infill_map_is_cut_centred(label_export, tmp_path):
    from discrete.cli import main
    ids = np.tile(np.arange(16) % 6, (8, 1))  # 8x16: the model (size 8) keeps its columns 4:12
    ids[2:6, 6:10] = 255
    _png(tmp_path / "edit.png", ids)
    torch.manual_seed(0)
    assert main(["sample", "--checkpoint", label_export, "--num", "1", "--steps", "2", "--out", str(tmp_path / "o"),
                 "--infill-map", str(tmp_path / "edit.png")]) == 0
    kept = torch.tensor(ids[:, 4:12], dtype=torch.long)
    m = read_label_maps(tmp_path / "o")[0][0]
    assert torch.equal(m[kept != 255], kept[kept != 255])


def test_sample_refuses_length_for_grids(label_export, tmp_path, capsys):
    from discrete.cli import main
    assert main(["sample", "--checkpoint", label_export, "--length", "4", "--out", str(tmp_path / "x")]) == 2
    assert "--prompt, --infill and --length are for text and token models" in capsys.readouterr().err


def test_out_refuses_an_upper_case_png_name(label_export, tmp_path, capsys):
    from discrete.cli import main
    assert main(["sample", "--checkpoint", label_export, "--out", str(tmp_path / "P.PNG")]) == 2
    assert "names a picture" in capsys.readouterr().err


def test_eval_refuses_length_for_label_maps(label_export, tmp_path, capsys):
    from discrete.cli import main
    _png(tmp_path / "m.png", np.zeros((8, 8)))
    assert main(["eval", "--checkpoint", label_export, "--data", str(tmp_path), "--length", "4"]) == 2
    assert "--length is for text and token models; label maps are scored as 8x8" in capsys.readouterr().err


def test_eval_scores_the_centred_square(label_export, tmp_path, capsys):
    from discrete.cli import main
    ids = np.tile(np.arange(16) % 6, (8, 1))
    (tmp_path / "wide").mkdir()
    (tmp_path / "centre").mkdir()
    _png(tmp_path / "wide" / "m.png", ids)
    _png(tmp_path / "centre" / "m.png", ids[:, 4:12])
    torch.manual_seed(0)
    printed = []
    for d in ("wide", "centre"):
        assert main(["eval", "--checkpoint", label_export, "--data", str(tmp_path / d)]) == 0
        printed.append(capsys.readouterr().out.split(": ", 1)[1])
    assert printed[0] == printed[1]


def test_out_dot_writes_the_overview_beside_the_folder(label_export, tmp_path, monkeypatch):
    from discrete.cli import main
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert main(["sample", "--checkpoint", label_export, "--num", "1", "--steps", "2", "--out", "."]) == 0
    assert (tmp_path / "here.png").is_file() and (tmp_path / "here" / "sample_000.png").is_file()


def test_eval_refuses_pattern_for_text(tmp_path, capsys):
    from discrete.cli import main
    from multigen.export import export_model

    domain = Discrete(load_config(DiscreteConfig, overrides=["process.timesteps=8", "model.dim=8", "model.depth=1",
                                                             "data.length=16"]))
    domain.fit()
    export = str(export_model(domain.build_model(), domain, tmp_path / "export"))
    (tmp_path / "t.txt").write_text("the cat sat on the mat, " * 4)
    assert main(["eval", "--checkpoint", export, "--data", str(tmp_path / "t.txt"), "--pattern", "*"]) == 2
    assert "--pattern picks label images; this is a text model" in capsys.readouterr().err


class _Recorder(torch.nn.Module):
    """Uniform logits over a label map's classes; keeps the times it is asked at and how many pixels are masked."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.times, self.masked = vocab, [], []
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # the domain reads the device of the model's parameters

    def forward(self, x, t):
        self.times.append(t[0].item())
        self.masked.append((x == self.vocab - 1).float().mean().item())
        return torch.zeros(*x.shape, self.vocab)


def test_a_masked_model_samples_a_finer_chain_than_the_one_it_was_trained_on():
    """The masked objective trains in continuous time: ``steps`` above T run the chain of that many steps, the
    network asked at each step's time in its own units (step j of 4T is the time j / 4 of T), the masked share
    falling by about 1/(4T) a step; a model of the d3pm objective (its chain fixed) refuses."""
    domain = _domain("data.size=16", "process.timesteps=4")
    domain.fit()
    net = _Recorder(domain.vocab)
    out = domain.sample(net, 8, steps=16, generator=torch.Generator().manual_seed(0))
    assert net.times == [j / 4 for j in range(16, 0, -1)]
    assert out.shape == (8, 16, 16) and (out < domain.data_vocab).all()
    assert net.masked[0] == 1 and all(abs(m - j / 16) < 0.05 for m, j in zip(net.masked, range(16, 0, -1)))
    net = _Recorder(domain.vocab)
    domain.sample(net, 2, steps=2, generator=torch.Generator().manual_seed(0))  # at most T: the trained chain
    assert net.times == [4, 2]
    uniform = _domain("process.transition=uniform", "process.timesteps=4")
    uniform.fit()
    with pytest.raises(ValueError, match="steps=16: at most process.timesteps=4, the chain this model was trained on"):
        uniform.sample(_Recorder(uniform.vocab), 1, steps=16)
