"""Typed configs: errors name the key, files and overrides merge, shipped YAML files stay valid."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from multigen.config import ConfigError, TrainConfig, flatten, load_config, to_yaml
from multigen.domain import UnknownDomainError, get_domain
from multigen.toy2d import Toy2D, Toy2DConfig

from .conftest import REPO


@pytest.mark.parametrize(
    "override,named",
    [
        ("train.max_stepz=5", "train.max_stepz"),
        ("train.max_steps=abc", "train.max_steps"),
        ("train.mixed_precision=fp8", "train.mixed_precision"),
        ("train.lr=-1", "train.lr"),
        ("nosuchsection.x=1", "nosuchsection"),
        ("model.hidden=1.5", "model.hidden"),
    ],
)
def test_bad_override_names_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(Toy2DConfig, overrides=[override])


def test_a_schema_that_is_no_config_class_is_named():
    """``load_config("video")`` (a domain's name for its config class) says what to pass instead."""
    with pytest.raises(TypeError, match=r"get_domain\('video'\)\.config_class, got 'video'"):
        load_config("video")
    with pytest.raises(TypeError, match="schema must be a config dataclass, got TrainConfig"):
        load_config(TrainConfig())


def test_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  max_steps: 7\n  lr: 0.5\n")
    cfg = load_config(Toy2DConfig, f, ["train.lr=0.25", "data.distribution=rings"])
    assert (cfg.train.max_steps, cfg.train.lr, cfg.data.distribution) == (7, 0.25, "rings")
    assert load_config(Toy2DConfig, values={"train": {"max_steps": 9}}).train.max_steps == 9


def test_string_fields_take_override_text_as_typed(tmp_path):
    """YAML would read `no` as false and `1e-3` as a number; a string field keeps what was typed."""
    cfg = load_config(Toy2DConfig, overrides=["train.mixed_precision=no", "train.output_dir=1e-3", "train.lr=1e-3"])
    assert (cfg.train.mixed_precision, cfg.train.output_dir, cfg.train.lr) == ("no", "1e-3", 0.001)
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_config(Toy2DConfig, overrides=["train.max_steps=no"])
    # text that is no YAML value at all (`*x` reads as an alias) is a string field's as typed, else an error naming it
    cfg = load_config(Toy2DConfig, overrides=["train.output_dir=*_labelIds.png", "train.mixed_precision='no'"])
    assert (cfg.train.output_dir, cfg.train.mixed_precision) == ("*_labelIds.png", "no")
    with pytest.raises(ConfigError, match=r"^train\.lr: '\*x' is not a YAML value \("):
        load_config(Toy2DConfig, overrides=["train.lr=*x"])
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  mixed_precision: no\n  output_dir: 0755\n  max_steps: 0x10\n")  # a file's too
    cfg = load_config(Toy2DConfig, f)
    assert (cfg.train.mixed_precision, cfg.train.output_dir, cfg.train.max_steps) == ("no", "0755", 16)


def test_lists_of_strings_keep_their_items_as_typed(tmp_path):
    """A ShapeNet synset such as 03001627 (chair) is all octal digits: YAML 1.1 would read it as 787351."""
    from pointcloud.domain import PointCloudConfig

    cfg = load_config(PointCloudConfig, overrides=["data.categories=[03001627, airplane, 02691156]"])
    assert cfg.data.categories == ["03001627", "airplane", "02691156"]
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  categories: [03001627, '04379243']\n  points: 0x100\n")
    cfg = load_config(PointCloudConfig, f, ["data.families=[chair]"])
    assert (cfg.data.categories, cfg.data.points, cfg.data.families) == (["03001627", "04379243"], 256, ["chair"])
    with pytest.raises(ConfigError, match="data.families"):
        load_config(PointCloudConfig, overrides=["data.families=chair"])


@pytest.mark.parametrize("override, says", [("train.lr=nan", ">= 0"), ("train.ema_decay=1.5", "<= 1"),
                                             ("sample.eta=2", "<= 1"), ("train.lr=inf", "finite"),
                                             ("sample.temperature=.inf", "finite"), ("sample.eta=inf", "<= 1.0"),
                                             ("diffusion.clip_x0=-1", "> 0"), ("diffusion.min_snr_gamma=0", "> 0")])
def test_numbers_out_of_range_nan_or_infinite_are_errors(override, says):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.") + f": must be {says}"):
        load_config(Toy2DConfig, overrides=[override])


def test_sampling_settings_take_numpy_and_tensor_scalars_and_check_types():
    """NumPy and 0-dim tensor numbers count as the numbers they hold (a loop over np.linspace); a fraction where a
    whole number is due and a bool are named."""
    import torch

    domain = Toy2D(load_config(Toy2DConfig))
    s = domain.sample_settings(temperature=np.float32(0.5), steps=np.int64(4), eta=torch.tensor(0.25),
                               sampler="ddim")
    assert (s.temperature, s.steps, s.eta) == (0.5, 4, 0.25) and type(s.steps) is int
    for bad, says in ((dict(steps=2.5), "sample.steps: Value '2.5'"), (dict(steps=True), "sample.steps: Value 'True'")):
        with pytest.raises(ConfigError, match=says):
            domain.sample_settings(**bad)


@pytest.mark.parametrize("blank", ["", "  "])
def test_an_empty_output_folder_is_an_error(blank):
    """Empty, the run would write its files into the current folder."""
    with pytest.raises(ConfigError, match=rf"train.output_dir: must not be empty, got '{blank}'"):
        load_config(Toy2DConfig, overrides=[f"train.output_dir={blank}"])


def test_missing_file_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(Toy2DConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"is a folder, not a config file$"):
        load_config(Toy2DConfig, tmp_path)
    (tmp_path / "config.yaml").write_text("train:\n  lr: 0.01\n")  # an export's folder, say
    with pytest.raises(ConfigError, match=rf"{tmp_path} is a folder, not a config file: give {tmp_path}/config.yaml"):
        load_config(Toy2DConfig, tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_sise: 3\n")
    with pytest.raises(ConfigError, match=r"train\.batch_sise"):
        load_config(Toy2DConfig, bad)
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(Toy2DConfig, overrides=["justakey"])
    for text in ("train:\n  max_steps: [1\n", "train:\n\tmax_steps: 3\n"):  # an unclosed bracket, a tab
        bad.write_text(text)
        with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML: .*line 2"):
            load_config(Toy2DConfig, bad)
    bad.write_bytes(b"train:\n  output_dir: caf\xe9\n")  # Latin-1, not UTF-8
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(Toy2DConfig, bad)


@pytest.mark.parametrize("text, named", [
    ("train:\n  adam_betas: [0.9]\n", r"train\.adam_betas: must be \[b1, b2\] .*, got \[0\.9\]"),  # OmegaConf: no key
    ("train:\n  adam_betas: 0.9\n", r"train\.adam_betas: must be \[b1, b2\] .*, got 0\.9"),
    ("train:\n  adam_betas: abc\n", r"train\.adam_betas: must be \[b1, b2\] .*, got 'abc'"),
    ("train:\n  adam_betas:\n    x: 1\n",  # OmegaConf: a bare TypeError, "Cannot merge incompatible container types"
     r"train\.adam_betas: must be \[b1, b2\] .*, got \{'x': 1\}"),
    ("sample:\n  guidance_interval: [a, 1]\n",  # OmegaConf's message is a template: "Value '$VALUE' of type ..."
     r"sample\.guidance_interval: must be \[lo, hi\] .*, got \['a', 1\]"),
    ("train: 5\n", r"train: a section of keys, got 5"),
    ("train:\n  max_steps: abc\n", r"train\.max_steps: Value 'abc'"),
    ("train:\n  nosuch: 3\n", r"train\.nosuch: Key 'nosuch' not in 'TrainConfig'"),
    ("trian:\n  max_steps: 3\n", r"trian: Key 'trian' not in"),
])
def test_a_value_in_a_file_that_does_not_fit_names_the_file_and_the_key(tmp_path, text, named):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=rf"bad\.yaml: {named}"):
        load_config(Toy2DConfig, bad)
    with pytest.raises(ConfigError, match=rf"^{named}"):  # an export's values, which its loader names the file of
        load_config(Toy2DConfig, values=yaml.safe_load(text))


def test_an_override_below_a_plain_key_is_a_config_error_naming_it():
    for item, said in (("train.max_steps.sub=3", "could not be converted to Integer"),
                       ("train.adam_betas.x=1", "Cannot merge incompatible container types")):  # (was a TypeError)
        with pytest.raises(ConfigError, match=rf"^{item.partition('=')[0]}: .*{said}"):
            load_config(Toy2DConfig, overrides=[item])


def test_an_interval_setting_must_lie_in_zero_one_in_order():
    cfg = load_config(Toy2DConfig, overrides=["sample.guidance_interval=[0.2,0.8]"])
    assert tuple(cfg.sample.guidance_interval) == (0.2, 0.8)
    for bad in ("[0.8,0.2]", "[-0.1,0.5]", "[0.5,1.5]"):
        with pytest.raises(ConfigError, match=r"sample\.guidance_interval: must be \[lo, hi\] with 0 <= lo <= hi"):
            load_config(Toy2DConfig, overrides=[f"sample.guidance_interval={bad}"])
    domain = Toy2D(cfg)  # a sampling call's setting, not parsed from text, is checked the same way
    for bad in ([0.5], [], 0.5, [0.1, 0.2, 0.3], ["a", "b"], [True, True]):
        with pytest.raises(ConfigError, match=r"sample\.guidance_interval: must be \[lo, hi\] with 0 <= lo <= hi"):
            domain.sample_settings(guidance_interval=bad)


def test_yaml_round_trip():
    cfg = load_config(Toy2DConfig, overrides=["train.lr=0.125"])
    assert load_config(Toy2DConfig, values=__import__("yaml").safe_load(to_yaml(cfg))) == cfg


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_load(path):
    cfg = load_config(get_domain(path.parent.name).config_class, path)
    if path.name == "default.yaml":
        assert cfg == get_domain(path.parent.name).config_class(), "default.yaml must list the schema defaults"

        def keys(tree: dict, prefix: str = "") -> set[str]:
            return set().union(*[keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
                                 for k, v in tree.items()])

        assert keys(yaml.safe_load(path.read_text())) == set(flatten(cfg)), "default.yaml lists every key"


def test_unknown_domain_lists_available():
    with pytest.raises(UnknownDomainError, match="available domains: .*toy2d"):
        get_domain("nosuchdomain")


def test_cli_errors_exit_nonzero_naming_the_problem():
    run = lambda *a: subprocess.run([sys.executable, str(REPO / "multigen/train.py"), *a], capture_output=True, text=True)  # noqa: E731
    r = run("--domain", "toy2d", "train.bach_size=3")
    assert r.returncode == 2 and "train.bach_size" in r.stderr
    r = run("--domain", "nosuch")
    assert r.returncode == 2 and "toy2d" in r.stderr
    r = run("--domain", "toy2d", "--config", "nosuchname")
    assert r.returncode == 2 and "nosuchname" in r.stderr
    r = run("--domain", "toy2d", "--print-config", "train.max_steps=3")
    assert r.returncode == 0 and "max_steps: 3" in r.stdout
    r = run("--domain", "toy2d", "sample.steps=20", "--config", "tiny", "--print-config", "train.max_steps=3")
    assert r.returncode == 0 and "  steps: 20" in r.stdout and "max_steps: 3" in r.stdout  # overrides anywhere
    r = run("--domain", "toy2d", "--print-config", "sample.eta=0.5")  # checked as a run checks it
    assert r.returncode == 2 and "sample.eta=0.5 only applies to the ddim sampler" in r.stderr and not r.stdout


def test_a_bare_config_name_is_the_shipped_config_whatever_the_current_folder_holds(tmp_path, monkeypatch):
    """A folder of label maps named ``labels`` or a file named ``tiny`` where the command runs does not take the
    place of the shipped config of that name; ``./NAME`` names them, and a name nothing ships is a path."""
    from multigen.train import CONFIG_ROOT, resolve_config_file

    monkeypatch.chdir(tmp_path)
    (tmp_path / "labels").mkdir()
    (tmp_path / "tiny").write_text("")
    (tmp_path / "mine").write_text("train:\n  max_steps: 3\n")
    with pytest.warns(UserWarning, match=r"--config labels: the shipped .*labels.yaml, not the folder 'labels' here "
                                         r"\(./labels names that\)"):
        assert resolve_config_file("discrete", "labels") == CONFIG_ROOT / "discrete" / "labels.yaml"
    with pytest.warns(UserWarning, match="not the file 'tiny' here"):
        assert resolve_config_file("video", "tiny") == CONFIG_ROOT / "video" / "tiny.yaml"
    assert resolve_config_file("video", "./tiny") == Path("./tiny")
    assert resolve_config_file("video", "mine") == Path("mine")
    assert resolve_config_file("video", "tiny.yaml") == Path("tiny.yaml")  # a YAML name is always a path
    with pytest.raises(ConfigError, match="'nosuch' is neither a file nor a name in"):
        resolve_config_file("video", "nosuch")
    with pytest.raises(ConfigError, match=r"'nosuch' is not a file \(named configs are the checkout's, for its own "
                                          r"domains: give mymod:MyDomain's config as a path\)"):
        resolve_config_file("mymod:MyDomain", "nosuch")


def test_training_on_bad_data_stops_with_one_line_naming_it(tmp_path, capsys):
    """A missing or unusable input, met after the config loaded, is the same one-line error (exit 2), no traceback."""
    from multigen.train import main

    short = tmp_path / "short.txt"
    short.write_text("too short for one window")
    for data, named in [(tmp_path / "missing.txt", "text file .*missing.txt not found"),
                        (tmp_path, "text file .* is a folder"),
                        (short, r".*short.txt \(its first nine tenths\) holds 21 tokens")]:
        assert main(["--domain", "discrete", f"data.path={data}", f"train.output_dir={tmp_path / 'run'}"]) == 2
        err = capsys.readouterr().err
        assert re.search(f"^multigen-train: error: {named}", err) and "Traceback" not in err


def test_a_run_stopped_by_its_data_leaves_nothing_for_the_next_to_set_aside(tmp_path, capsys):
    """The data are checked before the run writes its config: a run that stops on them writes no file, so the run
    that follows finds nothing of an earlier run to move aside."""
    from multigen.checkpoints import set_aside_earlier_run
    from multigen.train import main

    from .test_video_data import gradient_video

    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    np.save(tmp_path / "train" / "clip.npy", gradient_video(12, 16, 16))
    np.save(tmp_path / "val" / "short.npy", gradient_video(3, 16, 16))  # fewer frames than one clip
    run = tmp_path / "run"
    assert main(["--domain", "video", "--config", "tiny", "data.source=folder", f"data.root={tmp_path / 'train'}",
                 f"data.val_root={tmp_path / 'val'}", f"train.output_dir={run}"]) == 2
    assert "short.npy" in capsys.readouterr().err
    assert set_aside_earlier_run(run) is None and not (run / "config.yaml").exists()


@pytest.mark.parametrize("domain,overrides,named", [
    ("discrete", ["data.source=tokens", "data.path=tokens.npy"], "data.vocab_size: must be set"),
    ("discrete", ["process.objective=masked", "process.transition=uniform"], "process.objective=masked needs"),
    ("video", ["data.source=folder"], "data.root: must name a folder"),
    ("pointcloud", ["data.source=folder"], "data.root: data.source=folder needs it"),
    ("pointcloud", ["data.source=shapenet"], "data.root: data.source=shapenet needs it"),
    ("pointcloud", ["data.families=[]"], "data.families: empty"),
    ("pointcloud", ["data.source=shapenet", "data.root=.", "data.categories=[]"], "data.categories: empty"),
    ("video", [f"task.{k}=0" for k in ("unconditional", "future", "past", "interpolate", "random")],
     "task: task probabilities must be >= 0 and not all 0"),
    ("video", ["task.unconditional=0", "sample.guidance=2"], "sample.guidance=2.0: classifier-free guidance needs"),
    ("video", ["model.attn_levels=[5]"], r"model.attn_levels: the U-Net has levels 0..1 \(model.channel_mults=\[1, 2"),
    ("video", ["model.channel_mults=[]"], "model.channel_mults: empty"),
    ("toy2d", ["sample.steps=5000"], "sample.steps=5000: at most diffusion.timesteps=1000"),
    ("discrete", ["process.transition=uniform", "process.timesteps=8", "sample.steps=16"],
     "sample.steps=16: at most process.timesteps=8, the chain this model was trained on"),
    ("discrete", ["sample.length=64"], "sample.length=64: at most data.length=32"),
    ("discrete", ["process.transition=uniform", "sample.remask=0.1"],
     "sample.remask=0.1: remasking is for process.transition=absorbing, not uniform; set sample.remask=0"),
    ("discrete", ["train.adam_betas=[0.9,1.5]"], r"train.adam_betas: must be \[b1, b2\] with each in \[0, 1\)"),
    ("video", ["sample.guidance_interval=[0.5]"], r"sample.guidance_interval: must be \[lo, hi\] .*, got \[0.5\]"),
    ("video", ["sample.guidance_interval=[a,b]"], r"sample.guidance_interval: must be .*, got \['a', 'b'\]"),
    ("toy2d", ["diffusion.schedule=linear", "diffusion.timesteps=100"],
     r"diffusion.schedule=linear, diffusion.timesteps=100: .* raise beta_end \(e.g. beta_end >= 0.138"),
    ("toy2d", ["diffusion.schedule=sigmoid", "diffusion.sigmoid_tau=0"],
     r"diffusion.schedule=sigmoid, diffusion.timesteps=\d+: the sigmoid schedule needs sigmoid_tau != 0"),
    ("toy2d", ["diffusion.schedule=linear", "diffusion.beta_start=-0.01"],
     "diffusion.schedule=linear, .* beta_start=-0.01"),
])
def test_settings_a_domain_refuses_stop_training_with_one_line_naming_them(domain, overrides, named, tmp_path, capsys):
    """Checked by the domain (not by the config's types), a setting it cannot use is still a config error: one line,
    exit 2, no traceback."""
    from multigen.train import main

    assert main(["--domain", domain, "--config", "tiny", *overrides, f"train.output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert re.match(f"multigen-train: error: {named}", err) and "Traceback" not in err


def test_a_transition_the_fitted_categories_cannot_use_stops_training_before_anything_is_written(tmp_path, capsys):
    """The discretised Gaussian transition is dense (at most 256 categories): 300 token ids fail when the domain is
    fitted, before the run writes its config or logs."""
    from multigen.train import main

    np.save(tmp_path / "ids.npy", np.random.default_rng(0).integers(0, 300, 5000))
    assert main(["--domain", "discrete", "--config", "tiny", "process.transition=gaussian", "data.source=tokens",
                 f"data.path={tmp_path / 'ids.npy'}", "data.vocab_size=300",
                 f"train.output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert re.match(r"multigen-train: error: process.transition=gaussian over 300 categories: .* K = 300 > 256", err)
    assert not (tmp_path / "run").exists()


def test_bounds_are_inclusive():
    cfg = load_config(Toy2DConfig, overrides=["train.ema_decay=1.0", "sample.eta=1.0",
                                              "sample.guidance_interval=[0.5,0.5]"])
    assert cfg.train.ema_decay == 1.0 and cfg.sample.eta == 1.0 and list(cfg.sample.guidance_interval) == [0.5, 0.5]


def test_an_exports_config_trains_anew_in_its_own_domain_only(tmp_path, capsys):
    """``--config EXPORT/config.yaml`` (whose first key names the domain) gives the exported settings, overrides on
    top; in another domain it is an error naming both."""
    from multigen.export import export_model
    from multigen.train import main

    domain = Toy2D(load_config(Toy2DConfig, overrides=["model.hidden=48", "sample.steps=17"]))
    config = export_model(domain.build_model(), domain, tmp_path / "export") / "config.yaml"
    assert main(["--domain", "toy2d", "--config", str(config), "train.max_steps=7", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["model"]["hidden"], printed["sample"]["steps"], printed["train"]["max_steps"]) == (48, 17, 7)
    assert main(["--domain", "video", "--config", str(config)]) == 2
    assert f"{config} is the config of a toy2d export, not of a video model" in capsys.readouterr().err


def test_an_exports_config_does_not_resume_the_run_that_wrote_it(tmp_path, capsys):
    """The export's config names the run's output folder: training on it while that run is there would resume the
    run and replace its export. It is refused unless train.output_dir is given; printing it is not training."""
    from multigen.export import export_model
    from multigen.train import main, read_config

    run = tmp_path / "run"
    domain = Toy2D(load_config(Toy2DConfig, overrides=[f"train.output_dir={run}"]))
    config = export_model(domain.build_model(), domain, run / "export") / "config.yaml"
    assert main(["--domain", "toy2d", "--config", str(config)]) == 2
    assert (f"{config} is the config of the run in {run}, which is still there: training with it would resume that "
            f"run and replace its export. Give train.output_dir=<a new folder>") in capsys.readouterr().err
    assert main(["--domain", "toy2d", "--config", str(config), "--print-config"]) == 0
    fresh = read_config(Toy2D, config, [f"train.output_dir={tmp_path / 'new'}"])
    assert fresh.train.output_dir == str(tmp_path / "new")
    assert read_config(Toy2D, config, [f"train.output_dir={run}"]).train.output_dir == str(run)  # go on, asked
    moved = tmp_path / "copied.yaml"  # the run gone (the export taken elsewhere): its folder is free to train in
    moved.write_text(config.read_text().replace(str(run), str(tmp_path / "gone")))
    assert read_config(Toy2D, moved, []).train.output_dir == str(tmp_path / "gone")


def test_a_list_field_refuses_text_that_is_no_yaml_value():
    from pointcloud.domain import PointCloudConfig
    with pytest.raises(ConfigError, match=r"categories: '\*x' is not a YAML value"):
        load_config(PointCloudConfig, overrides=["data.categories=*x"])
