"""Shared fixtures: fresh Accelerate state per in-process training run, and a quiet toy2d config; the loader of
benchmark scripts."""

from __future__ import annotations

import importlib.util
import os
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
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; each test starts from none."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    torch.set_num_threads(2)
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


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
    params: list = [pytest.param("meta", id="meta")]
    if TEST_DEVICE and TEST_DEVICE != "meta":
        params.append(pytest.param(TEST_DEVICE, id=TEST_DEVICE))
    elif torch.cuda.is_available():
        params.append(pytest.param("cuda", id="cuda"))
    return params


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs an accelerator (benchmarks/gpu.sh runs `-m gpu` on a GPU machine)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``gpu`` the tests that need an accelerator: the ``device`` fixture's instances other than meta, and
    tests skipped for want of CUDA (a ``skipif`` whose reason names CUDA); ``@pytest.mark.gpu`` marks others."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_device = callspec is not None and callspec.params.get("device", "meta") != "meta"
        needs_cuda = any("cuda" in str(m.kwargs.get("reason", "")).lower() for m in item.iter_markers("skipif"))
        if on_device or needs_cuda:
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(params=_device_params())
def device(request) -> torch.device:
    """A device that is not the CPU: always ``meta`` (shapes only: any tensor made on the CPU by
    mistake meets a meta tensor and raises), and ``cuda`` or ``$MULTIGEN_TEST_DEVICE`` when present."""
    return torch.device(request.param)
