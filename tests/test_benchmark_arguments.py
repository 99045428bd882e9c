"""The benchmark scripts refuse bad arguments in one line before any work: a zero count, a share outside its range,
an unknown config key or config, a missing export (nothing here trains or measures)."""

import sys

import pytest

from .conftest import load_benchmark

CASES = [
    ("samplers", ["--num", "0"], "argument --num: must be at least 1, got 0"),
    ("samplers", ["--nfe", "5", "0"], "argument --nfe: must be at least 1, got 0"),
    ("samplers_2d", ["--num", "1"], "--num: at least 2 samples (their covariance is scored), got 1"),
    ("discrete", ["--tokens", "0"], "argument --tokens: must be at least 1, got 0"),
    ("discrete", ["--vocab", "1"], "--vocab: a transition needs at least 2 classes, got 1"),
    ("discrete", ["--infill", "--hidden", "0"], "--hidden: a share of the characters in (0, 1), got 0.0"),
    ("discrete", ["--infill", "--infill-rate", "2"], "--infill-rate: a share of the sequences in [0, 1], got 2.0"),
    ("discrete", ["--versus-ar", "--override", "train.max_steps=5", "--ar-override", "train.nosuch=1"],
     "--override / --ar-override: train.nosuch: Key 'nosuch' not in 'TrainConfig'"),
    ("discrete", ["--curve", "--override", "process.transition=uniform", "sample.remask=0.1"],
     "remasking is for process.transition=absorbing"),
    ("pointcloud", ["--bank", "0"], "argument --bank: must be at least 1, got 0"),
    ("pointcloud", ["--profile", "nosuch"], "no config 'nosuch' in"),
]


@pytest.mark.parametrize("script, args, message", CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in CASES])
def test_a_bad_argument_is_one_line_before_any_work(script, args, message, monkeypatch, capsys):
    bench = load_benchmark(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *args])
    with pytest.raises(SystemExit) as stopped:
        bench.main()
    assert stopped.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("part", ["--denoising", "--completion", "--quality"])
def test_a_missing_export_is_named_in_one_line(part, tmp_path, monkeypatch):
    bench = load_benchmark("pointcloud")
    monkeypatch.setattr(sys, "argv", ["pointcloud.py", part, str(tmp_path / "nothing")])
    with pytest.raises(SystemExit, match=r"nothing is not a multigen export directory"):
        bench.main()
