"""Shared fixtures: fresh Accelerate state per in-process training run, and a quiet toy2d config; the loader of
benchmark scripts."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from multigen.config import load_config
from multigen.toy2d import Toy2DConfig

REPO = Path(__file__).resolve().parent.parent


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (the folder is no package, and its names shadow the packages')."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # where dataclasses look up the module of the classes it defines
    spec.loader.exec_module(module)
    return module


def reset_accelerate() -> None:
    """Forget Accelerate's process-wide singletons, as before a second training run in one process."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; each test starts from none."""
    reset_accelerate()
    torch.set_num_threads(2)
    yield
    reset_accelerate()


@pytest.fixture
def toy_cfg(tmp_path: Path):
    """A fast toy2d config writing into ``tmp_path``; pass extra overrides as arguments."""

    def make(*overrides: str, out: str = "run") -> Toy2DConfig:
        base = [
            f"train.output_dir={tmp_path / out}",
            "train.max_steps=30",
            "train.batch_size=64",
            "train.log_every=10",
            "train.sample_every=0",
            "train.eval_every=0",
            "train.checkpoint_every=10",
            "train.tensorboard=false",
            "data.num_train=2000",
            "data.num_val=500",
            "sample.num=64",
            "sample.steps=10",
            "model.hidden=64",
        ]
        return load_config(Toy2DConfig, overrides=[*base, *overrides])

    return make


TEST_DEVICE = os.environ.get("MULTIGEN_TEST_DEVICE", "")
"""``MULTIGEN_TEST_DEVICE=cuda python -m pytest`` runs the device tests on that device too."""


def _device_params() -> list:
    """meta, then the device to run on for real: ``$MULTIGEN_TEST_DEVICE``, else cuda when present, else the CPU
    (so that what meta cannot run, values and the files written from them, runs in CI too)."""
    real = TEST_DEVICE or ("cuda" if torch.cuda.is_available() else "cpu")
    return [pytest.param("meta", id="meta")] + ([pytest.param(real, id=real)] if real != "meta" else [])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs an accelerator (benchmarks/gpu.sh runs `-m gpu` on a GPU machine)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``gpu`` the tests that need an accelerator: the ``device`` fixture's instances other than meta and the
    CPU (the CPU's too when ``$MULTIGEN_TEST_DEVICE`` names it, as gpu.py's dry run does), and tests skipped for
    want of CUDA (a ``skipif`` whose reason names CUDA); ``@pytest.mark.gpu`` marks others."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("device", "meta") if callspec is not None else "meta"
        on_device = param != "meta" and (param != "cpu" or TEST_DEVICE == "cpu")  # the CPU when named (dry runs)
        needs_cuda = any("cuda" in str(m.kwargs.get("reason", "")).lower() for m in item.iter_markers("skipif"))
        if on_device or needs_cuda:
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(params=_device_params())
def device(request) -> torch.device:
    """Always ``meta`` (shapes only: any tensor made on the CPU by mistake meets a meta tensor and raises), and a
    real device: ``$MULTIGEN_TEST_DEVICE``, else ``cuda`` when present, else ``cpu``."""
    return torch.device(request.param)


def device_generator(device: torch.device) -> torch.Generator | None:
    """A generator on ``device`` seeded with 0 (``None`` on meta, which has none: sampling there draws shapes only)."""
    return None if device.type == "meta" else torch.Generator(device=device).manual_seed(0)
