"""The command lines' shared parts (multigen/cli.py), and every domain's CLI given another domain's export."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import pytest
import torch

from discrete.cli import main as discrete_main
from multigen.cli import (add_export_arguments, add_sampler_arguments, output_folder, positive_float, run_command,
                          seeded_generator)
from multigen.config import load_config
from multigen.export import export_model
from multigen.toy2d import Toy2D, Toy2DConfig
from pointcloud.cli import complete_main
from pointcloud.cli import main as pointcloud_main
from video.cli import main as video_main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_export_arguments(p)
    add_sampler_arguments(p, guidance_help="scale")
    return p


def test_sampler_options_default_to_the_model_config_and_parse():
    args = _parser().parse_args(["--checkpoint", "x", "--device", "cpu"])
    assert (args.sampler, args.steps, args.guidance, args.guidance_interval, args.seed) == (None, None, None, None, 0)
    args = _parser().parse_args(["--checkpoint", "x", "--sampler", "ddim", "--steps", "7", "--guidance", "1.5",
                                 "--guidance-interval", "0.2", "0.9", "--seed", "3"])
    assert (args.sampler, args.steps, args.guidance, args.guidance_interval, args.seed) == ("ddim", 7, 1.5,
                                                                                             [0.2, 0.9], 3)
    with pytest.raises(SystemExit):
        _parser().parse_args(["--checkpoint", "x", "--sampler", "nonsense"])


def test_seeded_generator_is_on_the_device_and_seeded():
    args = argparse.Namespace(device="cpu", seed=5)
    a, b = torch.rand(3, generator=seeded_generator(args)), torch.rand(3, generator=seeded_generator(args))
    assert torch.equal(a, b) and seeded_generator(args).device.type == "cpu"
    assert not torch.equal(a, torch.rand(3, generator=seeded_generator(argparse.Namespace(device="cpu", seed=6))))


def test_run_command_reports_paths_and_input_errors(capsys, tmp_path):
    def wrote(args):
        return tmp_path / "out.gif"

    def bad(args):
        raise ValueError("frame 3 of clip.mp4 is corrupt")

    def missing(args):
        raise FileNotFoundError("clip.mp4 not found")

    def bug(args):
        raise RuntimeError("a bug, not an input error")

    assert run_command(argparse.Namespace(func=wrote), "prog") == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'out.gif'}\n"
    assert run_command(argparse.Namespace(func=lambda args: None), "prog") == 0
    assert capsys.readouterr().out == ""
    for func, message in [(bad, "frame 3 of clip.mp4 is corrupt"), (missing, "clip.mp4 not found")]:
        assert run_command(argparse.Namespace(func=func), "prog") == 2
        assert capsys.readouterr().err == f"prog: error: {message}\n"
    with pytest.raises(RuntimeError, match="a bug"):
        run_command(argparse.Namespace(func=bug), "prog")


def test_a_damaged_export_is_named(toy_export, tmp_path):
    from multigen import load_pretrained
    from multigen.config import ConfigError

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.yaml").write_text((toy_export / "config.yaml").read_text())
    (damaged / "model.safetensors").write_bytes((toy_export / "model.safetensors").read_bytes()[:50])
    with pytest.raises(ValueError, match=r"damaged/model.safetensors is not a readable safetensors file"):
        load_pretrained(damaged)
    (damaged / "config.yaml").write_text("domain: toy2d\ntrain: [1\n")
    with pytest.raises(ConfigError, match=r"damaged/config.yaml is not valid YAML"):
        load_pretrained(damaged)
    (damaged / "config.yaml").write_text("domain: toy2d\ntrain:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"damaged/config.yaml: train.lr"):
        load_pretrained(damaged)


def test_devices_numbers_and_output_folders_are_checked_before_the_work(tmp_path, capsys):
    for device in ("gpu", "cuda:x"):
        with pytest.raises(SystemExit):
            _parser().parse_args(["--checkpoint", "x", "--device", device])
        assert "is not a torch device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            _parser().parse_args(["--checkpoint", "x", "--device", "cuda"])
        assert "this machine has no cuda device" in capsys.readouterr().err
    for text in ("0", "-1", "nan", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_float(text)
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match=r"cannot make the output folder .*afile/sub"):
        output_folder(tmp_path / "afile" / "sub")
    assert output_folder(tmp_path / "new" / "sub").is_dir()


@pytest.fixture(scope="module")
def toy_export(tmp_path_factory) -> Path:
    toy = Toy2D(load_config(Toy2DConfig))
    return export_model(toy.build_model(), toy, tmp_path_factory.mktemp("toy") / "export")


@pytest.mark.parametrize("main, prog, argv, domain", [
    (video_main, "multigen-video", ["sample", "--out", "{tmp}"], "video"),
    (video_main, "multigen-video", ["predict", "--input", "{tmp}/x.npy", "--context", "2", "--frames", "4",
                                    "--out", "{tmp}/y.npy"], "video"),
    (pointcloud_main, "multigen-pointcloud", ["sample", "--out", "{tmp}"], "pointcloud"),
    (complete_main, "multigen-complete", ["--input", "{tmp}/x.npy", "--out", "{tmp}"], "pointcloud"),
    (discrete_main, "multigen-discrete", ["sample"], "discrete"),
    (discrete_main, "multigen-discrete", ["eval", "--data", "{tmp}/x.txt"], "discrete"),
], ids=["video-sample", "video-predict", "pointcloud-sample", "complete", "discrete-sample", "discrete-eval"])
def test_every_cli_refuses_another_domains_export_naming_both(main, prog, argv, domain, toy_export, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--checkpoint", str(toy_export), "--device", "cpu"]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"{prog}: error: {toy_export} holds a toy2d model, not a {domain} model\n"


def test_load_export_loads_on_the_given_device_and_names_the_domain(monkeypatch):
    import multigen.cli

    seen = []
    monkeypatch.setattr(multigen.cli, "load_pretrained", lambda *args, **kw: seen.append((args, kw)))
    multigen.cli.load_export(argparse.Namespace(checkpoint="runs/x/export", device="meta"), "video")
    assert seen == [(("runs/x/export", "meta"), {"domain": "video"})]


def test_an_interrupted_training_run_ends_in_one_line_naming_its_newest_checkpoint(tmp_path, capsys, monkeypatch):
    import multigen.trainer
    from multigen.train import main as train_main

    def interrupted(domain_cls, cfg, checkpoint: bool = True):
        if checkpoint:  # as a run writes one, then Ctrl-C
            (Path(cfg.train.output_dir) / "checkpoints" / "step_20").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(multigen.trainer, "train", interrupted)
    out = tmp_path / "run"
    assert train_main(["--domain", "toy2d", f"train.output_dir={out}"]) == 130
    assert capsys.readouterr().err == (f"multigen-train: interrupted; the same command resumes from "
                                       f"{out / 'checkpoints' / 'step_20'}\n")
    monkeypatch.setattr(multigen.trainer, "train", lambda domain_cls, cfg: interrupted(domain_cls, cfg, False))
    assert train_main(["--domain", "toy2d", f"train.output_dir={tmp_path / 'new'}"]) == 130
    assert capsys.readouterr().err == "multigen-train: interrupted; before the first checkpoint\n"


def test_what_every_process_meets_together_is_told_by_the_first_alone(tmp_path, capsys, monkeypatch):
    """Under a multi-process launch, an interrupt and a non-finite loss (which every process stops on) end in one
    line, the first process's: each process printed it. An error of one process's own (a folder it cannot
    read) is still told by that process."""
    import multigen.trainer
    from multigen.domain import DataError
    from multigen.train import main as train_main

    def fails(error):
        def run(domain_cls, cfg):
            raise error
        return run

    for error, status in [(KeyboardInterrupt(), 130), (multigen.trainer.NonFiniteLossError("loss nan"), 1),
                          (DataError("no such folder"), 2)]:
        monkeypatch.setattr(multigen.trainer, "train", fails(error))
        for rank in ("1", "0"):
            monkeypatch.setenv("RANK", rank)
            assert train_main(["--domain", "toy2d", f"train.output_dir={tmp_path / 'run'}"]) == status
            told = capsys.readouterr().err
            assert told.count("\n") == (1 if rank == "0" or status == 2 else 0), (error, rank, told)


def test_a_terminated_training_run_ends_as_an_interrupted_one_does(tmp_path, capsys, monkeypatch):
    """SIGTERM (a scheduler stopping the job) ends the run where it is, with one line naming the checkpoint it
    resumes from and exit status 143; the signal's handler is put back after."""
    import multigen.trainer
    from multigen.train import main as train_main

    def terminated(domain_cls, cfg):
        (Path(cfg.train.output_dir) / "checkpoints" / "step_20").mkdir(parents=True)
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(multigen.trainer, "train", terminated)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "run"
    assert train_main(["--domain", "toy2d", f"train.output_dir={out}"]) == 143
    assert capsys.readouterr().err == (f"multigen-train: terminated (SIGTERM); the same command resumes from "
                                       f"{out / 'checkpoints' / 'step_20'}\n")
    assert signal.getsignal(signal.SIGTERM) is before
