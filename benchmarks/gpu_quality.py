"""Issue 18's GPU quality check: every recipe (``configs/<domain>/gpu_quick.yaml``) trained with 2 seeds at once on
one GPU, each in its own subprocess, then scored on held-out data against its trivial baseline and the issue's
goal, written as ``gpu_quality.json`` and ``gpu_quality.md``.

    bash benchmarks/gpu_quality.sh                 # on a GPU machine: installs .whl/ (make_gpu_wheels.sh), runs this
    python benchmarks/gpu_quality.py [--out DIR] [--budget 465] [--train-seconds 330]
    python benchmarks/gpu_quality.py --dry-run --out DIR    # a CPU: tiny configs and sizes, the same files

Recipes and figures (each a mean over the seeds, with half the seeds' range as its spread):

* ``video`` (moving digits) and ``natural`` (``data.source=natural``): future-prediction and interpolation mean
  PSNR on ``eval.num_clips`` held-out clips (the domain's ``evaluate``) against copy-last and a linear blend;
  for ``video`` also the frame-level 1-NNA (pixel L2) of 256 unconditional sample frames against 256 held-out
  frames, one frame from each clip (:func:`video.metrics.frame_one_nna`), against frames of independent
  per-pixel Gaussian noise with the training frames' mean and standard deviation.
* ``pointcloud``: 1-NNA-CD of ``eval.num_shapes`` samples against as many held-out shapes, and COV-CD inside
  every family (the share of a family's held-out shapes that are some sample's nearest held-out shape),
  against a Gaussian blob with the data's mean and covariance (as ``PointCloud.evaluate`` builds it).
* ``text``: held-out bits/char (negative ELBO) of the text model, against its autoregressive twin
  (``benchmarks/discrete.py``: same size, data, batch, optimiser and EMA, trained for the same number of steps
  after it, scored by exact NLL on the same windows every tenth of its run; its best score is the baseline, the
  twin stopped early by an oracle, since a long run over-fits the text).

Time: the run stops training by wall time. Every child gets the same deadline, ``--train-seconds`` after the
start (the text child splits its share: the diffusion model until halfway; after its held-out ELBO, its twin
for as many steps or as many seconds, whichever ends first, so past the deadline by the ELBO's time).
Early in its run (after ``CALIBRATE`` of its time) a child measures its step rate, with the other runs sharing
the GPU, and sets ``train.max_steps`` to the steps that rate fits in the time left, so a cosine learning-rate
decay (``multigen.trainer``'s schedule reads ``train.max_steps`` at every step) ends near the stop; the deadline
stops it in any case. Then it evaluates and writes its figures. The children are killed when ``--budget`` runs
out; ``gpu_quality.sh`` puts a hard time limit over the whole run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parent.parent
# This folder holds scripts named like the packages they measure: import the packages, not the scripts.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

from multigen.benchmarking import markdown_table, write_results  # noqa: E402


def load_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (the folder is no package, and its names shadow the packages')."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", REPO / "benchmarks" / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # registered: dataclasses look it up
    spec.loader.exec_module(module)
    return module


gpu = load_script("gpu")  # Job, environment: the GPU check's subprocess and environment helpers

SEEDS = (0, 1)
CALIBRATE = 0.15  # share of its training time after which a child measures its step rate
MIN_STEPS = 2
# recipe -> (domain, overrides of its gpu_quick config)
RECIPES: dict[str, tuple[str, list[str]]] = {
    "video": ("video", []),
    "natural": ("video", ["data.source=natural", "model.reference=motion", "model.residual_scale=2"]),  # natural.yaml
    "pointcloud": ("pointcloud", []),
    "text": ("discrete", []),
}
# a dry run: tiny configs, evaluation shrunk to a few items
DRY_OVERRIDES = {
    "video": ["eval.num_clips=2", "eval.batch_size=2", "eval.samples_per_clip=1", "sample.steps=2", "data.num_val=8"],
    "pointcloud": ["eval.num_shapes=4", "eval.batch_size=4", "data.num_val=4", "sample.steps=2", "data.points=64"],
    "discrete": ["eval.num_sequences=4", "data.length=16", "process.timesteps=8"],
}
TWIN_EVALS = 10  # held-out evaluations of the text model's autoregressive twin over its run (the best is its figure)
FRAMES = {False: 256, True: 8}  # frame 1-NNA: frames per set (GPU run, dry run)


@dataclass(frozen=True)
class Goal:
    """Issue 18's target for one figure: ``value >= baseline + margin`` (``above``), ``value <= baseline * (1 +
    margin)`` (``within``), ``value <= margin`` (``at_most``) or ``value >= margin`` (``at_least``)."""

    kind: str
    margin: float

    def text(self) -> str:
        return {"above": f"≥ baseline + {self.margin:g}", "within": f"≤ baseline × {1 + self.margin:g}",
                "at_most": f"≤ {self.margin:g}", "at_least": f"≥ {self.margin:g}"}[self.kind]

    def met(self, value: float, baseline: float) -> bool:
        return {"above": value >= baseline + self.margin, "within": value <= baseline * (1 + self.margin),
                "at_most": value <= self.margin, "at_least": value >= self.margin}[self.kind]


# recipe -> figure -> its goal; a child writes {figure: {"value": v, "baseline": b}} for these figures
# (pointcloud's per-family coverage figures are named "COV-CD/<family>" and share the "COV-CD family" goal)
GOALS: dict[str, dict[str, Goal]] = {
    "video": {"future PSNR (dB)": Goal("above", 2.0), "interpolation PSNR (dB)": Goal("above", 1.0),
              "frame 1-NNA": Goal("at_most", 0.75)},
    "natural": {"future PSNR (dB)": Goal("above", 1.0), "interpolation PSNR (dB)": Goal("above", 1.0)},
    "pointcloud": {"1-NNA-CD": Goal("at_most", 0.70), "COV-CD family": Goal("at_least", 0.3)},
    "text": {"bits/char": Goal("within", 0.15)},
}


def goal_of(recipe: str, figure: str) -> Goal:
    return GOALS[recipe]["COV-CD family" if figure.startswith("COV-CD/") else figure]


# ---- one child: train until the deadline, evaluate ---------------------------------------------------------


def train_until(trainer: Any, deadline: float) -> dict[str, Any]:
    """Run ``trainer`` (a :class:`multigen.trainer.Trainer`, resumed) until ``deadline`` (``time.time()``) or
    ``train.max_steps``, re-setting ``max_steps`` from the step rate measured after ``CALIBRATE`` of the time;
    log as ``train.log_every`` says (no end-of-run sampling or evaluation: the caller evaluates); export.
    At least ``MIN_STEPS`` steps are taken, so that a slow start (a loaded CPU's dry run) still trains."""
    t, device = trainer.t, trainer.accelerator.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.time()
    calibrate_at, mark = start + CALIBRATE * (deadline - start), None
    while trainer.state.step < t.max_steps and (trainer.state.step < MIN_STEPS or time.time() < deadline):
        loss = trainer.step()
        if trainer.state.step < t.max_steps:
            trainer.periodic(loss)  # logging only: sample_every, eval_every and checkpoint_every are 0
        if mark is None:  # after the first step (compilation, autotuning): start the clock
            sync()
            mark = (time.time(), trainer.state.step)
        elif calibrate_at and time.time() >= calibrate_at:
            sync()
            now, step = time.time(), trainer.state.step
            rate = (step - mark[1]) / max(now - mark[0], 1e-9)
            t.max_steps = min(t.max_steps, step + max(1, int(rate * (deadline - now))))
            trainer.bar.total, calibrate_at = t.max_steps, 0.0
    trainer.check_finite()
    trainer.export()
    return {"steps": trainer.state.step, "train_seconds": time.time() - start}


def child_config(recipe: str, seed: int, work: Path, dry: bool) -> tuple[type, Any]:
    from multigen.config import load_config
    from multigen.domain import get_domain
    from multigen.train import resolve_config_file

    domain, extra = RECIPES[recipe]
    overrides = [*extra, f"train.seed={seed}", f"train.output_dir={work / f'{recipe}_seed{seed}'}",
                 "train.resume=false", "train.sample_every=0", "train.eval_every=0", "train.checkpoint_every=0"]
    if dry:
        overrides += ["train.cpu=true", "train.cpu_threads=1", "train.batch_size=2", "train.num_workers=0",
                      "train.mixed_precision=no", "train.tensorboard=false", "train.max_steps=100000",
                      "train.log_every=1", *DRY_OVERRIDES[domain]]
    domain_cls = get_domain(domain)
    return domain_cls, load_config(domain_cls.config_class, resolve_config_file(domain, "tiny" if dry else
                                                                                "gpu_quick"), overrides)


def video_figures(trainer: Any, frames: int, with_nna: bool) -> dict[str, dict[str, float]]:
    """Future/interpolation mean PSNR (``evaluate``) and, ``with_nna``, the frame 1-NNA of ``frames`` sample
    frames (unconditional, at temperature 1) against as many held-out ones, each taken from its own clip (frame
    ``i % T`` of clip ``i``)."""
    from video.metrics import frame_one_nna

    domain, model = trainer.domain, trainer.ema.module
    val = domain.build_dataset("val")
    with trainer.accelerator.autocast():
        m = domain.evaluate(model, val)
    out = {f"{name} PSNR (dB)": {"value": m[f"{task}/psnr_mean"], "baseline": m[f"{task}/baseline_psnr"],
                                 "reference": m[f"{task}/baseline_motion_psnr"]}  # the baseline moved with the clip
           for name, task in (("future", "future"), ("interpolation", "interp"))}
    if not with_nna:
        return out
    if len(val) < frames:
        raise ValueError(f"the frame 1-NNA takes one frame from each of {frames} held-out clips; data.num_val is "
                         f"{len(val)}")

    def pick(clips: torch.Tensor) -> torch.Tensor:  # (n, T, C, H, W) -> (n, C, H, W): frame i % T of clip i
        return clips[torch.arange(len(clips)), torch.arange(len(clips)) % clips.shape[1]]

    real = pick(torch.stack([val[i] for i in range(frames)]))
    g = torch.Generator(device=trainer.accelerator.device).manual_seed(domain.cfg.sample.seed + 3)
    with trainer.accelerator.autocast():
        # temperature 1: the 1-NNA measures the model's distribution (the config's lower temperature is for
        # prediction and interpolation, where it trades diversity for accuracy)
        samples = torch.cat([domain.sample(model, len(c), generator=g, unconditional_temperature=1.0).float().cpu()
                             for c in torch.arange(frames).split(domain.cfg.eval.batch_size)])
    train = domain.build_dataset("train")
    train_frames = torch.stack([train[i] for i in range(frames)]).flatten(0, 1)
    noise = train_frames.mean(0) + train_frames.std(0) * torch.randn(real.shape,
                                                                       generator=torch.Generator().manual_seed(0))
    out["frame 1-NNA"] = {"value": frame_one_nna(pick(samples), real),
                          "baseline": frame_one_nna(noise.clamp(-1, 1), real)}
    return out


def pointcloud_figures(trainer: Any) -> dict[str, dict[str, float]]:
    """1-NNA-CD of ``eval.num_shapes`` samples against as many held-out shapes, and COV-CD inside each family,
    next to a Gaussian blob with the held-out shapes' mean and covariance: :meth:`PointCloud.evaluate`'s."""
    with trainer.accelerator.autocast():
        metrics = trainer.domain.evaluate(trainer.ema.module, trainer.domain.build_dataset("val"))
    names = ["1-NNA-CD", *(k for k in metrics if k.startswith("COV-CD/"))]
    return {k: {"value": metrics[k], "baseline": metrics[f"baseline_gaussian/{k}"]} for k in names}


def text_figures(trainer: Any, seed: int, write: Callable[[dict], None], seconds: float
                 ) -> dict[str, dict[str, float]]:
    """Held-out bits/char of the text model (negative ELBO, with its standard error), written at once; then its
    autoregressive twin trained for as many steps or as many ``seconds`` as it trained (at a log step), whichever
    comes first, its best exact NLL on the same windows the baseline."""
    from discrete.domain import mean_and_stderr

    bench = load_script("discrete")
    domain, model, device = trainer.domain, trainer.ema.module, trainer.accelerator.device
    val = domain.build_dataset("val")
    data = torch.stack([val[i] for i in range(min(domain.cfg.eval.num_sequences, len(val)))])
    with trainer.accelerator.autocast():
        bits, stderr = mean_and_stderr(domain.elbo_bits(model, data, domain.cfg.eval.batch_size))
    figure = {"value": bits, "value_stderr": stderr, "baseline": float("nan"), "windows": len(data)}
    write({"bits/char": figure})
    steps = domain.cfg.train.max_steps = trainer.state.step  # the twin: the same steps (about the same time)
    twin_dir = Path(trainer.t.output_dir) / "autoregressive"
    # its trainer scores the same windows by exact NLL (its config is a copy of this one) every tenth of its run:
    # the baseline is its best, since an autoregressive model of this size over-fits the text in a long run
    _, seconds = bench.train_autoregressive(domain, seed, device.type, twin_dir,
                                            [f"train.max_minutes={seconds / 60}"],
                                            eval_every=max(1, steps // TWIN_EVALS))
    best = bench.best_autoregressive_eval(twin_dir)
    figure["baseline"], figure["baseline_stderr"] = best["nll_bits"], best["nll_stderr"]
    figure.update(baseline_step=best["step"], baseline_last=best["last_nll_bits"], baseline_train_seconds=seconds)
    return {"bits/char": figure}


def run_one(args: argparse.Namespace) -> None:
    """Child: train one recipe with one seed until the deadline, evaluate, write ``<work>/<recipe>_seed<S>.json``
    (``{"info": {...}, "figures": {name: {"value", "baseline", ...}}}``, rewritten as parts finish)."""
    from multigen.trainer import Trainer

    recipe, seed, work = args.run_one, args.seed, Path(args.work)
    path = work / f"{recipe}_seed{seed}.json"
    result: dict[str, Any] = {"info": {}, "figures": {}}

    def write(figures: dict[str, Any] | None = None) -> None:
        result["figures"].update(figures or {})
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(path)  # atomic: the parent reads this file while the child runs, never half-written

    domain_cls, cfg = child_config(recipe, seed, work, args.dry_run)
    trainer = Trainer(domain_cls, cfg)
    trainer.resume()
    now = time.time()  # the text model trains until halfway, its twin after it
    deadline = now + (args.deadline - now) / 2 if recipe == "text" else args.deadline
    result["info"] = {"config": "tiny" if args.dry_run else "gpu_quick", "seed": seed,
                      "params_M": sum(p.numel() for p in trainer.raw_model.parameters()) / 1e6,
                      **train_until(trainer, deadline)}
    write()
    start = time.time()
    if recipe in ("video", "natural"):
        write(video_figures(trainer, FRAMES[args.dry_run], with_nna=recipe == "video"))
    elif recipe == "pointcloud":
        write(pointcloud_figures(trainer))
    else:
        write(text_figures(trainer, seed, write, result["info"]["train_seconds"]))
    result["info"]["eval_seconds"] = time.time() - start
    write()


# ---- the parent: start the children, gather, report --------------------------------------------------------


def summarise(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per recipe and figure: value and baseline as mean ± half the seeds' range, the goal, pass/fail
    (judged on the means; a figure missing for any seed fails)."""
    rows = []
    for recipe in RECIPES:
        seeds = [runs.get(f"{recipe}_seed{s}", {}).get("figures", {}) for s in SEEDS]
        for figure in dict.fromkeys(k for f in seeds for k in f):
            got = [f.get(figure, {}) for f in seeds]
            values = [g.get("value", float("nan")) for g in got]
            baselines = [g.get("baseline", float("nan")) for g in got]
            v, b = mean_spread(values), mean_spread(baselines)
            goal = goal_of(recipe, figure)
            ok = all(x == x for x in values + baselines) and goal.met(v[0], b[0])
            rows.append({"recipe": recipe, "figure": figure, "value": v[0], "value_spread": v[1],
                         "baseline": b[0], "baseline_spread": b[1], "goal": goal.text(),
                         "pass": bool(ok), "seeds": values})
            if any("reference" in g for g in got):  # video: the motion-compensated reference, beside the goal
                rows[-1]["reference"], rows[-1]["reference_spread"] = mean_spread(
                    [g.get("reference", float("nan")) for g in got])
    return rows


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and half the range of ``values`` (NaN when any is missing)."""
    if any(v != v for v in values):
        return float("nan"), float("nan")
    return sum(values) / len(values), (max(values) - min(values)) / 2


def run_record(job: gpu.Job, part: Path) -> dict[str, Any]:
    """One run's entry in the results: its status and wall time, what it wrote to ``part`` (its JSON), and for one
    that failed or timed out the end of its output, with its last line as the note."""
    status = "running" if job.proc is None or job.seconds is None else job.status()
    run = {"status": status, "wall_s": job.seconds, **(json.loads(part.read_text()) if part.exists() else {})}
    if status not in ("ok", "running"):
        run["output_tail"], run["note"] = job.tail(), job.last_line()
    return run


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    rows = [{"recipe": r["recipe"], "figure": r["figure"],
             "model (mean ± spread)": f"{r['value']:.3f} ± {r['value_spread']:.3f}",
             "baseline (mean ± spread)": f"{r['baseline']:.3f} ± {r['baseline_spread']:.3f}",
             "goal": r["goal"], "pass": "pass" if r["pass"] else "FAIL",
             "motion reference (mean ± spread)": f"{r['reference']:.3f} ± {r['reference_spread']:.3f}"
             if "reference" in r else ""} for r in results["figures"]]
    runs = [{"run": name, "status": r["status"], **{k: r.get("info", {}).get(k) for k in
                                                    ("params_M", "steps", "train_seconds", "eval_seconds")},
             "wall_s": r.get("wall_s"), "note": r.get("note")} for name, r in results["runs"].items()]
    return "\n".join([
        f"# GPU quality (issue 18): {env['device_name']}{' (dry run on a CPU)' if results['dry_run'] else ''}", "",
        f"{env['utc']}; torch {env['torch']}, CUDA {env['cuda']}; commit {env['commit']}; {len(SEEDS)} seeds per "
        f"recipe, trained at once for {results['train_seconds']:.0f} s; budget {results['budget_s']:.0f} s, took "
        f"{results.get('elapsed_s', 0):.0f} s. Spread: half the seeds' range. Text: the baseline is the "
        f"autoregressive twin at its best held-out evaluation; its step, and the ELBO's standard errors, are in "
        f"gpu_quality.json.", "",
        "## figures", "", markdown_table(rows), "", "## runs", "", markdown_table(runs), ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/out/gpu_quality",
                        help="folder for gpu_quality.json/.md/.log (default: $OUT, else benchmarks/out/gpu_quality)")
    parser.add_argument("--budget", type=float, default=465, help="seconds for everything; children are then killed")
    parser.add_argument("--train-seconds", type=float, default=330, help="training stops this long after the start")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU: tiny configs and sizes")
    parser.add_argument("--work", help="folder for the runs (default: a new temporary one)")
    parser.add_argument("--run-one", choices=RECIPES, help=argparse.SUPPRESS)  # internal: one child
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)  # internal: time.time() to stop training
    args = parser.parse_args()
    if args.run_one:
        return run_one(args)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("this check needs CUDA (on a CPU, use --dry-run)")
    if args.dry_run:
        args.train_seconds = min(args.train_seconds, 4.0)

    start, out = time.monotonic(), Path(args.out)
    work = Path(args.work or tempfile.mkdtemp(prefix="multigen-gpu-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.train_seconds
    threads = "1" if args.dry_run else "2"  # 8 children (and their loader workers) share the cores
    jobs = {f"{recipe}_seed{s}": gpu.Job(
        [sys.executable, __file__, "--run-one", recipe, "--seed", str(s), "--work", str(work), "--deadline",
         str(deadline), *(["--dry-run"] if args.dry_run else [])], work / f"{recipe}_seed{s}.log",
        env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"},
        timeout=args.budget - (time.monotonic() - start)) for recipe in RECIPES for s in SEEDS}
    results: dict[str, Any] = {"environment": gpu.environment("cpu" if args.dry_run else "cuda"),
                               "dry_run": args.dry_run, "budget_s": args.budget, "train_seconds": args.train_seconds,
                               "work_dir": str(work), "runs": {}, "figures": []}

    def save() -> None:
        results["runs"] = {name: run_record(job, work / f"{name}.json") for name, job in jobs.items()}
        results["figures"] = summarise(results["runs"])
        results["elapsed_s"] = time.monotonic() - start
        write_results(out / "gpu_quality.json", results)
        (out / "gpu_quality.md").write_text(markdown(results))
        (out / "gpu_quality.log").write_text("\n".join(f"===== {n}\n{j.tail()}" for n, j in jobs.items()))

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a time-out from outside still writes the files
    try:
        for job in jobs.values():
            job.launch()
        print(f"started {len(jobs)} runs; training stops in {args.train_seconds:.0f} s", flush=True)
        pending = set(jobs)
        while pending:
            time.sleep(0.5)
            for name in [n for n in pending if jobs[n].poll()]:
                pending.discard(name)
                print(f"[{time.monotonic() - start:5.0f} s] {name}: {jobs[name].status()}", flush=True)
                save()
    finally:
        for job in jobs.values():
            if job.proc is not None and job.proc.poll() is None:
                job.kill()
        save()
        print(markdown(results))


if __name__ == "__main__":
    main()
