"""D3PM: categorical diffusion (Austin et al., 2021), readable top to bottom.

Conventions: tokens are int64 ``(B, *S)`` in ``[0, K)``; probability and logit
tensors add a trailing ``K`` dimension. Time is an int64 ``(B,)`` in ``0..T``
(0 is data); an earlier time ``s`` given as ``None`` means ``t - 1`` (one step, the
training loss's case, which the dense transition then takes from a device table
without a host sync). The denoiser is ``model(x_t, t) -> logits of x_0`` ``(B, *S, K)``.

A transition answers two questions for times ``s < t``:

* ``marginal(p, s)``  = ``p Q̄_s``: the distribution of ``x_s`` when ``x_0 ~ p``;
* ``column(x_t, s, t)`` = ``q(x_t | x_s = k)`` for every ``k``.

Everything else follows from Bayes: ``q(x_s | x_t, x_0) ∝ column(x_t, s, t) ·
marginal(onehot(x_0), s)``. The model's reverse step mixes these posteriors over its
x0 prediction, ``p(x_s | x_t) = Σ_x̃0 q(x_s | x_t, x̃0) p̃(x̃0 | x_t)``; since
``q(x_s | x_t, x̃0) = q(x_t | x_s) q(x_s | x̃0) / q(x_t | x̃0)`` this is the Bayes formula
applied to the weights ``w = p̃ / q(x_t | ·)`` (linear in ``w``, so still O(K)). With the
exact ``p̃ = q(x_0 | x_t)`` it is the exact reverse step. Only the x̃0 that can produce ``x_t``
enter, so ``p̃`` is first restricted to them and renormalised in log space: the weights then
sum to one and the step stays exact however sure the model is of an impossible x̃0 (an
absorbing step keeps a visible token even when the model gives it probability 1e-44). (The D3PM paper's eq. 4 weighs by
the joint ``q(x_s, x_t | x̃0)`` instead, i.e. without the ``1/q(x_t | x̃0)``; that form is
not exact for the true posterior, and the tests show the difference.)

Uniform and absorbing transitions are mixtures ``Q_t = (1-β_t) I + β_t 1 πᵀ`` with
a fixed ``π`` (uniform, or the mask token), so every quantity is O(K) per token
with ``ᾱ_t = Π(1-β)``; no K×K matrix is built. The discretised Gaussian uses dense
matrices (K ≤ 256).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from multigen.diffusion import ModelFn, uniform_times
from multigen.samplers import Known, is_whole
from multigen.schedules import kept_on

LN2 = math.log(2.0)
TINY = 1e-30  # floor inside logs of normalised probabilities: an impossible entry gets log-probability ~ -69


# ------------------------------------------------------------------ schedules
def d3pm_betas(kind: str, T: int) -> Tensor:
    """β_1..β_T as float64 ``(T,)``.

    * ``cosine`` (uniform): β_t = 1 − ᾱ_t/ᾱ_{t−1} with ᾱ(t) = cos((t/T + 0.008)/1.008 · π/2)²;
    * ``jsd`` (absorbing): β_t = 1/(T − t + 1), so every token is masked exactly at t = T;
    * ``linear`` (discretised Gaussian): β_t evenly from 0.02 to 1.
    """
    t = torch.arange(T + 1, dtype=torch.float64)
    if kind == "cosine":
        abar = torch.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    if kind == "jsd":
        return 1.0 / (T - t[1:] + 1)
    if kind == "linear":
        return torch.linspace(0.02, 1.0, T, dtype=torch.float64)
    raise ValueError(f"unknown D3PM schedule {kind!r}; choose 'cosine', 'jsd' or 'linear'")


def _per_sample(v: Tensor, like: Tensor) -> Tensor:
    """``v`` ``(B,)`` shaped to broadcast against ``like`` ``(B, *S, K)``."""
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def _kl(log_q: Tensor, log_p: Tensor) -> Tensor:
    """``KL(q || p)`` over the last dim from log-probabilities; ``0 · log 0 = 0``."""
    q = log_q.exp()
    return torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q)).sum(-1)


def _before(s: Tensor | None, t: Tensor) -> Tensor:
    """The earlier time ``s`` ``(B,)``, ``t - 1`` when ``s`` is ``None``."""
    return t - 1 if s is None else s


def _xlogx(y: Tensor) -> Tensor:
    """``y log y`` with ``0 log 0 = 0``."""
    return torch.where(y > 0, y * y.clamp_min(TINY).log(), torch.zeros_like(y))


# ---------------------------------------------------------------- transitions
class Transition(ABC):
    """``Q_1..Q_T`` over ``K`` categories."""

    def __init__(self, K: int, betas: Tensor) -> None:
        if K < 2:
            raise ValueError(f"a categorical process needs K >= 2 categories, got {K}")
        self.K, self.T = K, len(betas)
        self.betas = betas.double()
        self._on_device: dict[tuple[str, torch.device], Tensor] = {}

    def _table(self, name: str, device: torch.device) -> Tensor:
        """The float64 tensor attribute ``name`` on ``device``, copied there once and kept (no copy per call)."""
        return kept_on(self._on_device, name, getattr(self, name), device)

    @abstractmethod
    def marginal(self, p: Tensor, s: Tensor) -> Tensor:
        """``p Q̄_s`` for nonnegative weights ``p`` ``(B, *S, K)``; ``s`` ``(B,)`` in ``0..T``."""

    @abstractmethod
    def column(self, x_t: Tensor, s: Tensor | None, t: Tensor) -> Tensor:
        """``q(x_t | x_s = k)`` for all ``k``: ``(B, *S, K)``, for ``0 <= s < t`` (``None``: ``t - 1``)."""

    def likelihood(self, x_t: Tensor, t: Tensor) -> Tensor:
        """``q(x_t | x_0 = k)`` for all ``k``: ``(B, *S, K)``."""
        return self.column(x_t, torch.zeros_like(t), t)

    @abstractmethod
    def stationary(self) -> Tensor:
        """The distribution of ``x_T`` ``(K,)`` (whatever ``x_0``)."""

    def marginal_of_tokens(self, x0: Tensor, s: Tensor) -> Tensor:
        """``q(x_s | x_0)`` for token ids ``x0`` ``(B, *S)``: ``(B, *S, K)`` float64."""
        return self.marginal(F.one_hot(x0, self.K).double(), s)

    def sample_marginal(self, x0: Tensor, s: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``x_s ~ q(x_s | x_0)`` for token ids ``x0`` ``(B, *S)``."""
        return _gumbel_sample(self.marginal_of_tokens(x0, s).clamp_min(TINY).log(), generator)

    def posterior_log_probs(self, x_t: Tensor, x0_log_probs: Tensor, s: Tensor | None, t: Tensor) -> Tensor:
        """``log Σ_x̃0 q(x_s | x_t, x̃0) p̃(x̃0)`` ``(B, *S, K)`` float64, by Bayes on ``w = p̃ / q(x_t | ·)``.

        ``x0_log_probs`` ``(B, *S, K)``: ``log p̃``, normalised (:meth:`D3PM.model_log_probs`; the fused forms of
        subclasses rely on it). ``p̃`` is restricted to the x̃0 that can produce ``x_t`` and renormalised there in
        log space, so the weights sum to one."""
        likelihood = self.likelihood(x_t, t)  # q(x_t | x_0 = k)
        possible = likelihood > 0  # x̃0 that can produce x_t; a zero divisor would poison the gradient
        p = torch.softmax(x0_log_probs.double().masked_fill(~possible, -math.inf), dim=-1)
        w = p / torch.where(possible, likelihood, 1.0)
        joint = self.column(x_t, s, t) * self.marginal(w, _before(s, t))  # sums to Σ_possible p = 1
        return torch.log_softmax(joint.clamp_min(TINY).log(), dim=-1)

    def posterior_kl(self, x_t: Tensor, x0: Tensor, log_p: Tensor, s: Tensor | None, t: Tensor) -> Tensor:
        """``KL(q(x_s | x_t, x_0) || p)`` per token ``(B, *S)`` for token ids ``x0`` and ``log_p`` ``(B, *S, K)``."""
        return _kl(self.posterior_log_probs(x_t, F.one_hot(x0, self.K).double().log(), s, t), log_p)


class MixtureTransition(Transition):
    """``Q_t = (1-β_t) I + β_t 1 πᵀ``: keep the token, or redraw it from ``π``."""

    def __init__(self, K: int, betas: Tensor, pi: Tensor) -> None:
        super().__init__(K, betas)
        self.pi = pi.double()
        self.alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - self.betas, 0)])

    def _abar(self, s: Tensor, like: Tensor) -> Tensor:
        """``ᾱ_s`` shaped to broadcast against ``like``, gathered on its device (no host sync)."""
        return _per_sample(self._table("alpha_bar", like.device)[s].to(like.dtype), like)

    def marginal(self, p: Tensor, s: Tensor) -> Tensor:
        a = self._abar(s, p)
        return a * p + (1 - a) * p.sum(-1, keepdim=True) * self._table("pi", p.device).to(p.dtype)  # linear in p

    def marginal_of_tokens(self, x0: Tensor, s: Tensor) -> Tensor:
        like = torch.empty((*x0.shape, 1), dtype=torch.float64, device=x0.device)
        a = self._abar(s, like)
        out = ((1 - a) * self._table("pi", x0.device)).expand(*x0.shape, self.K).contiguous()
        return out.scatter_add_(-1, x0[..., None], a.expand(*x0.shape, 1))

    def column(self, x_t: Tensor, s: Tensor | None, t: Tensor) -> Tensor:
        like = torch.empty((*x_t.shape, 1), dtype=torch.float64, device=x_t.device)
        a = self._abar(t, like) / self._abar(_before(s, t), like)  # ᾱ_{t|s}; ᾱ_s > 0 for s < T
        onehot = F.one_hot(x_t, self.K).to(like.dtype)
        return a * onehot + (1 - a) * self._table("pi", x_t.device)[x_t][..., None]

    def stationary(self) -> Tensor:
        return self.pi.float()

    def sample_marginal(self, x0: Tensor, s: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Keep each token with probability ``ᾱ_s``, else redraw it from ``π``: O(1) per token."""
        like = torch.empty(x0.shape, dtype=torch.float64, device=x0.device)
        keep = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64) < self._abar(s, like)
        redraw = torch.multinomial(self._table("pi", x0.device), x0.numel(), replacement=True, generator=generator)
        return torch.where(keep, x0, redraw.view(x0.shape))

    def posterior_log_probs(self, x_t: Tensor, x0_log_probs: Tensor, s: Tensor | None, t: Tensor) -> Tensor:
        """The generic Bayes step fused into a few O(K) passes.

        With ``d = (1-ᾱ_t) π(x_t)`` and ``e = (1-ᾱ_{t|s}) π(x_t)``, every ``k ≠ x_t`` has
        ``q(x_t | x_0=k) = d`` and ``q(x_t | x_s=k) = e``, so the joint is ``e·(ᾱ_s w_k + (1-ᾱ_s) W π_k)``
        with ``w = p/d`` and ``W = Σw``; only the entry ``k = x_t`` differs, and is set alone.
        ``x0_log_probs`` must be normalised (:meth:`D3PM.model_log_probs`): where ``d > 0`` every x̃0 can
        produce ``x_t``, so ``p`` already sums to one over them; where ``d = 0`` (absorbing, ``x_t``
        visible) only x̃0 = x_t can, and ``p`` restricted to it is 1 whatever the model says.
        """
        like = torch.empty((*x_t.shape, 1), dtype=torch.float64, device=x_t.device)
        a_t, a_s = self._abar(t, like), self._abar(_before(s, t), like)
        a_ts = a_t / a_s
        pi = self._table("pi", x_t.device)
        idx = x_t[..., None]
        pi_xt = pi[idx]
        d = (1 - a_t) * pi_xt
        p = x0_log_probs.double().exp()
        p_xt = torch.where(d > 0, p.gather(-1, idx), 1.0)  # d = 0: p̃ restricted to the one possible x̃0 = x_t
        inv_d = torch.where(d > 0, 1 / torch.where(d > 0, d, 1.0), 0.0)
        w_xt = p_xt / (a_t + d)
        W = inv_d * (1 - p_xt).clamp_min(0) + w_xt  # p sums to one
        e = (1 - a_ts) * pi_xt
        m_xt = a_s * w_xt + (1 - a_s) * W * pi_xt
        joint = torch.addcmul((e * a_s * inv_d) * p, e * (1 - a_s) * W, pi)
        joint = joint.scatter(-1, idx, (e + a_ts) * m_xt)
        return joint.clamp_min(TINY).log() - (e * W + a_ts * m_xt).log()  # the normaliser is Σ_possible p = 1

    def posterior_of_tokens(self, x_t: Tensor, x0: Tensor, s: Tensor | None,
                            t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``q(x_s = k | x_t, x_0) = c π_k + u [k = x_t] + v [k = x_0]`` for token ids: ``(c, u, v)``, each
        float64 shaped like ``x_t``. Three numbers per token; the ``K`` values are never formed."""
        like = torch.empty(x_t.shape, dtype=torch.float64, device=x_t.device)
        a_t, a_s = self._abar(t, like), self._abar(_before(s, t), like)
        a_ts = a_t / a_s
        pi_xt = self._table("pi", x_t.device)[x_t]
        e = (1 - a_ts) * pi_xt  # q(x_t | x_s = k) for k != x_t
        u = a_ts * (a_s * (x_t == x0) + (1 - a_s) * pi_xt)
        v, c = e * a_s, e * (1 - a_s)
        z = u + v + c  # q(x_t | x_0)
        return c / z, u / z, v / z

    def posterior_kl(self, x_t: Tensor, x0: Tensor, log_p: Tensor, s: Tensor | None, t: Tensor) -> Tensor:
        """The KL from the three-number posterior: one pass over ``log_p`` (for ``Σ π_k log p_k``)."""
        c, u, v = self.posterior_of_tokens(x_t, x0, s, t)
        same = x_t == x0
        u, v = torch.where(same, u + v, u), torch.where(same, 0.0, v)
        pi = self._table("pi", c.device)
        c_xt, c_x0 = c * pi[x_t], c * pi[x0]
        neg_entropy = (_xlogx(c) + c * _xlogx(pi).sum() - _xlogx(c_xt) + _xlogx(c_xt + u)
                       - _xlogx(c_x0) + _xlogx(c_x0 + v))
        log_p = log_p.double()
        cross = (c * (log_p @ pi) + u * log_p.gather(-1, x_t[..., None])[..., 0]
                 + v * log_p.gather(-1, x0[..., None])[..., 0])
        return neg_entropy - cross


class Uniform(MixtureTransition):
    """Uniform noise: ``π = 1/K``."""

    def __init__(self, K: int, betas: Tensor) -> None:
        super().__init__(K, betas, torch.full((K,), 1.0 / K, dtype=torch.float64))


class Absorbing(MixtureTransition):
    """Absorbing state: tokens turn into the mask token ``K - 1`` and stay there."""

    def __init__(self, K: int, betas: Tensor) -> None:
        super().__init__(K, betas, F.one_hot(torch.tensor(K - 1), K).double())
        self.mask_id = K - 1

    def remasking_step(self, x_t: Tensor, log_x0: Tensor, s: Tensor, t: Tensor, remask: float,
                       generator: torch.Generator | None) -> Tensor:
        """One absorbing step ``t -> s`` with remasking (ReMDM, Wang et al. 2025, its capped schedule): a visible
        token is masked again with probability ``σ = min(remask, (1 − ᾱ_s) / ᾱ_t)``, and a masked one is revealed,
        drawn from ``exp(log_x0)``, with probability ``(ᾱ_s − (1 − σ) ᾱ_t) / (1 − ᾱ_t)``. Given the true x0 this keeps
        ``q(x_s | x0)`` (each token visible with probability ``ᾱ_s``) for every ``σ`` in that range; at ``σ = 0`` it
        is the plain step. The last step (``ᾱ_0 = 1``) reveals every token and masks none."""
        like = torch.empty((*x_t.shape, 1), dtype=torch.float64, device=x_t.device)
        a_t, a_s = self._abar(t, like)[..., 0], self._abar(s, like)[..., 0]
        sigma = torch.minimum((1 - a_s) / a_t.clamp_min(TINY), torch.full_like(a_t, remask))
        reveal = (a_s - (1 - sigma) * a_t) / (1 - a_t)
        u = torch.rand(x_t.shape, generator=generator, device=x_t.device, dtype=torch.float64)
        masked = x_t == self.mask_id
        drawn = torch.where(u < reveal, _gumbel_sample(log_x0, generator), self.mask_id)
        return torch.where(masked, drawn, torch.where(u < sigma, self.mask_id, x_t))


class DiscretizedGaussian(Transition):
    """Ordinal noise (D3PM appendix A.2.1): mass moves to nearby categories, dense ``K x K`` matrices."""

    MAX_K = 256

    def __init__(self, K: int, betas: Tensor) -> None:
        if K > self.MAX_K:
            raise ValueError(f"the discretised Gaussian transition builds dense K x K matrices; K = {K} > {self.MAX_K}")
        super().__init__(K, betas)
        idx = torch.arange(K, dtype=torch.float64)
        diff = idx[None, :] - idx[:, None]
        n = torch.arange(-(K - 1), K, dtype=torch.float64)
        Q = []
        for beta in self.betas:
            w = torch.exp(-4 * diff**2 / ((K - 1) ** 2 * beta))
            w = w / torch.exp(-4 * n**2 / ((K - 1) ** 2 * beta)).sum()
            w.fill_diagonal_(0)
            Q.append(w + torch.diag(1 - w.sum(1)))
        self.Q = torch.stack(Q)  # (T, K, K), Q[t-1] is Q_t
        bars = [torch.eye(K, dtype=torch.float64)]
        for q in self.Q:
            bars.append(bars[-1] @ q)
        self.Q_bar = torch.stack(bars)  # (T + 1, K, K), Q_bar[s] = Q_1 ... Q_s
        self._products: dict[tuple[int, int], Tensor] = {}

    def _between(self, s: int, t: int) -> Tensor:
        """``Q_{s+1} ... Q_t`` (other than ``Q̄_t`` and ``Q_t`` computed once and cached)."""
        if s == 0:
            return self.Q_bar[t]
        if t == s + 1:
            return self.Q[s]
        if (s, t) not in self._products:
            m = torch.eye(self.K, dtype=torch.float64)
            for q in self.Q[s:t]:
                m = m @ q
            self._products[(s, t)] = m
        return self._products[(s, t)]

    def marginal(self, p: Tensor, s: Tensor) -> Tensor:
        bars = self._table("Q_bar", p.device)[s].to(p.dtype)  # (B, K, K)
        return torch.bmm(p.reshape(len(p), -1, self.K), bars).reshape(p.shape)

    def likelihood(self, x_t: Tensor, t: Tensor) -> Tensor:
        """``Q̄_t[k, x_t]`` for every ``k``, gathered on the device (no host sync)."""
        return self._table("Q_bar", x_t.device)[_per_sample(t, x_t), :, x_t]

    def column(self, x_t: Tensor, s: Tensor | None, t: Tensor) -> Tensor:
        """One step (``s`` is ``None``): a gather from ``Q_t`` on the device, no host sync (the training loss).
        Other pairs (sampling and the ELBO with skipped steps) read ``s`` and ``t`` on the host."""
        if s is None:
            return self._table("Q", x_t.device)[_per_sample(t - 1, x_t), :, x_t]
        pairs = {(int(a), int(b)) for a, b in zip(s.tolist(), t.tolist())}
        mats = {pair: self._between(*pair).to(x_t.device) for pair in pairs}
        out = torch.empty((*x_t.shape, self.K), dtype=torch.float64, device=x_t.device)
        for (a, b), m in mats.items():
            rows = (s == a) & (t == b)
            out[rows] = m.T[x_t[rows]]  # m[k, x_t] for every k
        return out

    def stationary(self) -> Tensor:
        return torch.full((self.K,), 1.0 / self.K)  # doubly stochastic Q_t: the uniform is stationary


TRANSITIONS: dict[str, type[Transition]] = {
    "uniform": Uniform, "absorbing": Absorbing, "gaussian": DiscretizedGaussian,
}


# -------------------------------------------------------------------- process
def _gumbel_sample(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64).clamp_(1e-30, 1.0)
    return (logits.double() - torch.log(-torch.log(u))).argmax(-1)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (it divides the model's logits; a small value such as 0.1 "
                         f"is near-greedy), got {temperature}")


def _check_min_p(min_p: float) -> None:
    if not 0 <= min_p <= 1:
        raise ValueError(f"min_p must be in [0, 1] (a share of each token's most likely class), got {min_p}")


def _check_remask(remask: float, transition: Transition) -> None:
    if not 0 <= remask <= 1:
        raise ValueError(f"remask must be in [0, 1] (the most a visible token is masked again in a step), got {remask}")
    if remask and not isinstance(transition, Absorbing):
        raise ValueError(f"remask={remask}: remasking is for the absorbing transition; this model's is "
                         f"{type(transition).__name__.lower()}")


def random_known(x0: Tensor, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """Known parts for infilling training: bool ``x0``'s shape ``(B, *S)``.

    A share ``rate`` of the samples get one: half of them scattered tokens (each known with
    probability ``u ~ U(0, 1)``), half everything outside one hidden run of the flattened tokens
    (random start and length; a prompt when the run reaches the end). The others get none.
    """
    B, N = len(x0), x0[0].numel()

    def draw(*shape: int) -> Tensor:
        return torch.rand(shape, device=x0.device, generator=generator)

    chosen, scattered, u = draw(B, 1) < rate, draw(B, 1) < 0.5, draw(B, 1)
    run = (draw(B, 1) * N).long().clamp_max(N - 1) + 1  # hidden tokens, 1..N
    start = (draw(B, 1) * (N - run + 1)).long().clamp_max(N - run)
    pos = torch.arange(N, device=x0.device)
    outside_run = (pos < start) | (pos >= start + run)
    known = torch.where(scattered, draw(B, N) < u, outside_run) & chosen
    return known.reshape(x0.shape)


class D3PM:
    """The categorical process, its hybrid loss, negative-ELBO estimate and (skip-step) ancestral sampler."""

    def __init__(self, transition: Transition, hybrid_lambda: float = 0.01) -> None:
        self.transition, self.hybrid_lambda = transition, hybrid_lambda
        self.K, self.T = transition.K, transition.T

    def check_tokens(self, x: Tensor, name: str = "x0") -> Tensor:
        """``x`` as int64 where it holds data tokens: integers (of any width) in ``[0, K)``, the absorbing chain's
        mask token ``K - 1`` excluded; else a ``ValueError`` naming ``name`` (a host read: for evaluation and
        sampling, not the training step)."""
        data = self.K - isinstance(self.transition, Absorbing)
        if x.is_floating_point() or x.dtype == torch.bool:
            raise ValueError(f"{name}: integer token ids, got {x.dtype}")
        if x.numel() and not x.is_meta and not bool(((x >= 0) & (x < data)).all()):
            raise ValueError(f"{name}: token ids in [0, {data}) (the data's categories"
                             f"{'; the mask token is ' + str(data) if data < self.K else ''}), got "
                             f"{int(x.min())}..{int(x.max())}")
        return x.long()

    # -- closed forms
    def q_probs(self, x0: Tensor, t: Tensor) -> Tensor:
        """``q(x_t | x_0)`` ``(B, *S, K)`` (float64)."""
        return self.transition.marginal_of_tokens(x0, t)

    def q_sample(self, x0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``x_t ~ q(x_t | x_0)`` ``(B, *S)`` for token ids ``x0``."""
        return self.transition.sample_marginal(x0, t, generator)

    def posterior_log_probs(self, x_t: Tensor, x0_log_probs: Tensor, s: Tensor | None, t: Tensor) -> Tensor:
        """``log q(x_s | x_t, x_0)`` for a one-hot ``exp(x0_log_probs)``, or the model's reverse step
        ``log p(x_s | x_t) = log Σ_x̃0 q(x_s | x_t, x̃0) p̃(x̃0)`` for predicted log-probabilities (normalised:
        :meth:`model_log_probs`); float64."""
        return self.transition.posterior_log_probs(x_t, x0_log_probs, s, t)

    def model_log_probs(self, logits: Tensor, temperature: float = 1.0, min_p: float = 0.0) -> Tensor:
        """``log p̃(x_0 | x_t)`` ``(B, *S, K)`` float64 from the model's logits divided by ``temperature``
        (> 0; 0 is an error, not argmax: a small value such as 0.1 is near-greedy); the absorbing mask is
        never a data token. ``min_p`` (min-p truncation, Nguyen et al. 2024): each token's classes less likely than
        ``min_p`` times its most likely one get probability 0, the rest renormalised (0: none dropped)."""
        _check_temperature(temperature)
        _check_min_p(min_p)
        if logits.ndim == 0 or logits.shape[-1] != self.K:
            raise ValueError(f"model logits: one per class of the K = {self.K} in the last dimension, got shape "
                             f"{tuple(logits.shape)}")
        logits = logits.double() / temperature
        if isinstance(self.transition, Absorbing):
            logits = logits.clone()
            logits[..., self.transition.mask_id] = -math.inf
        log_p = torch.log_softmax(logits, dim=-1)
        if min_p == 0:
            return log_p
        rare = log_p < log_p.amax(-1, keepdim=True) + math.log(min_p)
        return torch.log_softmax(log_p.masked_fill(rare, -math.inf), dim=-1)

    # -- training
    def loss_terms(self, model: ModelFn, x0: Tensor, t: Tensor, generator: torch.Generator | None = None,
                   s: Tensor | None = None, known: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-sample ``(L_vb, CE)`` ``(B,)`` for the step ``t -> s`` (``None``: ``s = t - 1``), each a mean over
        tokens (nats), on one draw ``x_t ~ q(x_t | x_0)``. ``L_vb`` is ``KL(q(x_s | x_t, x_0) || p(x_s | x_t))``,
        or ``−log p(x_0 | x_t)`` at ``s = 0``. ``known`` (bool, ``x0``'s shape): tokens kept clean in ``x_t``
        that count 0 in both means (every token keeps the weight it has without them). No host sync (no ``.item()``,
        no boolean indexing)."""
        x_t = self.q_sample(x0, t, generator)
        if known is not None:
            x_t = torch.where(known, x0, x_t)
        log_x0 = self.model_log_probs(model(x_t, t))
        log_p = self.posterior_log_probs(x_t, log_x0, s, t)
        nll = -log_p.gather(-1, x0[..., None])[..., 0]
        last = _per_sample(_before(s, t) == 0, nll)
        vb = torch.where(last, nll, self.transition.posterior_kl(x_t, x0, log_p, s, t))
        ce = -log_x0.gather(-1, x0[..., None])[..., 0]
        if known is not None:
            vb, ce = vb.masked_fill(known, 0), ce.masked_fill(known, 0)
        return vb.flatten(1).mean(1), ce.flatten(1).mean(1)

    def loss(self, model: ModelFn, x0: Tensor, generator: torch.Generator | None = None,
             known: Tensor | None = None) -> Tensor:
        """Hybrid loss ``L_vb + λ·CE`` at a uniformly drawn t, per sample ``(B,)``; ``known`` as in
        :meth:`loss_terms` (infilling training: ``model`` is then told which tokens are known)."""
        t = torch.randint(1, self.T + 1, (len(x0),), device=x0.device, generator=generator)
        vb, ce = self.loss_terms(model, x0, t, generator, known=known)
        return (vb + self.hybrid_lambda * ce).float()

    def masked_diffusion_loss(self, model: ModelFn, x0: Tensor, generator: torch.Generator | None = None,
                              stratified: bool = False) -> Tensor:
        """Continuous-time masked diffusion (MDLM / MD4), absorbing only, per sample ``(B,)``.

        With ``α(u) = 1 − u``, each token is masked with probability ``u ~ U[0.001, 1)`` and the
        loss is ``(1/u) · Σ_masked CE / L``, an upper bound on the negative log-likelihood.
        The model sees time ``u·T`` (the matching discrete step of the ``jsd`` schedule).
        ``stratified``: the batch's times are ``(i + v) / B`` for one ``v ~ U(0, 1)`` (MDLM's
        low-discrepancy draw; each is still uniform, so the loss stays unbiased, with less variance).
        """
        if not isinstance(self.transition, Absorbing):
            raise ValueError("the masked-diffusion objective needs the absorbing transition")
        B = len(x0)
        u = uniform_times(B, x0.device, generator, stratified).clamp_min(1e-3)
        masked = torch.rand(x0.shape, device=x0.device, generator=generator) < _per_sample(u, x0)
        x_t = torch.where(masked, torch.full_like(x0, self.transition.mask_id), x0)
        ce = -self.model_log_probs(model(x_t, u * self.T)).gather(-1, x0[..., None])[..., 0]
        return ((ce * masked).flatten(1).sum(1) / u / x0[0].numel()).float()

    # -- likelihood
    @torch.no_grad()
    def elbo_bits(self, model: ModelFn, x0: Tensor, steps: int | None = None, generator: torch.Generator | None = None,
                  progress: bool = False) -> Tensor:
        """Negative ELBO per sample in bits per token ``(B,)`` of the ``steps``-step chain that
        :meth:`sample` runs (default all T) on times ``T = τ_S > … > τ_1 > τ_0 = 0``:
        ``KL(q(x_T|x_0) || stationary) + Σ_{i≥2} KL(q(x_{τ_{i-1}}|x_{τ_i},x_0) || p(x_{τ_{i-1}}|x_{τ_i})) − log p(x_0|x_{τ_1})``.
        Every term is kept (none is subsampled), but each is evaluated on one draw ``x_t ~ q(x_t | x_0)``:
        an unbiased one-sample Monte Carlo estimate of the bound, not its exact value. One model call per step."""
        x0 = self.check_tokens(x0)
        B, tokens = len(x0), x0[0].numel()
        T_all = torch.full((B,), self.T, device=x0.device)
        log_prior = self.transition.stationary().double().to(x0.device).clamp_min(TINY).log()
        log_qT = self.q_probs(x0, T_all).clamp_min(TINY).log()
        total = _kl(log_qT, log_prior.expand_as(log_qT)).flatten(1).sum(1)
        for t_now, t_next in tqdm(self.grid(steps), desc="ELBO", disable=not progress, leave=False):
            t = torch.full((B,), t_now, device=x0.device)
            s = None if t_next == t_now - 1 else torch.full_like(t, t_next)
            vb, _ = self.loss_terms(model, x0, t, generator, s=s)
            total = total + vb * tokens
        return (total / (tokens * LN2)).float()

    @torch.no_grad()
    def any_order_bits(self, model: ModelFn, x0: Tensor, generator: torch.Generator | None = None,
                       progress: bool = False, orders: int = 1) -> Tensor:
        """Continuous-time negative ELBO of an absorbing model in bits per token ``(B,)``, in its any-order form;
        with ``orders`` above 1, the tighter importance-weighted bound over that many orders.

        For ``L`` tokens, ``Σ_{m=1..L} (1/m) Σ_{j masked} −log p̃(x0_j | x_m)``, where ``x_m`` masks ``m`` of the
        tokens (the last ``m`` of one uniformly random order per sequence) and the model sees time ``(m/L)·T``.
        This is the ``T → ∞`` limit of :meth:`elbo_bits` for the linear masking schedule (the count masked at a
        uniform time is uniform on ``0..L``, and ``∫ (1/u) P(m | u) du = 1/m``), the bound of the model that
        unmasks one token per step in a random order (a mixture of autoregressive models over orders, so a
        valid bound on its NLL), with no two tokens revealed in the same step. Unbiased on one order;
        ``L`` model calls.

        With ``orders = K > 1``: ``−log (1/K) Σ_k p_k(x0)``, where ``p_k`` is the probability of revealing the
        tokens one at a time in the ``k``-th random order, each given those revealed before it (the same model
        calls; the token revealed at each step instead of the mean over the masked ones). The order is that
        mixture's latent variable, drawn from its prior, so this is the importance-weighted bound (Burda et al.
        2016): still an upper bound on the mixture's NLL in expectation, at most the ELBO above, and tighter as
        ``K`` grows. ``K·L`` model calls."""
        if not isinstance(self.transition, Absorbing):
            raise ValueError("the any-order bound is for the absorbing transition")
        if not (is_whole(orders) and orders >= 1):
            raise ValueError(f"orders: a whole number of random orders >= 1, got {orders!r}")
        x0 = self.check_tokens(x0)
        B, L = len(x0), x0[0].numel()
        flat = x0.reshape(B, L)
        paths = torch.zeros(orders, B, dtype=torch.float64, device=x0.device)  # −log p_k(x0), nats
        total = torch.zeros(B, dtype=torch.float64, device=x0.device)
        for k in range(orders):
            order = torch.rand(B, L, device=x0.device, generator=generator).argsort(1)  # positions, first revealed
            rank = order.argsort(1)
            for m in tqdm(range(L, 0, -1), desc="ELBO", disable=not progress, leave=False):
                masked = rank >= L - m  # the last m of the order
                x_m = torch.where(masked, self.transition.mask_id, flat).reshape(x0.shape)
                t = torch.full((B,), m * self.T / L, device=x0.device)
                ce = -self.model_log_probs(model(x_m, t)).reshape(B, L, -1).gather(-1, flat[..., None])[..., 0]
                total = total + (ce * masked).sum(1) / m
                paths[k] += ce.gather(1, order[:, L - m : L - m + 1])[:, 0]  # the token revealed from x_m
        nats = total if orders == 1 else -(torch.logsumexp(-paths, 0) - math.log(orders))
        return (nats / (L * LN2)).float()

    def grid(self, steps: int | None = None) -> list[tuple[int, int]]:
        """The ``(t, s)`` pairs of a ``steps``-step chain from ``T`` to 0, evenly spaced (default: every step)."""
        steps = steps or self.T
        if not 1 <= steps <= self.T:
            raise ValueError(f"steps must be between 1 and the process's {self.T} timesteps, got {steps}")
        times = torch.linspace(self.T, 0, steps + 1).round().long().tolist()
        return list(zip(times[:-1], times[1:]))

    # -- sampling
    @torch.no_grad()
    def sample(
        self,
        model: ModelFn,
        shape: tuple[int, ...],
        steps: int | None = None,
        temperature: float = 1.0,
        known: Known | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        device: torch.device | str | None = None,
        min_p: float = 0.0,
        remask: float = 0.0,
    ) -> Tensor:
        """Ancestral sampling of int64 tokens ``shape`` over ``steps`` evenly spaced times (default all T).

        From ``t`` to ``s < t`` it draws from ``p(x_s | x_t)`` built with ``q(x_t | x_s)``, so
        skipping steps needs no retraining. ``temperature`` (> 0) divides the model's x0 logits, and ``min_p``
        drops each token's unlikely classes (:meth:`model_log_probs`). ``remask`` (absorbing only; 0: none) lets a
        step mask visible tokens again, so that a later step redraws them in a fuller context
        (:meth:`Absorbing.remasking_step`).
        ``known`` (a :class:`multigen.samplers.Known`: bool ``mask`` broadcastable to ``shape``, int64
        ``values``) fixes those tokens: the model sees them clean at every level, and they are returned
        bit-exactly. Clean is exact for absorbing (the x0 posterior of a masked token depends only on the
        visible ones). A uniform or discretised-Gaussian model trained without known parts reads them as
        possibly noisy; one trained with them (``loss(..., known=)``) should also be told which they are:
        pass ``model`` with the mask bound (the domain does). Showing the known tokens drawn from
        ``q(x_t | values)`` instead (RePaint's way for Gaussian data) was measured worse (``benchmarks/RESULTS.md``).
        """
        grid = self.grid(steps)
        _check_temperature(temperature)
        _check_min_p(min_p)
        _check_remask(remask, self.transition)
        if device is None:  # a module's device; a plain function's: the CPU (give device= for another)
            device = next(model.parameters()).device if isinstance(model, torch.nn.Module) else torch.device("cpu")
        B = shape[0]
        x = _gumbel_sample(self.transition.stationary().double().clamp_min(TINY).log().to(device).expand(*shape, -1),
                           generator)
        if known is not None:
            known.check(shape)
            mask = known.mask.to(device).bool()
            values = known.values_for(shape).to(device)
            if not values.is_meta:  # (a boolean index has no shape there)
                self.check_tokens(values[mask.expand(shape)], "known.values")
        for t_now, t_next in tqdm(grid, desc="sample", disable=not progress, leave=False):
            t = torch.full((B,), t_now, device=device)
            if known is not None:
                x = torch.where(mask, values, x)
            log_x0 = self.model_log_probs(model(x, t), temperature, min_p)
            s = None if t_next == t_now - 1 else torch.full_like(t, t_next)
            x = (self.transition.remasking_step(x, log_x0, torch.full_like(t, t_next), t, remask, generator) if remask
                 else _gumbel_sample(self.posterior_log_probs(x, log_x0, s, t), generator))
        return x if known is None else torch.where(mask, values, x)
