"""Domain.fit: what the training data decides (discrete vocabulary, point-cloud normalisation) is in the run's
config.yaml as in the export's, because the trainer fits the domain before it writes the config."""

import warnings

import numpy as np
import pytest
from omegaconf import OmegaConf

from multigen.config import load_config
from multigen.domain import get_domain
from multigen.trainer import Trainer

from .conftest import REPO


def cloud_folder(root):
    """Train/val folders of random clouds around (5, 5, 5), about 2 units across: global statistics to fit."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            np.save(root / split / f"cloud_{i}.npy", rng.normal(5, 0.7, (128, 3)).astype(np.float32))
    return root


@pytest.mark.parametrize("name", ["discrete", "pointcloud"])
def test_run_config_is_the_export_config(name, tmp_path):
    extra = {
        "discrete": [],
        "pointcloud": [f"data.root={cloud_folder(tmp_path / 'clouds')}", "data.source=folder", "data.points=128",
                       "data.normalization=global"],
    }[name]
    domain_cls = get_domain(name)
    cfg = load_config(domain_cls.config_class, REPO / "configs" / name / "tiny.yaml",
                      [f"train.output_dir={tmp_path / 'run'}", "train.tensorboard=false", *extra])
    trainer = Trainer(domain_cls, cfg)  # what train() does, without the steps: set up, resume, export
    trainer.resume()
    export = trainer.export()
    run_yaml = (tmp_path / "run" / "config.yaml").read_text()
    export_yaml = (export / "config.yaml").read_text()
    assert export_yaml == run_yaml and run_yaml.startswith(f"domain: {name}\n")  # each names its domain
    fitted = OmegaConf.create(run_yaml).data
    if name == "discrete":
        assert len(fitted.vocab) > 60  # the built-in text's characters
    else:
        assert 0.5 < fitted.scale < 5 and np.abs(np.array(fitted.centre) - 5).max() < 0.5


def test_an_unfitted_domain_says_so():
    discrete = get_domain("discrete")
    with pytest.raises(ValueError, match=r"data.vocab is empty: call fit\(\)"):
        discrete(load_config(discrete.config_class)).build_model()
    pointcloud = get_domain("pointcloud")
    cfg = load_config(pointcloud.config_class, None, ["data.source=folder", "data.root=/nowhere"])
    with pytest.raises(ValueError, match=r"data.scale is not set: call fit\(\)"):
        pointcloud(cfg).normalizer  # noqa: B018


@pytest.mark.parametrize("content, channels, warned", [
    ("colour", 1, True), ("grey as RGB", 1, False), ("colour", 3, False), ("grey", 1, False)])
def test_a_folder_of_colour_videos_trained_in_grey_is_warned_of(tmp_path, content, channels, warned):
    """Colour videos at the default ``data.channels=1`` would be learnt in grey without a word; a grey video
    decoded as RGB (channels a level apart, as chroma rounding leaves them) is not colour."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (16, 16, 16, 1), dtype=np.uint8)
    frames = {"colour": rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
              "grey as RGB": np.concatenate([grey, np.clip(grey.astype(int) + 1, 0, 255).astype(np.uint8), grey], -1),
              "grey": grey}[content]
    (tmp_path / "videos").mkdir()
    np.save(tmp_path / "videos" / "clip.npy", frames)
    video = get_domain("video")
    domain = video(load_config(video.config_class, REPO / "configs" / "video" / "tiny.yaml", [
        "data.source=folder", f"data.root={tmp_path / 'videos'}", f"data.channels={channels}"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        domain.fit()
    said = [str(w.message) for w in caught if "data.channels=3" in str(w.message)]
    assert said == ([f"data.channels=1: the videos in {tmp_path / 'videos'} are in colour and are trained on in "
                     f"grey; give data.channels=3 to keep their colour"] if warned else [])


def test_the_colour_warning_reads_the_training_videos_not_the_held_out_ones(tmp_path):
    """Grey training videos beside a colour ``data.val_root``: what is trained on is grey, so nothing is said."""
    rng = np.random.default_rng(0)
    for folder, channels in (("videos", 1), ("held", 3)):
        (tmp_path / folder).mkdir()
        np.save(tmp_path / folder / "clip.npy", rng.integers(0, 256, (16, 16, 16, channels), dtype=np.uint8))
    video = get_domain("video")
    domain = video(load_config(video.config_class, REPO / "configs" / "video" / "tiny.yaml", [
        "data.source=folder", f"data.root={tmp_path / 'videos'}", f"data.val_root={tmp_path / 'held'}"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        domain.fit()
