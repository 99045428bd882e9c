"""Samplers: plain functions over a denoiser ``D(x_t, t) -> x0_hat``.

Every sampler walks a :class:`TimeGrid` from pure noise to clean data and takes

* ``known`` — a :class:`Known` constraint (mask + clean values). After every step
  the known entries of the state are replaced by the known values noised to the
  current level (fresh noise, as in PVD and RePaint); at the final level, where
  ``alpha_bar = 1``, they are set to the values exactly, so the output equals
  ``known.values`` bit for bit wherever ``known.mask`` is true.
* ``generator`` — a ``torch.Generator`` for all randomness, so runs repeat.

The number of steps is independent of the training ``T``: the grid picks
``steps + 1`` levels among the schedule's ``0..T``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import math
import operator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .diffusion import Denoiser, gaussian_posterior, same_shape
from .schedules import NoiseSchedule


@dataclass
class TimeGrid:
    """Noise levels visited by a sampler, from the noisiest to clean data.

    Attributes:
        t: model time in ``[0, 1]``, shape ``(S+1,)``, decreasing, ``t[-1] = 0``.
        alpha_bar: ``alpha_bar`` at those times, float64, ``alpha_bar[-1] = 1``.
    """

    t: Tensor
    alpha_bar: Tensor

    @property
    def steps(self) -> int:
        return len(self.t) - 1

    def starting_at(self, start: float) -> TimeGrid:
        """The grid's tail from its first level at or below model time ``start`` (from its lowest noisy level if
        ``start`` lies below them all, so that one step is left): the levels a sampler visits when it starts from
        data noised to the tail's first level (SDEdit)."""
        first = min(int((self.t > start).sum()), self.steps - 1)  # t decreases: the levels above start come first
        return TimeGrid(t=self.t[first:], alpha_bar=self.alpha_bar[first:])


SPACINGS = ("time", "log_snr", "karras")
DEFAULT_SPACING = {"ddpm": "time", "ddim": "time", "dpm_solver_pp": "log_snr"}
"""First-order samplers do best on evenly spaced steps; DPM-Solver++ on evenly spaced log-SNR."""


def sampling_grid(
    schedule: NoiseSchedule, steps: int, spacing: str = "time", rho: float = 7.0, max_noise: float = 80.0
) -> TimeGrid:
    """``steps + 1`` distinct integer levels from ``T`` down to ``0`` (``steps <= T``).

    Spacing of the noisy levels between ``T`` and step 1:

    * ``"time"`` (default): evenly spaced steps (the choice of DDPM and DDIM);
    * ``"log_snr"``: evenly spaced in log-SNR, as DPM-Solver recommends; with the exact
      denoiser of a bimodal mixture DPM-Solver++ needs far fewer steps on it than on
      ``"time"`` (``benchmarks/samplers.py``), while DDIM does better on ``"time"``;
    * ``"karras"``: Karras et al. (2022): ``sigma/alpha`` evenly spaced in its ``1/rho`` power,
      which spends more steps at low noise where fine detail forms.

    The two latter place their levels between step 1 and the level where ``sigma / alpha =
    max_noise`` (80, as Karras et al.; above it the denoiser only sees noise); the grid
    still starts at ``T``. Targets are rounded to the nearest free integer step, so the
    grid is always strictly decreasing.
    """
    T = schedule.timesteps
    if not (is_whole(steps) and 1 <= steps <= T):
        raise ValueError(f"sampler steps must be an integer in [1, {T}] (the schedule's timesteps), got {steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown grid spacing {spacing!r}; choose one of {SPACINGS}")
    if spacing == "time" or steps == 1:
        idx = torch.linspace(T, 0, steps + 1, dtype=torch.float64).round().long()
    else:
        table = schedule.log_snr(torch.arange(1, T + 1))  # decreasing in the step
        lo, hi = max(float(table[-1]), -2 * math.log(max_noise)), float(table[0])
        u = torch.linspace(0, 1, steps, dtype=torch.float64)[1:]
        if spacing == "log_snr":
            target = lo + (hi - lo) * u
        else:  # karras: s = exp(-log_snr / 2) = sigma / alpha
            s_max, s_min = torch.tensor(-lo / 2).exp(), torch.tensor(-hi / 2).exp()
            s = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
            target = -2 * torch.log(s)
        # nearest step for each target (table is decreasing), then force strictly decreasing steps >= 1
        found = (table[None, :] - target[:, None]).abs().argmin(1) + 1
        chosen = [T]
        for k, step in enumerate(found.tolist(), start=1):
            room = steps - k  # steps still to place after this one, each needs a distinct level >= 1
            chosen.append(max(min(step, chosen[-1] - 1), room))
        idx = torch.tensor(chosen + [0])
    return TimeGrid(t=schedule.model_time(idx), alpha_bar=schedule.alpha_bar(idx))


@dataclass
class Known:
    """The observed part of a sample: ``mask`` (bool, broadcastable to x) and clean ``values``, both tensors."""

    mask: Tensor
    values: Tensor

    def __post_init__(self) -> None:
        for name in ("mask", "values"):
            if not isinstance(value := getattr(self, name), Tensor):
                raise TypeError(f"Known: {name} must be a torch tensor (torch.from_numpy or torch.as_tensor converts "
                                f"an array), got {type(value).__module__}.{type(value).__name__}")

    def values_for(self, shape: tuple[int, ...]) -> Tensor:
        """``values`` expanded to samples of ``shape``; an error naming both shapes where they do not fit."""
        try:
            return self.values.expand(shape)
        except RuntimeError:
            raise ValueError(f"known values of shape {tuple(self.values.shape)} do not fit samples of shape "
                             f"{tuple(shape)}") from None

    def check(self, shape: tuple[int, ...]) -> None:
        """An error naming the shapes unless ``mask`` and ``values`` broadcast to samples of ``shape``."""
        self.values_for(shape)
        try:
            fits = torch.broadcast_shapes(self.mask.shape, shape) == torch.Size(shape)
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"known mask of shape {tuple(self.mask.shape)} does not fit samples of shape "
                             f"{tuple(shape)}")

    def impose(self, x: Tensor, alpha_bar: Tensor, generator: torch.Generator | None) -> Tensor:
        """Replace the known entries of ``x`` by the values noised to level ``alpha_bar`` (an error naming the shapes
        where the mask or values do not fit ``x``)."""
        self.check(tuple(x.shape))
        mask = self.mask.to(x.device).bool()
        values = self.values.to(device=x.device, dtype=x.dtype).expand_as(x)
        if float(alpha_bar) >= 1.0:
            return torch.where(mask, values, x)
        noised = float(alpha_bar) ** 0.5 * values + float(1.0 - alpha_bar) ** 0.5 * _randn_like(x, generator)
        return torch.where(mask, noised, x)

    def item_mask(self, shape: tuple[int, ...], item_dims: int) -> Tensor:
        """The mask as one bool per item, ``shape[:item_dims]`` (e.g. per frame ``(n, T)`` of clips
        ``(n, T, C, H, W)``, per point ``(n, N)`` of clouds ``(n, N, 3)``).

        ``mask`` is ``(n, T)``-like (its first ``item_dims`` dims broadcast to ``shape[:item_dims]``),
        optionally followed by dims that broadcast to an item, ``shape[item_dims:]``. A mask that
        varies inside an item is an error naming its shape (it is never cut to the item's first entry).
        """
        m = self.mask
        lead, inner = tuple(m.shape[:item_dims]), tuple(m.shape[item_dims:])
        try:
            torch.broadcast_shapes(lead, shape[:item_dims])
            torch.broadcast_shapes(inner, shape[item_dims:])
            if m.ndim < item_dims or len(inner) > len(shape) - item_dims:
                raise RuntimeError
        except RuntimeError:
            raise ValueError(f"known mask of shape {tuple(m.shape)} does not fit samples of shape {tuple(shape)}: "
                             f"give one value per item, {tuple(shape[:item_dims])}") from None
        flat = m.reshape(*lead, -1)
        checkable = flat.shape[-1] > 1 and not flat.is_meta  # meta tensors have no values to compare
        if checkable and not torch.equal(flat, flat[..., :1].expand_as(flat)):  # one check, at the start
            raise ValueError(f"known mask of shape {tuple(m.shape)} varies inside an item of shape "
                             f"{tuple(shape[item_dims:])}; this domain keeps or generates whole items: give a mask "
                             f"of shape {tuple(shape[:item_dims])}")
        return flat[..., 0].bool().expand(shape[:item_dims])


def _impose(x: Tensor, known: Known | None, alpha_bar: Tensor, generator: torch.Generator | None) -> Tensor:
    return x if known is None else known.impose(x, alpha_bar, generator)


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _time(grid: TimeGrid, k: int, x: Tensor) -> Tensor:
    return grid.t[k].to(device=x.device, dtype=torch.float32).expand(x.shape[0])


@torch.no_grad()
def ddpm(
    denoiser: Denoiser,
    noise: Tensor,
    grid: TimeGrid,
    *,
    known: Known | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    resample: int = 1,
    temperature: float = 1.0,
) -> Tensor:
    """Ancestral sampling: draw ``x_s ~ q(x_s | x_t, x0 = D(x_t))`` at every step (Ho et al., 2020).

    With a grid that skips steps this is the generalised posterior between the
    visited levels. ``noise`` is ``x_T``, shape ``(B, ...)``.

    ``resample = r > 1`` takes each step ``r`` times, noising the result back to the step's
    level with ``q(x_t | x_s)`` in between: RePaint's resampling (Lugmayr et al., 2022) with jumps
    of one step. Going back is exact, so with an exact denoiser the marginals stay as right as the
    steps themselves (exact as steps get small). With a known part, imposing it alone does not
    sample the true conditional however many steps are taken; each extra pass lets the generated
    part move toward agreeing with it (tested on Gaussian data).

    ``temperature`` scales the noise each step draws (not resampling's return to the step's level, a forward
    step, nor the known part's noise): 0 takes the posterior mean at every step.
    """
    check_settings("ddpm", resample=resample)
    check_temperature(temperature)
    x = _impose(noise, known, grid.alpha_bar[0], generator)
    for k in tqdm(range(grid.steps), desc="ddpm", disable=not progress):
        abar_t, abar_s = grid.alpha_bar[k], grid.alpha_bar[k + 1]
        for r in range(resample):
            if r:
                back = float(abar_t / abar_s)
                x = back**0.5 * x + (1 - back) ** 0.5 * _randn_like(x, generator)
            x0 = same_shape(denoiser(x, _time(grid, k, x)), x, "the denoiser")
            # 0-dim CPU levels: scalars that combine with tensors on any device, and `var` is read without a sync
            mean, var = gaussian_posterior(x0, x, abar_s, abar_t)
            x = mean + temperature * var.sqrt() * _randn_like(x, generator) if float(var) > 0 else mean
            x = _impose(x, known, abar_s, generator)
    return x


@torch.no_grad()
def ddim(
    denoiser: Denoiser,
    noise: Tensor,
    grid: TimeGrid,
    *,
    eta: float = 0.0,
    known: Known | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    temperature: float = 1.0,
) -> Tensor:
    """DDIM (Song et al., 2021): deterministic at ``eta = 0``, ancestral DDPM at ``eta = 1``.
    ``temperature`` scales the noise that ``eta > 0`` draws at each step."""
    check_settings("ddim", eta)
    check_temperature(temperature)
    x = _impose(noise, known, grid.alpha_bar[0], generator)
    for k in tqdm(range(grid.steps), desc="ddim", disable=not progress):
        abar_t, abar_s = float(grid.alpha_bar[k]), float(grid.alpha_bar[k + 1])
        x0 = same_shape(denoiser(x, _time(grid, k, x)), x, "the denoiser")
        eps = (x - abar_t**0.5 * x0) / (1.0 - abar_t) ** 0.5
        sigma = eta * ((1.0 - abar_s) / (1.0 - abar_t) * (1.0 - abar_t / abar_s)) ** 0.5
        x = abar_s**0.5 * x0 + max(1.0 - abar_s - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + temperature * sigma * _randn_like(x, generator)
        x = _impose(x, known, grid.alpha_bar[k + 1], generator)
    return x


@torch.no_grad()
def dpm_solver_pp(
    denoiser: Denoiser,
    noise: Tensor,
    grid: TimeGrid,
    *,
    known: Known | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    delay: Tensor | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al., 2022): second-order multistep in data prediction.

    Uses the first-order update on the first step and on the final step to clean
    data (where ``log_snr`` is infinite), so 10–25 steps are usable.

    ``delay`` (long, ``noise``'s leading item dims, e.g. ``(B, T)`` for the frames of clips ``(B, T, C, H, W)``)
    staggers the items, as diffusion forcing samples (Chen et al., 2024): each walks the whole grid, starting
    ``delay`` steps after the first, and holds still when not started or done; the denoiser then gets a time per
    item (``(B, T)``). Known items are then clean throughout, their values at time 0 rather than noised to the
    current level: for a model trained with such items (``task.per_frame`` of video). An item whose estimate does
    not depend on the others follows the same path whatever its delay.
    """
    if delay is not None:
        check_delay(delay, tuple(noise.shape))
        return _staggered_dpm_solver_pp(denoiser, noise, grid, delay, known, progress)
    x = _impose(noise, known, grid.alpha_bar[0], generator)
    alphas, sigmas = grid.alpha_bar.sqrt(), (1.0 - grid.alpha_bar).sqrt()
    lambdas = torch.log(alphas) - torch.log(sigmas)
    x0_prev: Tensor | None = None
    for k in tqdm(range(grid.steps), desc="dpm-solver++", disable=not progress):
        a_t, s_t, a_s, s_s = (float(v) for v in (alphas[k], sigmas[k], alphas[k + 1], sigmas[k + 1]))
        x0 = same_shape(denoiser(x, _time(grid, k, x)), x, "the denoiser")
        second = x0_prev is not None and s_s > 0.0  # first order on the first step and onto clean data
        c = 0.5 / (float(lambdas[k] - lambdas[k - 1]) / float(lambdas[k + 1] - lambdas[k])) if second else 0.0
        x = _dpm_solver_step(x, x0, x0_prev if second else None, c, a_t, s_t, a_s, s_s)
        x = _impose(x, known, grid.alpha_bar[k + 1], generator)
        x0_prev = x0
    return x


def _dpm_solver_step(x: Tensor, x0: Tensor, x0_prev: Tensor | None, c: Any, a_t: Any, s_t: Any, a_s: Any, s_s: Any,
                     per_item: Callable[[Tensor], Tensor] = lambda v: v) -> Tensor:
    """One DPM-Solver++(2M) step of ``x`` from level ``(a_t, s_t)`` to ``(a_s, s_s)`` (signal and noise scales):
    ``d = (1 + c) x0 - c x0_prev`` (``x0`` alone without ``x0_prev``: first order), then
    ``x_s = (s_s / s_t) x + (a_s - s_s a_t / s_t) d``, that is ``alpha_s (1 - e^{-h}) d`` kept finite at
    ``s_s = 0``. The coefficients are Python floats, or float64 tensors (one per item, shaped by ``per_item``),
    computed in double precision either way and rounded once to ``x``'s dtype, so both give the same bits."""

    def coef(v: Any) -> Any:
        return per_item(v.to(x.dtype)) if isinstance(v, Tensor) else v

    d = x0 if x0_prev is None else coef(1.0 + c) * x0 - coef(c) * x0_prev
    return coef(s_s / s_t) * x + coef(a_s - s_s * a_t / s_t) * d


def _staggered_dpm_solver_pp(denoiser: Denoiser, noise: Tensor, grid: TimeGrid, delay: Tensor,
                             known: Known | None, progress: bool) -> Tensor:
    """:func:`dpm_solver_pp` with a start ``delay`` per item: at outer step ``n`` an item goes from grid index
    ``clamp(n - delay, 0, S)`` to the next one (when they differ), by the same update as the unstaggered solver
    (its coefficients per item, computed in float64 like the solver's Python floats)."""
    S, items = grid.steps, delay.ndim
    per_item = lambda v: v.reshape(v.shape + (1,) * (noise.ndim - items))  # noqa: E731
    delay = delay.to(noise.device).long().expand(noise.shape[:items])
    x = noise
    if known is not None:  # clean from the start: always at index S
        fixed = known.item_mask(tuple(noise.shape), items).to(noise.device)
        delay = delay.masked_fill(fixed, -S)
        x = torch.where(per_item(fixed), known.values_for(tuple(noise.shape)).to(noise), noise)
    times = grid.t.to(device=noise.device, dtype=torch.float32)
    alphas = grid.alpha_bar.to(noise.device).sqrt()
    sigmas = (1.0 - grid.alpha_bar.to(noise.device)).sqrt()
    lambdas = torch.log(alphas) - torch.log(sigmas)
    x0_prev: Tensor | None = None
    last = S if delay.is_meta else S + max(int(delay.max()), 0)  # one read; meta has no values: one pass still
    for n in tqdm(range(last), desc="dpm-solver++ (staggered)", disable=not progress):  # runs every operation
        i, j = (n - delay).clamp(0, S), (n + 1 - delay).clamp(0, S)
        x0 = same_shape(denoiser(x, times[i]), x, "the denoiser")
        a_t, s_t, a_s, s_s = alphas[i], sigmas[i], alphas[j], sigmas[j]
        # second order where the item moved on the previous step too (i > 0) and does not land on clean data
        r = (lambdas[i] - lambdas[(i - 1).clamp(min=0)]) / (lambdas[j] - lambdas[i])
        c = torch.where((i > 0) & (s_s > 0), 0.5 / r, 0.0)
        moved = _dpm_solver_step(x, x0, x0_prev, c, a_t, s_t, a_s, s_s, per_item)
        x = torch.where(per_item(j > i), moved, x)  # items not started or done hold still (their s_t may be 0)
        x0_prev = x0
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {"ddpm": ddpm, "ddim": ddim, "dpm_solver_pp": dpm_solver_pp}


def is_whole(n: Any) -> bool:
    """Whether ``n`` is an integer (a Python, NumPy or 0-dim torch one; not a float, not a bool, not a tensor of
    one element and more dimensions, which ``operator.index`` takes)."""
    try:
        operator.index(n)
    except TypeError:
        return False
    return not isinstance(n, bool) and getattr(n, "ndim", 0) == 0


def check_delay(delay: Tensor, shape: tuple[int, ...]) -> None:
    """A staggered sampler's ``delay``: whole steps ``>= 0``, of shape ``shape``'s leading item dims (or broadcast
    to them); a ``ValueError`` naming what is wrong otherwise."""
    items = shape[: delay.ndim]
    if delay.is_floating_point() or delay.is_complex() or delay.dtype == torch.bool:
        raise ValueError(f"delay: whole sampler steps (an integer tensor), got {delay.dtype}")
    try:
        fits = delay.ndim <= len(shape) and torch.broadcast_shapes(delay.shape, items) == items
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"delay of shape {tuple(delay.shape)} for samples of shape {shape}: it takes the samples' "
                         f"leading dims, e.g. {shape[:1]} or {shape[:2]}")
    if not delay.is_meta and bool((delay < 0).any()):
        raise ValueError("delay: steps >= 0 (an item starts that many steps after the first), got a negative one")


def check_temperature(temperature: float) -> None:
    """The scale of a sampler's noise: a finite number ``>= 0`` (0 takes the mean at every step)."""
    if not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")


def check_settings(sampler: str, eta: float = 0.0, resample: int = 1, staggered: str = "",
                   prefix: str = "") -> None:
    """Reject a sampler name that does not exist and a setting that the chosen sampler never uses:
    ``eta`` (not 0) is ddim's, ``resample`` (not 1) is ddpm's, a staggered start (a delay per item; ``staggered``
    names what asks for one) dpm_solver_pp's. Raises ``ValueError`` naming the setting (as ``prefix + name``:
    ``sample.eta``)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown {prefix}sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    if eta != 0.0 and sampler != "ddim":
        raise ValueError(f"{prefix}eta={eta} only applies to the ddim sampler, not to {sampler!r}")
    if resample != 1 and sampler != "ddpm":
        raise ValueError(f"{prefix}resample={resample} only applies to the ddpm sampler (with a known part), not to "
                         f"{sampler!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"{prefix}eta={eta}: DDIM's eta lies in [0, 1] (0 deterministic, 1 ancestral DDPM)")
    if not (is_whole(resample) and resample >= 1):
        raise ValueError(f"{prefix}resample={resample}: the times each step is taken, an integer >= 1")
    if staggered and sampler != "dpm_solver_pp":
        raise ValueError(f"{staggered} needs the dpm_solver_pp sampler, not {sampler!r}")


def sample(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    schedule: NoiseSchedule,
    *,
    sampler: str = "dpm_solver_pp",
    steps: int = 25,
    spacing: str = "auto",
    eta: float = 0.0,
    resample: int = 1,
    temperature: float = 1.0,
    known: Known | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    delay: Tensor | None = None,
    init: Tensor | None = None,
    start: float = 1.0,
) -> Tensor:
    """Draw ``x_T ~ N(0, I)`` of ``shape`` and run the named sampler over ``steps`` levels.

    With ``init`` (a guess of the clean sample, of ``shape``) and ``start < 1`` the sampler starts from ``init``
    noised to the grid's first level at or below model time ``start`` instead (its noise scaled by ``temperature``
    too), and takes only the grid's steps from there (:meth:`TimeGrid.starting_at`; SDEdit, Meng et al., 2022): the
    lower ``start``, the more of ``init`` survives.

    ``spacing="auto"`` takes the sampler's :data:`DEFAULT_SPACING`. ``eta`` belongs to ddim alone and
    ``resample`` to ddpm alone (:func:`check_settings`: giving one to another sampler is an error). With a
    ``known`` part ddpm takes every step ``resample`` times (see :func:`ddpm`); without one it takes each
    once (on unconditional point clouds resampling cost diversity, benchmarks/RESULTS.md).

    ``temperature`` scales ``x_T`` and the noise that stochastic samplers draw at each step: 1 samples the
    model's distribution; below 1 trades diversity for samples nearer the conditional mean (on Gaussian data
    a deterministic sampler's samples keep the mean and scale their spread by ``temperature``; 0 gives the
    mean itself). The known part is always noised at full scale.

    ``delay`` (dpm_solver_pp only) starts each item that many steps later, its known items clean throughout (see
    :func:`dpm_solver_pp`).
    """
    check_settings(sampler, eta, resample, staggered="" if delay is None else "a delay per item (a staggered schedule)")
    check_temperature(temperature)
    if not 0.0 < start <= 1.0:
        raise ValueError(f"start must lie in (0, 1], got {start}")
    if (init is None) != (start == 1.0):
        raise ValueError(f"init and start < 1 go together (SDEdit: init noised to time start), got "
                         f"{'no init' if init is None else 'an init'} with start={start}")
    if init is not None and (delay is not None or tuple(init.shape) != tuple(shape)):
        raise ValueError(f"init of shape {tuple(init.shape)} for samples of shape {tuple(shape)}" if delay is None
                         else "init (a start below t = 1) and a delay per item do not go together")
    noise = temperature * torch.randn(shape, generator=generator, device=device, dtype=dtype)
    extra: dict = {"eta": eta, "temperature": temperature} if sampler == "ddim" else {}
    if sampler == "ddpm":
        extra = {"resample": resample if known is not None else 1, "temperature": temperature}
    if delay is not None:
        extra = {"delay": delay}
    grid = sampling_grid(schedule, steps, DEFAULT_SPACING[sampler] if spacing == "auto" else spacing)
    if init is not None:
        grid = grid.starting_at(start)
        level = grid.alpha_bar[0]
        noise = float(level) ** 0.5 * init.to(device=device, dtype=dtype) + float(1 - level) ** 0.5 * noise
    return SAMPLERS[sampler](denoiser, noise, grid, known=known, generator=generator, progress=progress, **extra)
