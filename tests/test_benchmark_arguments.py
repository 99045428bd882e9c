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
    ("pointcloud", ["--points", "4"], "argument --points: must be at least 16, got 4"),
    ("samplers", ["--nfe", "5", "2000"], "--nfe [2000]: at most the schedule's 1000 levels"),
    ("samplers_2d", ["--nfe", "1001"], "--nfe [1001]: at most the schedule's 1000 levels"),
    ("samplers", ["--out", "results.txt"], "argument --out: results.txt: name a .json file"),
    ("trainer", ["--steps", "0"], "argument --steps: must be at least 1, got 0"),
    ("trainer", ["--warmup", "-1"], "--warmup: steps >= 0, got -1"),
    ("trainer", ["--runs", "toy2d:tiny", "toy2d:nosuch"], "--runs toy2d:nosuch: no configs/toy2d/nosuch.yaml"),
    ("trainer", ["--runs", "nosuch:tiny"], "--runs nosuch:tiny: "),
    ("video", ["--batch", "0"], "argument --batch: must be at least 1, got 0"),
    ("video", ["--mfu", "--dry-run", "--batches", "0"], "argument --batches: must be at least 1, got 0"),
    ("discrete", ["--seeds", "0", "0"], "--seeds [0, 0]: each seed once"),
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


def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """``--out`` is checked first: a folder, or a path through a file, was a traceback after every measurement."""
    bench = load_benchmark("samplers")
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "file").write_text("")
    for out, message in [(tmp_path / "folder.json", "folder.json is a folder"),
                         (tmp_path / "file" / "x.json", "file is a file")]:
        monkeypatch.setattr(sys, "argv", ["samplers.py", "--out", str(out)])
        with pytest.raises(SystemExit) as stopped:
            bench.main()
        assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_result_files_are_strict_json_and_named_beside_out(tmp_path):
    """A NaN or infinity is written as null (strict parsers refuse bare NaN: a completion row of one view wrote
    it), and a part's file is named from ``--out``'s stem (a '.json' inside a folder's name was replaced)."""
    import json
    import math
    from pathlib import Path

    from multigen.benchmarking import beside, write_results

    path = write_results(tmp_path / "r.json", {"rows": [{"se": math.nan, "x": 1.5}], "inf": (math.inf, 2)})
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert data["rows"] == [{"se": None, "x": 1.5}] and data["inf"] == [None, 2]
    assert beside(Path("runs.json.d/pc.json"), "quality") == Path("runs.json.d/pc_quality.json")
