"""The one GPU check (issue 16): device tests on CUDA, the speed tables, a bf16 matrix-product peak and a short
run of each domain through the trainer, inside a hard time budget, written as ``gpu.json`` and ``gpu.md``.

    bash benchmarks/gpu.sh                      # on a GPU machine: installs .whl/ (make_gpu_wheels.sh), runs this
    python benchmarks/gpu.py [--out DIR] [--budget 450] [--train-seconds 60]
    python benchmarks/gpu.py --dry-run --out DIR    # a CPU: tiny configs and sizes, no peer, the same files

Each section runs in subprocesses with its own time box, is skipped with a note when the budget has too little
left for it, and is recorded whatever happens to it (failed, timed out); ``gpu.json`` and ``gpu.md`` are
rewritten after every section, so a run stopped from outside still leaves what it measured. Sections:

* ``matmul``: the bf16 rate of an 8192^3 matrix product (the practical peak for MFU), in this process.
* ``tests`` and ``train``, concurrently: ``pytest -m "gpu and not slow"`` with ``MULTIGEN_TEST_DEVICE=cuda``
  (the ``device`` fixture's CUDA instances and the CUDA-only tests, see tests/conftest.py); and each domain's
  defaults through ``multigen-train`` in bf16 for about ``--train-seconds`` (``train.max_minutes`` ends it on
  time), ending in sampling, held-out evaluation, a checkpoint and the export, which is loaded back. Steps/s are
  read from the times the run's ``log.jsonl`` records appear, with the three runs and the tests sharing the GPU.
* ``pointcloud``: ``benchmarks/pointcloud.py`` (train step at 2 048 points, batch 8, per config; ops; metrics).
* ``mfu``: the hook for ``benchmarks/video.py``'s ``mfu_rows(device, peak_tflops, dry_run, budget_s)``, called
  with the parameters it names, when it exists (else recorded as not available), with what is left of its box.
* ``video``: ``benchmarks/video.py --configs default gpu --peer`` (ours against video-diffusion-pytorch).
* ``discrete``: ``benchmarks/discrete.py --throughput`` (closed-form against dense transitions; tokens/s).

On a GPU the tests and trainer runs go first, then the speed sections one after another, alone on the GPU, in
that order (the issue's goals first: the point-cloud figures and MFU; the budget may not reach the last ones);
a dry run runs every section at once.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import importlib.metadata
import inspect
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parent.parent
# This folder holds scripts named like the packages they measure: import the packages, not the scripts.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

from multigen.benchmarking import markdown_table, matmul_tflops, time_train_steps, write_results  # noqa: E402
from multigen.cli import available_device  # noqa: E402

DOMAINS = ("video", "pointcloud", "discrete")
TAIL = 3000  # characters of a failed job's output kept in the JSON


@dataclass
class Job:
    """One subprocess of a section: its command, where its output goes, its time limit and what it did."""

    cmd: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    watch: Callable[[], None] | None = None  # called about every 0.2 s while it runs, and once after
    timeout: float = float("inf")  # its section's time box, or what is left of the budget
    proc: subprocess.Popen | None = None
    start: float = 0.0
    seconds: float | None = None
    timed_out: bool = False

    def launch(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "w") as log:  # a new session: a time-out ends the job's own subprocesses too
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, env={**os.environ, **self.env}, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.start = time.monotonic()

    def poll(self) -> bool:
        """True once it has ended (killed with its process group when past its time limit)."""
        if self.seconds is not None:
            return True
        elapsed = time.monotonic() - self.start
        if self.proc.poll() is None and elapsed > self.timeout:
            self.kill()
            self.timed_out = True
        if self.proc.poll() is None:
            if self.watch:
                self.watch()
            return False
        self.seconds = elapsed
        if self.watch:
            self.watch()
        return True

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def status(self) -> str:
        return "timed out" if self.timed_out else "ok" if self.proc.returncode == 0 else "failed"

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-TAIL:] if self.log.exists() else ""

    def last_line(self) -> str:
        """The last non-blank line of its output (a failure's exception, as a rule), cut to 200 characters."""
        lines = [line.strip() for line in self.tail().splitlines() if line.strip()]
        return lines[-1][:200] if lines else ""


@dataclass
class Section:
    """A part of the check: the jobs it starts and how their output becomes its result."""

    name: str
    box: float  # seconds it may take; it is skipped when less than half is left of the budget
    jobs: Callable[[], list[Job]]
    result: Callable[[list[Job]], dict[str, Any]]


class Check:
    """The run: arguments, the budget, the results so far and the files they are written to."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.dry = args, args.dry_run
        self.device = "cpu" if self.dry else args.device
        self.out = Path(args.out)
        self.work = Path(args.work or tempfile.mkdtemp(prefix="multigen-gpu-"))
        self.start = time.monotonic()
        self.py = sys.executable
        self.results: dict[str, Any] = {"environment": environment(self.device), "dry_run": self.dry,
                                        "budget_s": args.budget, "work_dir": str(self.work), "sections": {}}
        self.jobs: dict[str, list[Job]] = {}
        self.box_scale = 3.0 if self.dry else 1.0  # the boxes are sized for the GPU run; a shared CPU is slower

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.start)

    def record(self, name: str, result: dict[str, Any]) -> None:
        self.results["sections"][name] = result
        self.save()

    def save(self) -> None:
        """Write gpu.json, gpu.md and gpu.log (the end of every job's output) as they stand."""
        self.results["elapsed_s"] = time.monotonic() - self.start
        write_results(self.out / "gpu.json", self.results)
        (self.out / "gpu.md").write_text(markdown(self.results))
        logs = [f"===== {name} {job.cmd}\n{job.log.read_text(errors='replace')[-30000:]}"
                for name, jobs in self.jobs.items() for job in jobs if job.log.exists()]
        (self.out / "gpu.log").write_text("\n".join(logs))

    def run_phase(self, sections: list[Section]) -> None:
        """Start the jobs of ``sections`` together; record each section as soon as its jobs have ended."""
        running: dict[str, Section] = {}
        for s in sections:
            left, box = self.left(), s.box * self.box_scale
            if left < box / 2:
                self.record(s.name, {"status": "skipped", "note": f"{left:.0f} s left of the budget; needs "
                                                                  f"{box / 2:.0f}-{box:.0f} s"})
                continue
            try:
                jobs = s.jobs()
            except Exception as e:  # a section that cannot even start is recorded, the others go on
                self.record(s.name, {"status": "error", "note": f"{type(e).__name__}: {e}"})
                continue
            for job in jobs:
                job.timeout = min(box, left)
                job.launch()
            self.jobs[s.name], running[s.name] = jobs, s
            print(f"[{time.monotonic() - self.start:5.0f} s] {s.name}: started {len(jobs)} job(s)", flush=True)
        while running:
            time.sleep(0.2)
            for name, s in list(running.items()):
                jobs = self.jobs[name]
                if all([job.poll() for job in jobs]):
                    del running[name]
                    try:
                        result = s.result(jobs)
                    except Exception as e:
                        result = {"status": "error", "note": f"reading its output: {type(e).__name__}: {e}"}
                    result.setdefault("status", worst(job.status() for job in jobs))
                    result.setdefault("seconds", max((job.seconds for job in jobs), default=0.0))
                    if result["status"] != "ok" and jobs:
                        bad = next((job for job in jobs if job.status() != "ok"), jobs[0])
                        result.setdefault("output_tail", bad.tail())
                        result.setdefault("note", bad.last_line())
                    self.record(name, result)
                    print(f"[{time.monotonic() - self.start:5.0f} s] {name}: {result['status']} "
                          f"in {result['seconds']:.0f} s", flush=True)

    def kill_all(self) -> None:
        for jobs in self.jobs.values():
            for job in jobs:
                if job.proc is not None and job.proc.poll() is None:
                    job.kill()


def worst(statuses) -> str:
    order = ["ok", "failed", "timed out"]
    return max(statuses, key=order.index, default="ok")


def environment(device: str) -> dict[str, Any]:
    """Device name, versions, date and commit of this run."""

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    commit = os.environ.get("MULTIGEN_COMMIT")  # the device's copy of the checkout has no git history
    if not commit:
        try:
            found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
            commit = found.stdout.strip() if found.returncode == 0 else None
        except OSError:  # no git program
            commit = None
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "triton": version("triton"),
        "python": platform.python_version(), "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "commit": commit,
    }


# ---- sections -----------------------------------------------------------------------------------------------


def matmul_section(check: Check) -> None:
    """The bf16 rate of an n^3 matrix product, measured here (8192 on a GPU, 256 in a dry run)."""
    n = 256 if check.dry else 8192
    start = time.monotonic()
    try:
        tflops = matmul_tflops(check.device, n)
        result = {"status": "ok", "n": n, "dtype": "bfloat16", "tflops": tflops}
    except Exception as e:  # recorded; MFU is then left without a peak
        result = {"status": "error", "note": f"{type(e).__name__}: {e}"}
    if check.device == "cuda":
        torch.cuda.empty_cache()
    check.record("matmul", {**result, "seconds": time.monotonic() - start})


def cli_section(check: Check, name: str, box: float, script: str, args: list[str]) -> Section:
    """``benchmarks/<script>`` with ``args`` writing its JSON into the work folder; the section's result is that
    JSON (without its header)."""
    out = check.work / f"{name}.json"

    def jobs() -> list[Job]:
        cmd = [check.py, str(REPO / "benchmarks" / script), "--device", check.device, "--out", str(out), *args]
        return [Job(cmd, check.work / f"{name}.log")]

    def result(jobs: list[Job]) -> dict[str, Any]:
        header = ("date", "torch", "threads", "command")
        data = json.loads(out.read_text()) if out.exists() else {}
        return {"command": " ".join(jobs[0].cmd), **{k: v for k, v in data.items() if k not in header}}

    return Section(name, box, jobs, result)


def video_section(check: Check) -> Section:
    args = ["--configs", "tiny", "--steps", "1"] if check.dry else ["--configs", "default", "gpu", "--peer",
                                                                      "--steps", "5"]
    section = cli_section(check, "video", 120, "video.py", args)
    rows_of = section.result

    def result(jobs: list[Job]) -> dict[str, Any]:
        r = rows_of(jobs)
        rows = r.get("results", [])
        ours = {x["config"]: x for x in rows if x["model"].startswith("multigen")}
        peer = {x["config"]: x for x in rows if not x["model"].startswith("multigen")}
        r["ours_vs_peer"] = [
            {"config": c, "params_M ours / peer": f"{ours[c]['params_M']:.2f} / {peer[c]['params_M']:.2f}",
             "s/step ours": ours[c]["step_seconds"], "s/step peer": peer[c]["step_seconds"],
             "speed-up": peer[c]["step_seconds"] / ours[c]["step_seconds"],
             "peak MB ours": ours[c]["peak_memory_MB"], "peak MB peer": peer[c]["peak_memory_MB"]}
            for c in ours if c in peer]
        return r

    return Section("video", section.box, section.jobs, result)


def mfu_hook_parameters() -> list[str] | None:
    """The parameter names of ``mfu_rows`` in benchmarks/video.py, or None when it has none (read, not run)."""
    tree = ast.parse((REPO / "benchmarks" / "video.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "mfu_rows":
            return [a.arg for a in node.args.args + node.args.kwonlyargs]
    return None


def mfu_section(check: Check) -> Section:
    """HOOK: MFU of the video gpu config over variants and batches, by ``benchmarks/video.py``'s ``mfu_rows``
    (``mfu_rows(device, peak_tflops, dry_run, budget_s)``; it gets those that it names), given the peak measured
    by the matmul section and the seconds left to it. Recorded as not available while the function does not
    exist; in a dry run it is called only if it takes ``dry_run`` (a CPU cannot run the gpu config)."""
    out, box = check.work / "mfu.json", 180
    params = mfu_hook_parameters()
    peak = check.results["sections"].get("matmul", {}).get("tflops")

    def jobs() -> list[Job]:
        if params is None or (check.dry and "dry_run" not in params):
            return []
        seconds = min(box * check.box_scale, check.left()) - 20  # its rows stop in time; start-up and exit
        cmd = [check.py, __file__, "--mfu-hook", "--work", str(check.work), "--device", check.device,
               "--seconds", str(seconds)]
        return [Job(cmd + (["--peak", str(peak)] if peak else []) + (["--dry-run"] if check.dry else []),
                    check.work / "mfu.log")]

    def result(jobs: list[Job]) -> dict[str, Any]:
        if not jobs:
            note = ("benchmarks/video.py has no mfu_rows" if params is None
                    else "mfu_rows takes no dry_run: not run on a CPU")
            return {"status": "not available", "note": note}
        return {"peak_tflops": peak, "rows": json.loads(out.read_text()) if out.exists() else []}

    return Section("mfu", box, jobs, result)


def run_mfu_hook(args: argparse.Namespace) -> None:
    """Child of the mfu section: call ``mfu_rows`` with the parameters it names; write its rows."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmarks_video", REPO / "benchmarks" / "video.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    offered = {"device": args.device, "peak_tflops": args.peak, "dry_run": args.dry_run, "budget_s": args.seconds}
    names = inspect.signature(module.mfu_rows).parameters
    if args.dry_run or not {"variants", "batches"} <= set(names):
        rows = module.mfu_rows(**{k: v for k, v in offered.items() if k in names})
    else:
        # what decides the >= 30 % goal first: the baseline, then the expected best at growing batches (each a
        # fresh compile), then what each lever gives alone at batch 32, and the memory activation checkpointing saves
        start, rows = time.monotonic(), []
        plan = [(["eager", "compile+channels_last+fold_bias"], (8,)), (["compile+channels_last+fold_bias"], (32, 64)),
                (["eager", "channels_last", "fold_bias"], (32,)), (["compile", "checkpointing"], (32,))]
        for variants, batches in plan:
            left = args.seconds - (time.monotonic() - start)
            compiles = [r["warmup_seconds"] for r in rows if r.get("status") == "ok" and "compile" in r["variant"]]
            more = {"compile_seconds": max(compiles)} if compiles and "compile_seconds" in names else {}
            rows += module.mfu_rows(**{k: v for k, v in offered.items() if k in names and k != "budget_s"},
                                    variants=variants, batches=batches, budget_s=left, **more)
            (Path(args.work) / "mfu.json").write_text(json.dumps(rows, indent=2))
    (Path(args.work) / "mfu.json").write_text(json.dumps(rows, indent=2))


def pointcloud_section(check: Check) -> Section:
    args = (["--configs", "tiny", "--batch", "1", "--points", "256", "--steps", "1", "--metric-points", "64"]
            if check.dry else ["--batch", "8", "--points", "2048", "--steps", "5"])
    return cli_section(check, "pointcloud", 90, "pointcloud.py", args)


def discrete_section(check: Check) -> Section:
    args = ["--vocab", "27", "--tokens", "256", "--predicted-tokens", "64", "--steps", "1"] if check.dry else []
    return cli_section(check, "discrete", 60, "discrete.py", ["--throughput", *args])


def tests_section(check: Check) -> Section:
    """``pytest -m "gpu and not slow"`` on the device (a dry run: one such test on the CPU)."""
    xml = check.work / "tests.xml"
    cmd = [check.py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", "--continue-on-collection-errors",
           "-m", "gpu and not slow", f"--junitxml={xml}"]
    cmd += ["tests/test_devices.py", "-k", "guidance"] if check.dry else ["tests"]

    def jobs() -> list[Job]:
        return [Job(cmd, check.work / "tests.log", env={"MULTIGEN_TEST_DEVICE": check.device})]

    def result(jobs: list[Job]) -> dict[str, Any]:
        counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
        failures = []
        if xml.exists():
            for suite in ET.parse(xml).getroot().iter("testsuite"):
                n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
                counts["passed"] += n["tests"] - n["failures"] - n["errors"] - n["skipped"]
                counts["failed"] += n["failures"]
                counts["errors"] += n["errors"]
                counts["skipped"] += n["skipped"]
            for case in ET.parse(xml).getroot().iter("testcase"):
                for bad in [*case.iter("failure"), *case.iter("error")]:
                    message = (bad.get("message") or "").splitlines()
                    failures.append(f"{case.get('classname')}::{case.get('name')}: {message[0] if message else ''}")
        r: dict[str, Any] = {"command": f"MULTIGEN_TEST_DEVICE={check.device} " + " ".join(cmd[1:]), **counts,
                             "failures": failures[:50]}
        if jobs[0].proc.returncode != 0:
            r["output_tail"] = jobs[0].tail()
        return r

    return Section("tests", 150, jobs, result)


def train_section(check: Check) -> Section:
    """Each domain through the trainer, concurrently, each in its own process (see :func:`run_train_one`)."""
    box = check.args.train_seconds + 90  # start-up, the step estimate, final sampling, evaluation and export
    seen: dict[str, dict[int, float]] = {d: {} for d in DOMAINS}  # domain -> step -> when its record appeared

    def watcher(domain: str) -> Callable[[], None]:
        log = check.work / "train" / domain / "log.jsonl"

        def watch() -> None:
            if log.exists():
                now = time.monotonic()
                for line in log.read_text().splitlines():
                    record = json.loads(line) if line.endswith("}") else {}
                    if "loss" in record:
                        seen[domain].setdefault(record["step"], now)

        return watch

    def jobs() -> list[Job]:
        seconds = 1.0 if check.dry else min(check.args.train_seconds, min(box, check.left()) - 90)
        return [Job([check.py, __file__, "--train-one", d, "--work", str(check.work / "train"), "--seconds",
                     str(seconds), "--device", check.device, *(["--dry-run"] if check.dry else [])],
                    check.work / "train" / f"{d}.log", watch=watcher(d)) for d in DOMAINS]

    def result(jobs: list[Job]) -> dict[str, Any]:
        from multigen.trainer import read_log

        runs = {}
        for domain, job in zip(DOMAINS, jobs):
            out = check.work / "train" / domain
            chosen = out.parent / f"{domain}.json"  # written by run_train_one
            info = json.loads(chosen.read_text()) if chosen.exists() else {}
            log = read_log(out) if (out / "log.jsonl").exists() else []
            losses = [r for r in log if "loss" in r]
            times = sorted(seen[domain].items())
            rate = ((times[-1][0] - times[0][0]) / (times[-1][1] - times[0][1])
                    if len(times) > 1 and times[-1][1] > times[0][1] else None)
            run = {"status": job.status(), "wall_s": job.seconds, **info, "steps_per_s": rate,
                   "steps": losses[-1]["step"] if losses else 0,
                   "loss_first": losses[0]["loss"] if losses else None,
                   "loss_last": losses[-1]["loss"] if losses else None,
                   "eval": {k[5:]: v for r in log for k, v in r.items() if k.startswith("eval/")},
                   "samples": sorted(p.name for p in (out / "samples").glob("*")),
                   "export": (out / "export" / "model.safetensors").is_file()}
            if run["status"] != "ok":
                run["output_tail"] = job.tail()
            runs[domain] = run
        return {"runs": runs, "steps_per_s_note": "from the times log.jsonl records appeared, three runs and the "
                                                  "tests sharing the device"}

    return Section("train", box, jobs, result)


def train_overrides(domain: str, dry: bool) -> list[str]:
    """The trainer's settings for one short run (beside ``train.max_steps``): bf16, end-only sampling and
    evaluation; a dry run's evaluation and sampling shrunk to a few items."""
    common = ["train.mixed_precision=bf16", "train.resume=false", "train.sample_every=0", "train.eval_every=0"]
    if not dry:
        return [*common, "train.num_workers=2"]
    small = {"video": ["eval.num_clips=1", "eval.samples_per_clip=1", "eval.batch_size=1", "sample.steps=2"],
             "pointcloud": ["eval.num_shapes=2", "data.num_val=2", "sample.steps=2"],
             "discrete": ["eval.num_sequences=2"]}
    return [*common, "train.cpu=true", "train.cpu_threads=1", "train.batch_size=2", "sample.num=1", *small[domain]]


def run_train_one(args: argparse.Namespace) -> None:
    """Child of the train section: estimate steps/s from a few timed steps, train for about ``--seconds`` with
    ``multigen-train``, load the export back; write what it chose and saw to ``<work>/<domain>.json``."""
    from accelerate.utils import send_to_device
    from torch.utils.data import default_collate

    from multigen.config import load_config
    from multigen.domain import get_domain
    from multigen.export import load_pretrained
    from multigen.train import main as train_main, resolve_config_file

    name, work, device = args.train_one, Path(args.work), args.device
    out, config = work / name, "tiny" if args.dry_run else None
    overrides = [f"train.output_dir={out}", *train_overrides(name, args.dry_run)]
    domain_cls = get_domain(name)
    cfg = load_config(domain_cls.config_class, resolve_config_file(name, config), overrides)
    domain = domain_cls(cfg)
    domain.fit()
    data = domain.build_dataset("train")
    start = time.perf_counter()
    batch = (domain.collate_fn or default_collate)([data[i] for i in range(cfg.train.batch_size)])
    batch_s = time.perf_counter() - start
    model = domain.build_model().to(device)
    batch = send_to_device(batch, device)
    step_s, _ = time_train_steps(lambda: domain.training_loss(model, batch), model.parameters(), device,
                                 torch.bfloat16, steps=1 if args.dry_run else 5)
    del model, batch
    if device == "cuda":
        torch.cuda.empty_cache()
    rate = 1 / (step_s + batch_s / max(1, cfg.train.num_workers))
    # the estimate leaves out the trainer's own work (data loader, clipping, EMA, Muon) and the other runs on the
    # device: train.max_minutes ends the run on time, at a log step (about 20 in the estimated span)
    estimate = max(10, int(args.seconds * rate))
    max_steps = min(3, max(2, estimate)) if args.dry_run else 2 * estimate
    argv = ["--domain", name, *(["--config", config] if config else []), *overrides, f"train.max_steps={max_steps}",
            f"train.log_every={max(1, estimate // 20)}", f"train.checkpoint_every={max_steps}",
            *([] if args.dry_run else [f"train.max_minutes={args.seconds / 60:.4f}"])]
    info: dict[str, Any] = {"config": config or "default", "target_seconds": args.seconds,
                            "estimated_steps_per_s": rate, "max_steps": max_steps, "command": "multigen-train "
                            + " ".join(argv)}
    (work / f"{name}.json").write_text(json.dumps(info, indent=2))
    info["exit_code"] = train_main(argv)
    exported = load_pretrained(out / "export", device)
    info["export_loads"] = True
    info["export_params_M"] = sum(p.numel() for p in exported.model.parameters()) / 1e6
    (work / f"{name}.json").write_text(json.dumps(info, indent=2))
    if info["exit_code"]:
        sys.exit(info["exit_code"])


# ---- the markdown ---------------------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown: a table of sections, then each section's own tables."""
    env, sections = results["environment"], results["sections"]
    lines = [f"# GPU check: {env['device_name']}{' (dry run on a CPU)' if results['dry_run'] else ''}", "",
             f"{env['utc']}; torch {env['torch']}, CUDA {env['cuda']}, Triton {env['triton']}, "
             f"Python {env['python']}; commit {env['commit']}; budget {results['budget_s']:.0f} s, took "
             f"{results.get('elapsed_s', 0):.0f} s.", "",
             markdown_table([{"section": name, "status": s["status"], "seconds": s.get("seconds", 0.0),
                              "note": s.get("note", "")} for name, s in sections.items()]), ""]
    parts: dict[str, list[tuple[str, list[dict]]]] = {
        "matmul": [("bf16 matrix product", [{k: v for k, v in sections.get("matmul", {}).items()
                                             if k in ("n", "dtype", "tflops")}])],
        "tests": [("device tests", [{k: sections.get("tests", {}).get(k) for k in
                                     ("passed", "failed", "errors", "skipped")}]),
                  ("failures", [{"test": f} for f in sections.get("tests", {}).get("failures", [])])],
        "video": [("video train step", sections.get("video", {}).get("results", [])),
                  ("ours against video-diffusion-pytorch", sections.get("video", {}).get("ours_vs_peer", []))],
        "mfu": [("MFU of the video gpu config", sections.get("mfu", {}).get("rows", []))],
        "pointcloud": [(f"point clouds: {k}", sections.get("pointcloud", {}).get(k, []))
                       for k in ("train", "ops", "metrics")],
        "discrete": [(f"D3PM: {k}", sections.get("discrete", {}).get(k, [])) for k in ("transitions", "throughput")],
        "train": [("trainer runs", [
            {"domain": d, **{k: r.get(k) for k in ("status", "steps", "estimated_steps_per_s", "steps_per_s",
                                                   "wall_s", "loss_first", "loss_last", "export", "export_loads")},
             "eval": r.get("eval", {})} for d, r in sections.get("train", {}).get("runs", {}).items()])],
    }
    for name, tables in parts.items():
        if name not in sections:
            continue
        for title, rows in tables:
            if any(rows):
                lines += [f"## {title}", "", markdown_table(rows), ""]
    return "\n".join(lines)


# ---- main -----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/out/gpu",
                        help="folder for gpu.json, gpu.md and gpu.log (default: $OUT, else benchmarks/out/gpu)")
    parser.add_argument("--budget", type=float, default=450, help="seconds for everything this script does")
    parser.add_argument("--train-seconds", type=float, default=60, help="training time of each domain's run")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU: tiny configs and sizes, no peer")
    parser.add_argument("--device", type=available_device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--work", help="folder for the runs and raw outputs (default: a new temporary one)")
    parser.add_argument("--train-one", choices=DOMAINS, help=argparse.SUPPRESS)  # internal: one trainer run
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)  # internal: --train-one's, --mfu-hook's
    parser.add_argument("--mfu-hook", action="store_true", help=argparse.SUPPRESS)  # internal: call mfu_rows
    parser.add_argument("--peak", type=float, help=argparse.SUPPRESS)  # internal: --mfu-hook's peak TFLOP/s
    args = parser.parse_args()
    if args.train_one:
        return run_train_one(args)
    if args.mfu_hook:
        return run_mfu_hook(args)
    if not args.dry_run and args.device != "cuda":
        parser.error(f"--device {args.device}: this check needs CUDA (on a CPU, use --dry-run)")

    if args.dry_run:  # its jobs run at once: one thread each (more only contend for the cores)
        os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        torch.set_num_threads(1)
    check = Check(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a time-out from outside still writes the files
    try:
        check.save()
        matmul_section(check)
        correctness = [tests_section(check), train_section(check)]
        # the measured goals first (FPS, the point-cloud step and Sinkhorn; MFU), then the comparisons
        speed = [pointcloud_section(check), mfu_section(check), video_section(check), discrete_section(check)]
        for phase in [correctness + speed] if check.dry else [correctness, *([s] for s in speed)]:
            check.run_phase(phase)
    finally:
        check.kill_all()
        check.save()
        print(markdown(check.results))


if __name__ == "__main__":
    main()
