"""benchmarks/video.py's MFU measurement (run on a GPU by benchmarks/gpu.py): its FLOP count and its dry run."""

from unittest.mock import patch

import pytest
from torch.utils.checkpoint import checkpoint

from .conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("video")


def test_step_flops_are_per_clip(bench):
    cfg = bench.video_config("tiny", None, ["task.image_prob=0.5"])
    one = bench.step_flops(cfg)
    assert one > 0 and bench.step_flops(cfg, 3) == 3 * one  # so mfu_rows counts batch 1 and multiplies


def test_mfu_dry_run_gives_rows_and_a_table(bench):
    with patch("multigen.nn.blocks.checkpoint", side_effect=checkpoint) as checkpointed:
        rows = bench.mfu_rows("cpu", peak_tflops=1.0, dry_run=True, variants=["eager", "fold_bias", "checkpointing"])
    assert checkpointed.call_count > 0  # by the checkpointing row
    ran = [("eager", 1, "ok"), ("fold_bias", 1, "ok"), ("checkpointing", 1, "ok")]
    assert [(r["variant"], r["batch"], r["status"]) for r in rows] == ran
    r = rows[0]
    assert r["step_seconds"] > 0 and r["mfu_percent"] == pytest.approx(100 * r["tflop_per_step"] / r["step_seconds"])
    skipped = bench.mfu_rows("cpu", peak_tflops=1.0, dry_run=True, variants=["compile"], budget_s=-1)
    assert skipped[0]["status"].startswith("skipped")
    table = bench.mfu_table(rows + skipped).splitlines()
    assert len(table) == 2 + 4 and all(line.count("|") == 10 for line in table)
    with pytest.raises(ValueError, match="unknown MFU variant"):
        bench.mfu_rows("cpu", peak_tflops=1.0, dry_run=True, variants=["fast"])


def test_quality_rows_and_table_of_an_untrained_export(bench, tmp_path):
    from multigen.benchmarking import quality_by_sampler
    from multigen.config import load_config
    from multigen.export import export_model
    from video.domain import Video, VideoConfig

    domain = Video(load_config(VideoConfig, bench.REPO / "configs" / "video" / "tiny.yaml"))
    export = export_model(domain.build_model(), domain, tmp_path / "export")
    rows = quality_by_sampler(export, "cpu", [("ddim", 2), ("dpm_solver_pp", 2)], (0.5,), num_clips=2)
    assert [(r["sampler"], r["steps"], r["temperature"]) for r in rows] == [("ddim", 2, 0.5), ("dpm_solver_pp", 2, 0.5)]
    table = bench.quality_table(rows).splitlines()
    assert len(table) == 2 + 2 and all(line.count("|") == 16 for line in table)
    assert "future motion-ref PSNR" in table[0] and f"{rows[0]['past/baseline_motion_psnr']:.2f}" in table[2]
    assert table[2].startswith("| ddim | 2 | 0.5 | ") and " / " in table[2].split("|")[4]
    assert rows[0]["num_clips"] == 2


def test_quality_settings_are_checked_before_any_evaluation_and_rows_count_what_was_evaluated(bench, tmp_path,
                                                                                              monkeypatch):
    """A bad setting anywhere in the list exits naming it before the first evaluation (a long run was lost at its
    last setting), and a row records the clips evaluated: at most the held-out set (it recorded the count asked)."""
    from multigen.benchmarking import quality_by_sampler
    from multigen.config import load_config
    from multigen.export import export_model
    from video.domain import Video, VideoConfig

    domain = Video(load_config(VideoConfig, bench.REPO / "configs" / "video" / "tiny.yaml"))
    export = export_model(domain.build_model(), domain, tmp_path / "export")
    evaluated = []
    monkeypatch.setattr(Video, "evaluate", lambda self, model, val: evaluated.append(len(val)) or {})
    T = domain.cfg.diffusion.timesteps
    for settings, temperatures, message in [([("ddim", 2), ("ddim", T + 1)], (1.0,), f"ddim:{T + 1} at temperature"),
                                            ([("ddim", 2)], (1.0, -1.0), "temperature: must be >= 0.0")]:
        with pytest.raises(SystemExit, match=message):
            quality_by_sampler(export, "cpu", settings, temperatures, num_clips=2)
    assert not evaluated
    [row] = quality_by_sampler(export, "cpu", [("ddim", 2)], num_clips=10**6)
    assert row["num_clips"] == evaluated[0] < 10**6


def test_the_cost_table_exits_non_zero_naming_the_rows_that_failed_and_refuses_an_absent_device(bench, tmp_path):
    """A row that fails (an unknown config here; a peer package not installed) leaves the table and the JSON of the
    others, and the command fails naming it; every row measures its config with the overrides given, and is named
    with them; a device this machine lacks is an argparse error, before any work."""
    import json
    import subprocess
    import sys

    import torch

    script = str(bench.REPO / "benchmarks" / "video.py")
    run = subprocess.run([sys.executable, script, "--configs", "nosuch", "tiny", "--steps", "1", "--device", "cpu",
                          "--override", "data.frames=4", "model.gradient_checkpointing=true",
                          "--out", str(tmp_path / "v.json")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "failed: nosuch" in run.stderr
    [row] = json.loads((tmp_path / "v.json").read_text())["results"]
    assert row["config"] == "tiny data.frames=4 model.gradient_checkpointing=true" and row["clip"].startswith("4x")
    if not torch.cuda.is_available():
        run = subprocess.run([sys.executable, script, "--device", "cuda"], capture_output=True, text=True, timeout=300)
        assert run.returncode == 2 and "this machine has no cuda device (use cpu)" in run.stderr
