"""Gaussian diffusion: forward process, parameterisations, training loss and an unbiased estimate of the bound.

Shapes: data ``x0`` is ``(B, ...)``; per-sample quantities are ``(B,)`` and are
broadcast over the trailing dimensions. Steps are integers in ``{1..T}`` (see
:mod:`multigen.schedules`); models are called as ``model_fn(x_t, t)`` with ``t``
the float time ``step / T`` of shape ``(B,)``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .schedules import NoiseSchedule

ModelFn = Callable[[Tensor, Tensor], Tensor]
"""``model_fn(x_t, t) -> output`` with ``t`` float time of shape ``(B,)``."""
SelfConditionedFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
"""``model_fn(x_t, t, previous) -> output``: ``previous`` an x0 estimate shaped like ``x_t``, or None (none yet)."""
Denoiser = Callable[[Tensor, Tensor], Tensor]
"""``denoiser(x_t, t) -> x0_hat``: a model turned into a clean-data estimate."""

PARAMETERIZATIONS = ("eps", "x0", "v")
LOSS_WEIGHTINGS = ("uniform", "snr", "min_snr")
TIME_SAMPLINGS = ("uniform", "stratified")


def uniform_times(
    batch: int, device: torch.device | str, generator: torch.Generator | None = None, stratified: bool = False
) -> Tensor:
    """``(batch,)`` times in ``[0, 1)``, each uniform: independent, or ``stratified``, ``(i + v) / batch`` with one
    ``v ~ U(0, 1)`` (MDLM's low-discrepancy draw: a batch's mean loss stays unbiased, with less variance)."""
    if not stratified:
        return torch.rand(batch, device=device, generator=generator)
    return (torch.arange(batch, device=device) + torch.rand(1, device=device, generator=generator)) / batch


def host_coin(p: float) -> bool:
    """True with probability ``p``, drawn from the default CPU generator (saved with a run's other random states),
    so a training step that branches on it never waits on the device (self-conditioning's first pass)."""
    return bool(torch.rand(()) < p)


def expand_like(v: Tensor, x: Tensor) -> Tensor:
    """Reshape per-sample ``v`` of shape ``(B,)`` to ``(B, 1, ..., 1)`` (per-item ``(B, N)``: ``(B, N, 1, ...)``),
    the number of dims of ``x``, on its device and in its dtype."""
    return v.to(device=x.device, dtype=x.dtype).reshape(v.shape + (1,) * (x.ndim - v.ndim))


def same_shape(out: Tensor, x_t: Tensor, what: str = "the network") -> Tensor:
    """``out``, after checking that ``what`` returned ``x_t``'s shape (broadcasting would hide a wrong one)."""
    if out.shape != x_t.shape:
        raise ValueError(f"{what} returned shape {tuple(out.shape)} for x_t of shape {tuple(x_t.shape)}; its output "
                         f"must have x_t's shape")
    return out


def convert(out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, src: str, dst: str) -> Tensor:
    """Convert a prediction between the ``eps``, ``x0`` and ``v`` parameterisations.

    ``alpha`` and ``sigma`` broadcast against ``x_t``; uses
    ``x_t = alpha x0 + sigma eps`` and ``v = alpha eps - sigma x0``.
    """
    if src == dst:
        return out
    if src == "eps":
        x0, eps = (x_t - sigma * out) / alpha, out
    elif src == "x0":
        x0, eps = out, (x_t - alpha * out) / sigma
    elif src == "v":
        x0, eps = alpha * x_t - sigma * out, sigma * x_t + alpha * out
    else:
        raise ValueError(f"unknown parameterisation {src!r}; choose one of {PARAMETERIZATIONS}")
    if dst == "x0":
        return x0
    if dst == "eps":
        return eps
    if dst == "v":
        return alpha * eps - sigma * x0
    raise ValueError(f"unknown parameterisation {dst!r}; choose one of {PARAMETERIZATIONS}")


def gaussian_posterior(x0: Tensor, x_t: Tensor, abar_s: Tensor, abar_t: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of ``q(x_s | x_t, x0)`` for noise levels ``s < t``.

    ``abar_s``/``abar_t`` broadcast against ``x_t``. With ``abar_s = 1`` the mean is
    ``x0`` and the variance 0.
    """
    beta_ts = 1.0 - abar_t / abar_s
    denom = 1.0 - abar_t
    mean = (abar_s.sqrt() * beta_ts / denom) * x0 + ((abar_t / abar_s).sqrt() * (1.0 - abar_s) / denom) * x_t
    var = (1.0 - abar_s) / denom * beta_ts
    return mean, var


def _normal_kl(mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor) -> Tensor:
    """Elementwise ``KL(N(mean1, var1) || N(mean2, var2))`` in nats."""
    return 0.5 * (torch.log(var2) - torch.log(var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def _discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, std: Tensor, bin_width: float) -> Tensor:
    """Log-probability of ``x`` in ``[-1, 1]`` under a Gaussian discretised to bins of ``bin_width``.

    The outermost bins extend to infinity (Ho et al., 2020).
    """
    cdf = lambda v: 0.5 * (1.0 + torch.erf((v - mean) / (std * math.sqrt(2.0))))  # noqa: E731 (no validation sync)
    upper = cdf(x + bin_width / 2)
    lower = cdf(x - bin_width / 2)
    edge = 1.0 - bin_width / 2
    upper = torch.where(x > edge, torch.ones_like(upper), upper)
    lower = torch.where(x < -edge, torch.zeros_like(lower), lower)
    return torch.log((upper - lower).clamp(min=1e-12))


class EstimateHistory:
    """Self-conditioning when sampling: a sampling run's last x0 estimate, shown to the network at its next call.

    ``previous(x_t)`` is None before the first :meth:`update`; after it, the last estimate fitted to ``x_t``'s rows:
    its first rows when the call has fewer (a guidance branch leaving the batch: ``[cond; null]`` -> ``cond``),
    zeros for the extra rows when it has more (a branch joining with no estimate of its own yet, what a network
    trained by :meth:`GaussianDiffusion.loss` sees as None).
    """

    def __init__(self) -> None:
        self.last: Tensor | None = None

    def previous(self, x_t: Tensor) -> Tensor | None:
        if self.last is None:
            return None
        last, n = self.last, len(x_t)
        if len(last) >= n:
            return last[:n]
        return torch.cat([last, last.new_zeros(n - len(last), *last.shape[1:])])

    def update(self, x0: Tensor) -> None:
        self.last = x0.detach()


def _per_item(v: Tensor) -> Tensor:
    """``v`` ``(B, ...)`` as ``(B, values)``: data of one value an item, ``(B,)``, as ``(B, 1)``."""
    return v.flatten(1) if v.dim() > 1 else v[:, None]


class GaussianDiffusion:
    """DDPM-style Gaussian diffusion over a :class:`NoiseSchedule`.

    Args:
        schedule: the noise schedule (its ``timesteps`` is ``T``).
        parameterization: what the network predicts: ``"eps"``, ``"x0"`` or ``"v"``.
        loss_weighting: ``"uniform"`` (plain MSE on the network's own target),
            ``"snr"`` (weight ``SNR`` on the x0 error, i.e. the eps loss) or
            ``"min_snr"`` (weight ``min(SNR, gamma)`` on the x0 error; Hang et al., 2023).
        min_snr_gamma: ``gamma`` of the min-SNR weighting.
        time_sampling: how a training batch's steps are drawn: ``"uniform"`` (independently) or
            ``"stratified"`` (one per ``1/B``-wide stratum of the steps; each batch's loss is still unbiased,
            with less variance between batches).
        clip_x0: clamp x0 estimates to ``[-clip_x0, clip_x0]`` when sampling (None: off).
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        parameterization: str = "eps",
        loss_weighting: str = "uniform",
        min_snr_gamma: float = 5.0,
        clip_x0: float | None = None,
        time_sampling: str = "uniform",
    ) -> None:
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterisation {parameterization!r}; choose one of {PARAMETERIZATIONS}")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"unknown loss weighting {loss_weighting!r}; choose one of {LOSS_WEIGHTINGS}")
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time sampling {time_sampling!r}; choose one of {TIME_SAMPLINGS}")
        if not 0 < min_snr_gamma < math.inf:  # 0 trains nothing, below it the loss is negative
            raise ValueError(f"min_snr_gamma must be a finite number > 0, got {min_snr_gamma}")
        if clip_x0 is not None and not 0 < clip_x0 < math.inf:  # 0 or below makes every x0 the same constant
            raise ValueError(f"clip_x0 must be a finite number > 0 (the largest |x0|) or None, got {clip_x0}")
        self.schedule = schedule
        self.parameterization = parameterization
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = min_snr_gamma
        self.clip_x0 = clip_x0
        self.time_sampling = time_sampling

    @property
    def timesteps(self) -> int:
        return self.schedule.timesteps

    # ------------------------------------------------------------ forward process
    def coefficients(self, steps: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """``alpha``, ``sigma`` at integer ``steps`` ``(B,)`` (or ``(B, N)``: one per item, e.g. per frame), broadcast
        to ``like``."""
        abar = self.schedule.alpha_bar(steps.to(like.device))
        return expand_like(abar.sqrt(), like), expand_like((1.0 - abar).sqrt(), like)

    def random_steps(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """Training steps from ``{1..T}``, shape ``(batch,)``: each uniform, or (``time_sampling="stratified"``)
        the ``i``-th uniform in the ``i``-th of ``batch`` equal strata, ``floor((i + v) / batch * T) + 1`` with one
        ``v ~ U(0, 1)``."""
        if self.time_sampling == "uniform":
            return torch.randint(1, self.timesteps + 1, (batch,), device=device, generator=generator)
        u = uniform_times(batch, device, generator, stratified=True)
        return (u * self.timesteps).long().clamp(max=self.timesteps - 1) + 1

    def q_sample(self, x0: Tensor, steps: Tensor, noise: Tensor) -> Tensor:
        """Draw ``x_t ~ q(x_t | x0)`` at integer ``steps`` using the given ``noise``."""
        alpha, sigma = self.coefficients(steps, x0)
        return alpha * x0 + sigma * noise

    # ---------------------------------------------------------------- training
    def loss(
        self,
        model_fn: ModelFn,
        x0: Tensor,
        loss_mask: Tensor | None = None,
        steps: Tensor | None = None,
        noise: Tensor | None = None,
        self_condition: float = 0.0,
    ) -> Tensor:
        """Per-sample weighted denoising loss, shape ``(B,)``.

        ``loss_mask`` (broadcastable to ``x0``, bool or 0/1) selects the elements the
        loss covers, e.g. the unobserved frames or points; the loss is their mean.
        ``steps`` are ``(B,)``, or one per item ``(B, N)`` (e.g. a noise level per frame of ``(B, T, C, H, W)``
        clips; ``model_fn`` then gets times ``(B, N)``), each item weighted by its own step's weighting.
        ``self_condition`` > 0: ``model_fn`` is a :data:`SelfConditionedFn`, trained as in self-conditioning (Chen
        et al., 2023): with this probability a step first estimates x0 without gradient, as :meth:`denoiser` would
        (clamped), and shows it to the network as ``previous``; otherwise ``previous`` is None.
        """
        batch = x0.shape[0]
        if steps is None:
            steps = self.random_steps(batch, x0.device)
        elif steps.is_floating_point():  # a diffusion time in [0, 1] would be read as a level of the schedule's
            raise ValueError(f"steps: integer levels in 0..{self.schedule.timesteps} (t = steps / T), got "
                             f"{steps.dtype}")
        if noise is None:
            noise = torch.randn_like(x0)
        alpha, sigma = self.coefficients(steps, x0)
        x_t = alpha * x0 + sigma * noise
        time = self.schedule.model_time(steps)
        if self_condition > 0:
            out = self._self_conditioned(model_fn, x_t, time, alpha, sigma, self_condition).float()
        else:
            out = model_fn(x_t, time).float()
        same_shape(out, x_t)
        target = self.target(x0, noise, alpha, sigma).float()
        err = (out - target) ** 2 * expand_like(self.loss_weight(steps), out)
        if loss_mask is None:
            per_sample = _per_item(err).mean(1)
        else:
            m = loss_mask.to(err.dtype).expand_as(err)
            per_sample = _per_item(err * m).sum(1) / _per_item(m).sum(1).clamp(min=1.0)
        return per_sample

    def _self_conditioned(self, model_fn: SelfConditionedFn, x_t: Tensor, time: Tensor, alpha: Tensor, sigma: Tensor,
                          p: float) -> Tensor:
        """:meth:`loss`'s network output with self-conditioning (its coin: :func:`host_coin`)."""
        previous = None
        if host_coin(p):
            with torch.no_grad():
                previous = self._x0(model_fn(x_t, time, None), x_t, alpha, sigma)
        return model_fn(x_t, time, previous)

    def _x0(self, out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The network's ``out`` as an x0 estimate in ``x_t``'s dtype (``alpha``, ``sigma`` broadcast in it), clamped
        to ``clip_x0`` when it is set."""
        x0 = convert(same_shape(out, x_t).to(x_t.dtype), x_t, alpha, sigma, self.parameterization, "x0")
        return x0.clamp(-self.clip_x0, self.clip_x0) if self.clip_x0 is not None else x0

    def target(self, x0: Tensor, noise: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The network's regression target, computed from ``x0`` and ``noise`` directly (no division by
        ``alpha``, which is near 0 at ``t = T``): ``eps``, ``x0`` or ``v = alpha eps - sigma x0``."""
        if self.parameterization == "eps":
            return noise
        if self.parameterization == "x0":
            return x0
        return alpha * noise - sigma * x0

    def loss_weight(self, steps: Tensor) -> Tensor:
        """Factor applied to the network-target MSE at ``steps`` for the chosen weighting; 0 at step 0 (an item
        given clean, as observed frames under per-frame levels are, has nothing to denoise)."""
        clean = steps == 0
        if self.loss_weighting == "uniform":
            return (~clean).to(torch.float64)
        snr = torch.exp(self.schedule.log_snr(steps))
        # MSE on the network's target equals `native` times the x0 MSE.
        native = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1.0}[self.parameterization]
        wanted = snr if self.loss_weighting == "snr" else snr.clamp(max=self.min_snr_gamma)
        return torch.where(clean, 0.0, wanted / native)

    # ---------------------------------------------------------------- sampling
    def steps_of(self, t: Tensor) -> Tensor:
        """The integer steps ``round(t T)`` (long) that the samplers' float times ``t`` stand for."""
        return torch.round(t.double() * self.timesteps).long()

    def alpha_of(self, t: Tensor) -> Tensor:
        """The signal scale ``sqrt(alpha_bar)`` (float64, shape of ``t``) that :meth:`denoiser` assumes at float
        times ``t``."""
        return self.schedule.alpha(self.steps_of(t))

    def denoiser(self, model_fn: ModelFn) -> Denoiser:
        """Wrap ``model_fn`` as ``denoiser(x_t, t) -> x0_hat`` for the samplers (t float time)."""

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            return self._x0(model_fn(x_t, t), x_t, *self.coefficients(self.steps_of(t), x_t))

        return denoise

    # ------------------------------------------------------------ likelihoods
    @torch.no_grad()
    def variational_bound(
        self,
        model_fn: ModelFn,
        x0: Tensor,
        decoder: str = "gaussian",
        bin_width: float = 2.0 / 255.0,
        progress: bool = False,
    ) -> dict[str, Tensor]:
        """The full DDPM variational bound on ``-log p(x0)``, per sample, in nats.

        Sums the prior term, all ``T - 1`` transition KLs and the decoder term (one
        ``x_t`` draw per step, so the result is an unbiased estimate of the bound).
        Reverse variances are the posterior variances (``beta_1`` for the decoder).

        Args:
            decoder: ``"gaussian"`` (a density: continuous data) or ``"discretized"``
                (probability of bins of ``bin_width`` in ``[-1, 1]``: 8-bit data).

        Returns:
            ``prior``, ``transitions``, ``decoder``, ``total`` (nats, shape ``(B,)``)
            and ``bits_per_dim``.
        """
        if decoder not in ("gaussian", "discretized"):
            raise ValueError(f"unknown decoder {decoder!r}; choose 'gaussian' or 'discretized'")
        B, T = x0.shape[0], self.timesteps
        dims = x0[0].numel()
        sched = self.schedule
        flat_sum = lambda v: _per_item(v).sum(1)  # noqa: E731
        denoise = self.denoiser(model_fn)

        abar_T = expand_like(sched.alpha_bar(torch.full((B,), T)), x0)
        prior = flat_sum(_normal_kl(abar_T.sqrt() * x0, 1.0 - abar_T, torch.zeros_like(x0), torch.ones_like(x0)))

        transitions = torch.zeros(B, dtype=x0.dtype, device=x0.device)
        for i in tqdm(range(T, 1, -1), desc="bound", disable=not progress):
            steps = torch.full((B,), i, device=x0.device)
            x_t = self.q_sample(x0, steps, torch.randn_like(x0))
            abar_t = expand_like(sched.alpha_bar(steps), x0)
            abar_s = expand_like(sched.alpha_bar(steps - 1), x0)
            q_mean, q_var = gaussian_posterior(x0, x_t, abar_s, abar_t)
            p_mean, _ = gaussian_posterior(denoise(x_t, sched.model_time(steps)), x_t, abar_s, abar_t)
            transitions += flat_sum(_normal_kl(q_mean, q_var, p_mean, q_var))

        steps = torch.ones(B, dtype=torch.long, device=x0.device)
        x_1 = self.q_sample(x0, steps, torch.randn_like(x0))
        mean = denoise(x_1, sched.model_time(steps))
        var = expand_like(sched.betas[:1].expand(B), x0)
        if decoder == "gaussian":
            nll = 0.5 * (torch.log(2 * math.pi * var) + (x0 - mean) ** 2 / var)
        else:
            nll = -_discretized_gaussian_log_likelihood(x0, mean, var.sqrt(), bin_width)
        dec = flat_sum(nll)
        total = prior + transitions + dec
        return {
            "prior": prior,
            "transitions": transitions,
            "decoder": dec,
            "total": total,
            "bits_per_dim": total / (dims * math.log(2.0)),
        }

