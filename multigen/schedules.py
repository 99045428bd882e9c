"""Variance-preserving noise schedules.

Conventions
-----------
A sample at noise level ``t`` is ``x_t = alpha(t) * x_0 + sigma(t) * eps`` with
``alpha(t)**2 + sigma(t)**2 = 1`` and ``alpha_bar(t) = alpha(t)**2``.

Time comes in two forms and every method accepts both:

* **discrete** — an integer tensor of steps ``i`` in ``{0, ..., T}``. ``i = 0`` is
  clean data (``alpha_bar = 1``) and ``alpha_bar(i) = prod_{s=1..i} (1 - beta_s)``,
  as in DDPM.
* **continuous** — a floating tensor ``t`` in ``[0, 1]`` evaluated in closed form
  (the VP-SDE integral for ``linear``, Nichol & Dhariwal's cosine, the sigmoid
  schedule of Jabri et al.). For ``cosine`` and ``sigmoid`` the discrete table is
  built from the continuous function, so ``alpha_bar(i) == alpha_bar(i / T)``
  up to the ``max_beta`` clip; for ``linear`` they agree to ``O(1/T)``.

Models receive time as a float in ``[0, 1]`` (``i / T`` for discrete steps).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable
from dataclasses import dataclass, field

import torch
from torch import Tensor

SCHEDULES = ("linear", "cosine", "sigmoid")
PARAMETERS = {"linear": ("beta_start", "beta_end"), "cosine": ("cosine_s",),
              "sigmoid": ("sigmoid_start", "sigmoid_end", "sigmoid_tau")}
"""The settings each schedule reads (every one also reads ``timesteps`` and ``max_beta``)."""
MAX_TERMINAL_ALPHA_BAR = 1e-3
"""A schedule must end this close to pure noise: samplers start from ``N(0, I)``. The linear
schedule's default betas (DDPM's, for ``T = 1000``) end at 4e-5 but at 0.36 for ``T = 100``."""


def kept_on(copies: dict[tuple[Hashable, torch.device], Tensor], key: Hashable, tensor: Tensor,
            device: torch.device | str) -> Tensor:
    """The CPU ``tensor`` on ``device``: itself on the CPU, elsewhere its copy kept in ``copies`` under ``(key,
    device)``, made on first use (no host-to-device copy per call)."""
    device = torch.device(device)
    if device.type == "cpu":
        return tensor
    if (key, device) not in copies:
        copies[(key, device)] = tensor.to(device)
    return copies[(key, device)]


@dataclass(eq=False)  # its tables are tensors: two schedules are compared by their parameters, not by ==
class NoiseSchedule:
    """A VP noise schedule; see the module docstring for the time conventions.

    Args:
        kind: ``"linear"``, ``"cosine"`` or ``"sigmoid"``.
        timesteps: number of discrete steps ``T``.
        beta_start, beta_end: betas of the linear schedule at steps 1 and T.
        cosine_s: offset ``s`` of the cosine schedule.
        sigmoid_start, sigmoid_end, sigmoid_tau: the sigmoid schedule's range and temperature.
        max_beta: upper clip of discrete betas (avoids a singular last step).
    """

    kind: str = "cosine"
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    cosine_s: float = 0.008
    sigmoid_start: float = -3.0
    sigmoid_end: float = 3.0
    sigmoid_tau: float = 1.0
    max_beta: float = 0.999
    _alpha_bars: Tensor = field(init=False, repr=False)
    _on_device: dict[tuple[str, torch.device], Tensor] = field(init=False, repr=False, compare=False,
                                                               default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {self.kind!r}; choose one of {SCHEDULES}")
        if isinstance(self.timesteps, bool) or not isinstance(self.timesteps, numbers.Integral) or self.timesteps < 1:
            raise ValueError(f"timesteps must be an integer >= 1, got {self.timesteps!r}")
        for name in ("beta_start", "beta_end", "cosine_s", "sigmoid_start", "sigmoid_end", "sigmoid_tau", "max_beta"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"the schedule's {name} must be a finite number, got {getattr(self, name)}")
        if not 0 < self.max_beta < 1:  # at 1 the last step is pure noise, alpha_bar_T = 0: eps's x0 divides by it
            raise ValueError(f"max_beta caps each step's noise variance: in (0, 1), got {self.max_beta}")
        if self.kind == "cosine" and self.cosine_s < 0:
            raise ValueError(f"the cosine schedule's offset cosine_s must be >= 0, got {self.cosine_s}")
        if self.kind == "linear" and not min(self.beta_start, self.beta_end) >= 0:  # above 1: clipped to max_beta
            raise ValueError(f"the linear schedule's betas are noise variances, >= 0; got beta_start="
                             f"{self.beta_start}, beta_end={self.beta_end}")
        if self.kind == "sigmoid" and (self.sigmoid_tau == 0 or self.sigmoid_start == self.sigmoid_end):
            raise ValueError(f"the sigmoid schedule needs sigmoid_tau != 0 and sigmoid_start != sigmoid_end (it "
                             f"divides by both), got sigmoid_tau={self.sigmoid_tau}, sigmoid_start="
                             f"{self.sigmoid_start}, sigmoid_end={self.sigmoid_end}")
        betas = self._discrete_betas().clamp(max=self.max_beta)
        alpha_bars = torch.cumprod(1.0 - betas, dim=0)
        # index 0 is clean data
        self._alpha_bars = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars])
        terminal = float(self._alpha_bars[-1])
        if not terminal <= MAX_TERMINAL_ALPHA_BAR * (1 + 1e-9):  # (1 - 0.999 is 0.0010000000000000009)
            # samplers start from N(0, I): a schedule that ends far from pure noise samples from the wrong prior
            advice = "check the schedule's parameters"
            if self.kind == "linear":
                needed = 2 * math.log(1 / MAX_TERMINAL_ALPHA_BAR) / self.timesteps - self.beta_start
                example = f" (e.g. beta_end >= {needed:.3g} at T = {self.timesteps})" if needed < 1 else ""
                advice = f"raise beta_end{example}, use more timesteps, or the cosine schedule"
            raise ValueError(
                f"the {self.kind} schedule with {self.timesteps} timesteps ends at alpha_bar_T = {terminal:.3g}, "
                f"not near pure noise (<= {MAX_TERMINAL_ALPHA_BAR:g}): {advice}"
            )

    # ------------------------------------------------------------------ tables
    def _discrete_betas(self) -> Tensor:
        T = self.timesteps
        if self.kind == "linear":
            return torch.linspace(self.beta_start, self.beta_end, T, dtype=torch.float64)
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        abar = self._continuous_alpha_bar(steps)
        return 1.0 - abar[1:] / abar[:-1]

    @property
    def betas(self) -> Tensor:
        """Discrete betas ``beta_1..beta_T``, shape ``(T,)``, float64."""
        return 1.0 - self._alpha_bars[1:] / self._alpha_bars[:-1]

    @property
    def alpha_bars(self) -> Tensor:
        """Discrete ``alpha_bar`` for steps ``0..T``, shape ``(T+1,)``, float64."""
        return self._alpha_bars

    # ------------------------------------------------------- closed-form curves
    def _continuous_alpha_bar(self, t: Tensor) -> Tensor:
        t = t.to(torch.float64)
        if self.kind == "linear":
            # VP-SDE with beta(t) = T * (beta_start + t (beta_end - beta_start)).
            b0, b1 = self.beta_start * self.timesteps, self.beta_end * self.timesteps
            return torch.exp(-(b0 * t + 0.5 * (b1 - b0) * t**2))
        if self.kind == "cosine":
            s = self.cosine_s
            f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
            return (f / math.cos(s / (1 + s) * math.pi / 2) ** 2).clamp(0.0, 1.0)
        # sigmoid (Jabri et al., 2022): monotone decreasing from 1 to 0
        start, end, tau = self.sigmoid_start, self.sigmoid_end, self.sigmoid_tau
        v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
        v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
        out = (v_end - torch.sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)
        return out.clamp(0.0, 1.0)

    # ------------------------------------------------------------ public views
    def alpha_bar(self, t: Tensor) -> Tensor:
        """``alpha_bar`` at integer steps (table) or float times in ``[0, 1]`` (closed form).

        Returns float64 with the shape of ``t``.
        """
        if not torch.is_floating_point(t):
            in_range = ((t >= 0) & (t <= self.timesteps)).all()
            message = f"discrete steps must lie in [0, {self.timesteps}]"
            if t.device.type == "cpu":
                if not in_range:
                    raise ValueError(message)
            else:  # checked on the device without waiting for it (no host sync in a training step)
                torch._assert_async(in_range, message)
            return self.table(t.device)[t]
        return self._continuous_alpha_bar(t)

    def table(self, device: torch.device) -> Tensor:
        """:attr:`alpha_bars` on ``device``, copied there once and kept (no host-to-device copy per call)."""
        return kept_on(self._on_device, "alpha_bars", self._alpha_bars, device)

    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale ``sqrt(alpha_bar)``."""
        return self.alpha_bar(t).sqrt()

    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale ``sqrt(1 - alpha_bar)``."""
        return (1.0 - self.alpha_bar(t)).clamp(min=0.0).sqrt()

    def log_snr(self, t: Tensor) -> Tensor:
        """``log(alpha_bar / (1 - alpha_bar))``; ``+inf`` at clean data, ``-inf`` at pure noise."""
        abar = self.alpha_bar(t)
        return torch.log(abar) - torch.log1p(-abar)

    def model_time(self, steps: Tensor) -> Tensor:
        """Float time in ``[0, 1]`` that a model receives for integer ``steps``."""
        return steps.to(torch.float32) / self.timesteps
