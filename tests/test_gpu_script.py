"""benchmarks/gpu.sh: its dry run on the CPU (tiny configs and sizes, no peer, no wheels) writes every section of
the GPU check's JSON and its markdown, so that the one script a GPU run depends on cannot rot unnoticed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

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
