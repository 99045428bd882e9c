"""toy2d: diffusion on 2-D point distributions — the smallest complete multigen domain.

A sample is one point ``(2,)``; a batch is ``(B, 2)``. Data are built by seeded
generators (no files). The denoiser is an MLP on ``x``, the time embedding added to every hidden layer.
Samples are written as scatter plots over the data.

    multigen-train --domain toy2d data.distribution=two_moons
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from .config import DiffusionConfig, SampleConfig, TrainConfig, at_least, choice
from .domain import GaussianDomain
from .metrics import gaussian_fit, sliced_wasserstein
from .nn import TimestepEmbedding

DISTRIBUTIONS = ("eight_gaussians", "two_moons", "checkerboard", "swiss_roll", "rings")


def make_points(distribution: str, n: int, seed: int) -> Tensor:
    """``n`` points ``(n, 2)`` of a named distribution, roughly within ``[-2, 2]^2``, deterministic by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g)
    noise = torch.randn(n, 2, generator=g)
    if distribution == "eight_gaussians":
        k = torch.randint(0, 8, (n,), generator=g).float()
        centres = torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1) * 1.5
        return centres + 0.1 * noise
    if distribution == "two_moons":
        upper = torch.rand(n, generator=g) < 0.5
        a = u * math.pi
        x = torch.where(upper, torch.cos(a), 1 - torch.cos(a))
        y = torch.where(upper, torch.sin(a), 0.5 - torch.sin(a))
        return (torch.stack([x, y], 1) - torch.tensor([0.5, 0.25])) * 1.3 + 0.05 * noise
    if distribution == "checkerboard":
        x = torch.rand(n, generator=g) * 4 - 2
        row = torch.randint(0, 2, (n,), generator=g) * 2 + (torch.floor(x) % 2)
        y = torch.rand(n, generator=g) + row - 2
        return torch.stack([x, y], 1)
    if distribution == "swiss_roll":
        t = 1.5 * math.pi * (1 + 2 * u)
        return torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / 7.0 + 0.05 * noise
    if distribution == "rings":
        radius = (torch.randint(1, 4, (n,), generator=g).float()) * 0.6
        a = u * 2 * math.pi
        return torch.stack([radius * torch.cos(a), radius * torch.sin(a)], 1) + 0.04 * noise
    raise ValueError(f"unknown distribution {distribution!r}; choose one of {DISTRIBUTIONS}")


@dataclass
class Toy2DDataConfig:
    distribution: str = choice("eight_gaussians", *DISTRIBUTIONS)
    num_train: int = at_least(20000, 1)
    num_val: int = at_least(4000, 3)  # the Gaussian baseline fits a full covariance to them
    seed: int = 0  # the validation set uses seed + 1


@dataclass
class Toy2DModelConfig:
    hidden: int = at_least(256, 1)
    depth: int = at_least(3, 1)
    time_dim: int = at_least(64, 2)


@dataclass
class Toy2DConfig:
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            output_dir="runs/toy2d", max_steps=3000, batch_size=256, lr=2e-3, warmup_steps=100,
            sample_every=1000, eval_every=1000, checkpoint_every=1000,
        )
    )
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(timesteps=1000))
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(num=2000, steps=25))
    data: Toy2DDataConfig = field(default_factory=Toy2DDataConfig)
    model: Toy2DModelConfig = field(default_factory=Toy2DModelConfig)


class Toy2DDenoiser(nn.Module):
    """MLP ``(x (B, 2), t (B,)) -> (B, 2)`` with the time embedding added to every hidden layer."""

    def __init__(self, hidden: int = 256, depth: int = 3, time_dim: int = 64) -> None:
        super().__init__()
        self.time = TimestepEmbedding(hidden, freq_dim=time_dim)
        self.inp = nn.Linear(2, hidden)
        self.layers = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time(t)
        h = self.inp(x)
        for layer in self.layers:
            h = h + layer(h + emb)
        return self.out(h)


class Toy2D(GaussianDomain):
    """2-D point distributions (see :data:`DISTRIBUTIONS`)."""

    name = "toy2d"
    config_class = Toy2DConfig

    def build_model(self) -> nn.Module:
        m = self.cfg.model
        return Toy2DDenoiser(m.hidden, m.depth, m.time_dim)

    def build_dataset(self, split: str) -> Dataset:
        d = self.cfg.data
        if split not in ("train", "val"):
            raise ValueError(f"unknown split {split!r}; use 'train' or 'val'")
        n, seed = (d.num_train, d.seed) if split == "train" else (d.num_val, d.seed + 1)
        return TensorDataset(make_points(d.distribution, n, seed))

    @staticmethod
    def collate_fn(items: list[tuple[Tensor]]) -> Tensor:
        return torch.stack([item[0] for item in items])

    def sample_shape(self) -> tuple[int, ...]:
        return (2,)

    def evaluate(self, model: nn.Module, dataset: Dataset) -> dict[str, float]:
        """Sliced W2 of model samples to the held-out points, next to a Gaussian fitted to them."""
        data = dataset.tensors[0]  # type: ignore[attr-defined]
        device = next(model.parameters()).device
        g = torch.Generator(device=device).manual_seed(self.cfg.sample.seed + 1)
        samples = self.sample(model, len(data), generator=g).float().cpu()
        return {
            "sliced_w2": sliced_wasserstein(samples, data),
            "sliced_w2_gaussian_baseline": sliced_wasserstein(gaussian_fit(data, data.shape), data),
        }

    def save_samples(self, samples: Tensor, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        d = self.cfg.data
        ref = make_points(d.distribution, len(samples), d.seed + 1)
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.75", label="data")
        ax.scatter(samples[:, 0], samples[:, 1], s=2, c="tab:blue", label="samples")
        ax.set(xlim=(-2.6, 2.6), ylim=(-2.6, 2.6), aspect="equal", title=f"toy2d {d.distribution}")
        ax.legend(loc="upper right", markerscale=4, fontsize=7)
        path = path.with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        return path
