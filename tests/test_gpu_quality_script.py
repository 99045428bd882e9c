"""benchmarks/gpu_quality.sh: its dry run on the CPU (tiny configs and sizes, no wheels) trains every recipe with
both seeds and writes every figure of issue 18's GPU quality check, finite, to its JSON and its markdown table."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import load_benchmark

REPO = Path(__file__).resolve().parent.parent
FIGURES = {
    "video": {"future PSNR (dB)", "interpolation PSNR (dB)", "frame 1-NNA"},
    "natural": {"future PSNR (dB)", "interpolation PSNR (dB)"},
    "pointcloud": {"1-NNA-CD", "COV-CD/torus", "COV-CD/table"},  # the tiny config's two families
    "text": {"bits/char"},
}


@pytest.mark.slow
def test_gpu_quality_dry_run_writes_every_figure(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path / "out")}
    run = subprocess.run(["bash", "benchmarks/gpu_quality.sh", "--dry-run", "--work", str(tmp_path / "work")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "gpu_quality.json").read_text())
    assert results["dry_run"] and results["environment"]["torch"] and results["date"]
    runs = results["runs"]
    assert set(runs) == {f"{recipe}_seed{s}" for recipe in FIGURES for s in (0, 1)}
    for name, r in runs.items():
        assert r["status"] == "ok" and r["info"]["steps"] >= 2 and r["info"]["eval_seconds"] > 0, name
    got = {(f["recipe"], f["figure"]): f for f in results["figures"]}
    assert set(got) == {(recipe, figure) for recipe, figures in FIGURES.items() for figure in figures}
    for key, f in got.items():
        numbers = [f["value"], f["value_spread"], f["baseline"], f["baseline_spread"], *f["seeds"]]
        assert all(math.isfinite(x) for x in numbers) and len(f["seeds"]) == 2, key
        assert f["goal"] and isinstance(f["pass"], bool), key
        if key[0] in ("video", "natural") and "PSNR" in key[1]:  # the motion-compensated reference beside them
            assert math.isfinite(f["reference"]) and math.isfinite(f["reference_spread"]), key
    text = runs["text_seed0"]["figures"]["bits/char"]
    assert math.isfinite(text["value_stderr"]) and math.isfinite(text["baseline_stderr"])
    # the twin's baseline is its best held-out evaluation, taken at one of its steps
    assert text["baseline"] <= text["baseline_last"]
    assert 1 <= text["baseline_step"] <= runs["text_seed0"]["info"]["steps"]
    md = (tmp_path / "out" / "gpu_quality.md").read_text()
    assert ("| recipe | figure | model (mean ± spread) | baseline (mean ± spread) | goal | pass | motion reference "
            "(mean ± spread) |") in md
    for recipe, figure in got:
        assert f"| {recipe} | {figure} | " in md
    for name in runs:
        assert f"| {name} | ok |" in md


def test_a_failed_run_names_its_error_in_the_runs_table() -> None:
    bench = load_benchmark("gpu_quality")
    env = {"device_name": "cpu", "utc": "2026-12-07T00:00:00+00:00", "torch": "2", "cuda": None, "commit": "abc"}
    failed = {"status": "failed", "wall_s": 3.0, "note": "ModuleNotFoundError: No module named 'omegaconf'"}
    md = bench.markdown({"environment": env, "dry_run": False, "train_seconds": 330.0, "budget_s": 465.0,
                         "figures": [], "runs": {"text_seed0": failed}})
    assert "| text_seed0 | failed |" in md and "| 3 | ModuleNotFoundError: No module named 'omegaconf' |" in md


def test_a_failed_run_is_recorded_with_its_last_line_as_the_note(tmp_path: Path) -> None:
    bench = load_benchmark("gpu_quality")
    job = bench.gpu.Job([sys.executable, "-c", "print('training')\nimport no_such_peer"], tmp_path / "run.log")
    job.launch()
    while not job.poll():
        time.sleep(0.05)
    (tmp_path / "run.json").write_text('{"info": {"steps": 3}}')  # what the run wrote before it failed
    run = bench.run_record(job, tmp_path / "run.json")
    assert run["status"] == "failed" and run["info"] == {"steps": 3} and "training" in run["output_tail"]
    assert run["note"] == "ModuleNotFoundError: No module named 'no_such_peer'"
