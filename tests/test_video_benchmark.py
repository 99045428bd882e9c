"""benchmarks/video.py's MFU measurement (run on a GPU by benchmarks/gpu.py): its FLOP count and its dry run."""

import pytest

from .conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("video")


def test_step_flops_are_per_clip(bench):
    cfg = bench.video_config("tiny", None, ["task.image_prob=0.5"])
    one = bench.step_flops(cfg)
    assert one > 0 and bench.step_flops(cfg, 3) == 3 * one  # so mfu_rows counts batch 1 and multiplies


def test_mfu_dry_run_gives_rows_and_a_table(bench):
    rows = bench.mfu_rows("cpu", peak_tflops=1.0, dry_run=True, variants=["eager", "fold_bias"])
    assert [(r["variant"], r["batch"], r["status"]) for r in rows] == [("eager", 1, "ok"), ("fold_bias", 1, "ok")]
    r = rows[0]
    assert r["step_seconds"] > 0 and r["mfu_percent"] == pytest.approx(100 * r["tflop_per_step"] / r["step_seconds"])
    skipped = bench.mfu_rows("cpu", peak_tflops=1.0, dry_run=True, variants=["compile"], budget_s=-1)
    assert skipped[0]["status"].startswith("skipped")
    table = bench.mfu_table(rows + skipped).splitlines()
    assert len(table) == 2 + 3 and all(line.count("|") == 10 for line in table)
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
    assert len(table) == 2 + 2 and all(line.count("|") == 13 for line in table)
    assert table[2].startswith("| ddim | 2 | 0.5 | ") and " / " in table[2].split("|")[4]
