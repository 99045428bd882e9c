"""benchmarks/gpu.sh: its dry run on the CPU (tiny configs and sizes, no peer, no wheels) writes every section of
the GPU check's JSON and its markdown, so that the one script a GPU run depends on cannot rot unnoticed."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import load_benchmark

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("matmul", "video", "mfu", "pointcloud", "discrete", "tests", "train")


@pytest.mark.slow
def test_gpu_script_dry_run_writes_every_section(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path / "out")}
    run = subprocess.run(["bash", "benchmarks/gpu.sh", "--dry-run", "--work", str(tmp_path / "work")], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "gpu.json").read_text())
    sections = results["sections"]
    assert set(sections) == set(SECTIONS)
    bad = {name: s for name, s in sections.items() if s["status"] not in ("ok", "not available")}
    assert not bad, json.dumps(bad, indent=1)[-4000:]
    assert results["dry_run"] and results["environment"]["torch"] and results["date"]
    assert sections["matmul"]["tflops"] > 0
    assert sections["tests"]["passed"] >= 1 and sections["tests"]["failed"] == 0  # the gpu marker selects tests
    assert sections["video"]["results"][0]["step_seconds"] > 0
    assert {"train", "ops", "metrics"} <= set(sections["pointcloud"])
    assert {"transitions", "throughput"} <= set(sections["discrete"])
    for domain, r in sections["train"]["runs"].items():
        assert r["status"] == "ok" and r["export"] and r["export_loads"] and r["eval"] and r["samples"], domain
    md = (tmp_path / "out" / "gpu.md").read_text()
    assert "| section | status | seconds | note |" in md
    for name in SECTIONS:
        assert f"| {name} | {sections[name]['status']} |" in md
    assert "## trainer runs" in md and "## point clouds: ops" in md


def test_the_mfu_plan_takes_the_baseline_each_lever_and_the_memory_switch(tmp_path: Path) -> None:
    """The mfu section's plan on a GPU: the baseline, the expected best, each lever alone and activation
    checkpointing, all variants of benchmarks/video.py (here with no time left: every row skipped, nothing timed)."""
    gpu = load_benchmark("gpu")
    gpu.run_mfu_hook(argparse.Namespace(device="cpu", peak=1.0, dry_run=False, seconds=-1, work=str(tmp_path)))
    rows = json.loads((tmp_path / "mfu.json").read_text())
    assert all(r["status"].startswith("skipped") for r in rows)
    planned = {"eager", "compile+channels_last+fold_bias", "channels_last", "fold_bias", "compile", "checkpointing"}
    assert {r["variant"] for r in rows} == planned and planned <= set(load_benchmark("video").MFU_VARIANTS)


def test_a_failed_section_names_its_error_in_the_table(tmp_path: Path) -> None:
    """A section whose job fails shows that job's last line (its exception) as the table's note, not only in the
    JSON's output tail, and a failing job after a good one is the one named."""
    gpu = load_benchmark("gpu")
    args = argparse.Namespace(dry_run=True, device="cpu", out=str(tmp_path / "out"), work=str(tmp_path / "work"),
                              budget=120.0)
    check = gpu.Check(args)
    good = gpu.Job([sys.executable, "-c", "print('fine')"], tmp_path / "good.log")
    bad = gpu.Job([sys.executable, "-c", "print('loading')\nimport no_such_peer"], tmp_path / "bad.log")
    check.run_phase([gpu.Section("peer", 30, lambda: [good, bad], lambda jobs: {})])
    result = check.results["sections"]["peer"]
    assert result["status"] == "failed" and "loading" in result["output_tail"]
    assert result["note"] == "ModuleNotFoundError: No module named 'no_such_peer'"
    assert "| peer | failed |" in (tmp_path / "out" / "gpu.md").read_text()
    assert "No module named 'no_such_peer' |" in (tmp_path / "out" / "gpu.md").read_text()
    (tmp_path / "blank.log").write_text("boom\n\n   \n")  # blank lines after the error
    assert gpu.Job([], tmp_path / "blank.log").last_line() == "boom"
