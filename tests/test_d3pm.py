"""D3PM closed forms against a dense-matrix reference, Bayes by enumeration, ELBO limits, sampling."""

import math
import types

import pytest
import torch
import torch.nn.functional as F

from discrete.d3pm import D3PM, Absorbing, DiscretizedGaussian, Uniform, d3pm_betas, random_known
from multigen.samplers import Known

from .conftest import device_generator

K, T = 5, 10


def dense_Q(kind: str, K: int, betas: torch.Tensor) -> torch.Tensor:
    """Reference one-step matrices ``(T, K, K)``, built entry by entry."""
    eye = torch.eye(K, dtype=torch.float64)
    if kind == "uniform":
        return torch.stack([(1 - b) * eye + b / K for b in betas])
    if kind == "absorbing":
        to_mask = torch.zeros(K, K, dtype=torch.float64)
        to_mask[:, K - 1] = 1
        return torch.stack([(1 - b) * eye + b * to_mask for b in betas])
    return torch.stack([discretized_gaussian_Q(K, float(b)) for b in betas])


def discretized_gaussian_Q(K: int, beta: float) -> torch.Tensor:
    """D3PM (Austin et al., 2021), appendix A.2.2, entry by entry: for ``i != j``
    ``[Q]_ij = exp(-4 (i-j)² / ((K-1)² β)) / Σ_{n=-(K-1)}^{K-1} exp(-4 n² / ((K-1)² β))``, and
    ``[Q]_ii = 1 - Σ_{l != i} [Q]_il``."""
    norm = sum(math.exp(-4 * n * n / ((K - 1) ** 2 * beta)) for n in range(-(K - 1), K))
    Q = [[math.exp(-4 * (i - j) ** 2 / ((K - 1) ** 2 * beta)) / norm if i != j else 0.0 for j in range(K)]
         for i in range(K)]
    for i in range(K):
        Q[i][i] = 1 - sum(Q[i])
    return torch.tensor(Q, dtype=torch.float64)


def product(Q: torch.Tensor, s: int, t: int) -> torch.Tensor:
    """``Q_{s+1} ... Q_t``."""
    m = torch.eye(Q.shape[1], dtype=torch.float64)
    for q in Q[s:t]:
        m = m @ q
    return m


CASES = {
    "uniform": (Uniform, "cosine"),
    "absorbing": (Absorbing, "jsd"),
    "gaussian": (DiscretizedGaussian, "linear"),
}


def build(kind: str, K: int = K, T: int = T) -> tuple[D3PM, torch.Tensor]:
    cls, schedule = CASES[kind]
    betas = d3pm_betas(schedule, T)
    return D3PM(cls(K, betas)), dense_Q(kind, K, betas)


@pytest.mark.parametrize("kind", list(CASES))
def test_closed_forms_equal_dense_reference(kind):
    process, Q = build(kind)
    assert torch.allclose(Q.sum(-1), torch.ones(T, K, dtype=torch.float64))
    x = torch.arange(K).repeat(2)[None]  # every category as x_0 and as x_t
    for s, t in [(0, 1), (2, 3), (0, T), (T - 1, T), (3, 7), (1, T)]:
        st, tt = torch.tensor([s]), torch.tensor([t])
        # q(x_t | x_0): rows of Q̄_t
        assert torch.allclose(process.q_probs(x, tt)[0], product(Q, 0, t)[x[0]], atol=1e-12)
        # q(x_t | x_s = k) for all k: columns of Q_{s+1}..Q_t
        assert torch.allclose(process.transition.column(x, st, tt)[0], product(Q, s, t)[:, x[0]].T, atol=1e-12)


@pytest.mark.parametrize("kind", list(CASES))
def test_posterior_is_bayes_by_enumeration(kind):
    process, Q = build(kind)
    for s, t in [(0, 1), (4, 5), (T - 1, T), (2, 8)]:
        bar_s, between, bar_t = product(Q, 0, s), product(Q, s, t), product(Q, 0, t)
        for x0 in range(K):
            for xt in range(K):
                if bar_t[x0, xt] == 0:
                    continue  # x_t impossible from this x_0
                expected = torch.tensor([between[k, xt] * bar_s[x0, k] / bar_t[x0, xt] for k in range(K)])
                got = process.posterior_log_probs(
                    torch.tensor([[xt]]), F.one_hot(torch.tensor([[x0]]), K).double().log(), torch.tensor([s]),
                    torch.tensor([t]),
                ).exp()[0, 0]
                assert torch.allclose(got, expected, atol=1e-9), (s, t, x0, xt)
                assert abs(float(got.sum()) - 1) < 1e-9


@pytest.mark.parametrize("kind", list(CASES))
def test_model_reverse_step_mixes_posteriors_over_predicted_x0(kind):
    process, Q = build(kind)
    g = torch.Generator().manual_seed(0)
    for s, t in [(0, 1), (3, 4), (2, 9)]:
        p = torch.softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)
        if kind == "absorbing":
            p[K - 1] = 0
            p /= p.sum()
        bar_s, between, bar_t = product(Q, 0, s), product(Q, s, t), product(Q, 0, t)
        for xt in range(K):
            expected = torch.zeros(K, dtype=torch.float64)
            for x0 in range(K):
                if bar_t[x0, xt] > 0:
                    expected += p[x0] * torch.tensor([between[k, xt] * bar_s[x0, k] / bar_t[x0, xt] for k in range(K)])
            got = process.posterior_log_probs(torch.tensor([[xt]]), p[None, None].log(), torch.tensor([s]),
                                              torch.tensor([t]))
            assert torch.allclose(got.exp()[0, 0], expected / expected.sum(), atol=1e-9)


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_fused_mixture_posterior_equals_generic_bayes_with_gradients(kind):
    """The fused O(K) reverse step equals the generic Bayes formula in value and gradient."""
    from discrete.d3pm import Transition

    process, _ = build(kind, K=7, T=50)
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([1, 2, 17, 49, 50])
    s = torch.tensor([0, 1, 3, 48, 20])
    x_t = process.q_sample(torch.randint(0, 6, (5, 11), generator=g), t, g)
    logits = torch.randn(5, 11, 7, dtype=torch.float64, generator=g, requires_grad=True)
    outs = []
    for fn in (process.transition.posterior_log_probs,
               lambda *a: Transition.posterior_log_probs(process.transition, *a)):
        out = fn(x_t, process.model_log_probs(logits), s, t)
        (grad,) = torch.autograd.grad((out.exp() * torch.arange(7.0)).sum(), logits)
        outs.append((out.exp(), grad))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-12)
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-9)


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_three_number_posterior_and_its_kl_equal_the_dense_forms(kind):
    """``c π + u [k = x_t] + v [k = x_0]`` is the posterior; the KL from it equals the KL of dense vectors."""
    from discrete.d3pm import Transition, _kl

    process, _ = build(kind, K=6, T=40)
    tr = process.transition
    g = torch.Generator().manual_seed(2)
    t = torch.tensor([2, 5, 17, 39, 40, 40])
    s = torch.tensor([1, 0, 9, 38, 39, 1])
    x0 = torch.randint(0, 5, (6, 30), generator=g)
    x0[:, :5] = torch.arange(5)
    x_t = process.q_sample(x0, t, g)
    x_t[:4, :3] = x0[:4, :3]  # x_t = x_0 (possible for t < T: every transition keeps a token with some probability)
    c, u, v = tr.posterior_of_tokens(x_t, x0, s, t)
    dense = c[..., None] * tr.pi + u[..., None] * F.one_hot(x_t, 6) + v[..., None] * F.one_hot(x0, 6)
    exact = Transition.posterior_log_probs(tr, x_t, F.one_hot(x0, 6).double().log(), s, t).exp()
    assert torch.allclose(dense, exact, atol=1e-12)
    log_p = torch.log_softmax(torch.randn(6, 30, 6, dtype=torch.float64, generator=g), -1)
    assert torch.allclose(tr.posterior_kl(x_t, x0, log_p, s, t), _kl(exact.clamp_min(1e-300).log(), log_p), atol=1e-10)


@pytest.mark.parametrize("kind", list(CASES))
def test_q_sample_draws_from_q_probs(kind):
    process, _ = build(kind, K=6, T=20)
    g = torch.Generator().manual_seed(3)
    x0 = torch.arange(6).repeat(20000, 1)  # every category, 20k draws each
    t = torch.full((20000,), 7)
    freq = F.one_hot(process.q_sample(x0, t, g), 6).double().mean(0)
    expected = process.q_probs(x0[:1], t[:1])[0]
    assert (freq - expected).abs().max() < 4 * (0.25 / 20000) ** 0.5  # 4 standard errors at worst p = 1/2


def test_marginal_at_T_is_stationary():
    x0 = torch.arange(K)[None]
    absorbing, _ = build("absorbing")
    assert torch.equal(absorbing.q_probs(x0, torch.tensor([T]))[0], F.one_hot(torch.full((K,), K - 1), K).double())
    uniform, _ = build("uniform", T=100)
    assert torch.allclose(uniform.q_probs(x0, torch.tensor([100]))[0], torch.full((K, K), 1 / K, dtype=torch.float64),
                          atol=1e-3)
    gaussian, Q = build("gaussian", T=100)
    assert torch.allclose(Q.sum(1), torch.ones(100, K, dtype=torch.float64))  # doubly stochastic
    assert torch.allclose(gaussian.q_probs(x0, torch.tensor([100]))[0], torch.full((K, K), 1 / K, dtype=torch.float64),
                          atol=1e-2)


def test_gaussian_rejects_large_vocabularies():
    with pytest.raises(ValueError, match="K = 300"):
        DiscretizedGaussian(300, d3pm_betas("linear", 4))


class LogitModel(torch.nn.Module):
    """A fixed predictor ``(x_t, t) -> logits``; a dummy parameter gives it a device."""

    def __init__(self, fn):
        super().__init__()
        self.fn, self.anchor = fn, torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return self.fn(x, t)


@pytest.mark.parametrize("kind", list(CASES))
def test_kl_terms_nonnegative_and_perfect_predictor_elbo(kind):
    process, _ = build(kind)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, K - 1, (8, 16), generator=g)
    noisy = LogitModel(lambda x, t: torch.randn(*x.shape, K, generator=g))
    for t in range(1, T + 1):
        vb, ce = process.loss_terms(noisy, x0, torch.full((8,), t), g)
        assert (vb >= -1e-12).all() and (ce >= 0).all()
    oracle = LogitModel(lambda x, t: 50.0 * F.one_hot(x0, K).double())
    bits = process.elbo_bits(oracle, x0)
    prior = process.transition.stationary().double()
    q_T = process.q_probs(x0, torch.full((8,), T))
    terms = torch.where(q_T > 0, q_T * (q_T.clamp_min(1e-300).log() - prior.clamp_min(1e-300).log()), 0.0)
    prior_bits = terms.sum(-1).mean(-1) / math.log(2)
    # a perfect x0 predictor leaves only the prior term (0 for absorbing; tiny otherwise)
    assert torch.allclose(bits.double(), prior_bits, atol=1e-6)


def iid_posterior_model(process: D3PM, p: torch.Tensor) -> LogitModel:
    """The exact ``q(x_0 | x_t)`` of i.i.d. tokens with distribution ``p``: ``p(k) q(x_t | x_0 = k)``."""

    def logits(x, t):
        like = process.transition.column(x, torch.zeros_like(t), t)
        return (p.log() + like.clamp_min(1e-300).log()).float()

    return LogitModel(logits)


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_exact_predictor_samples_the_data_and_its_elbo_is_the_entropy(kind):
    process, _ = build(kind, T=20)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0 if kind == "absorbing" else 0.1], dtype=torch.float64)
    p = p[:K] / p[:K].sum()
    model = iid_posterior_model(process, p)
    g = torch.Generator().manual_seed(2)
    for steps in (20, 5):
        x = process.sample(model, (400, 50), steps=steps, generator=g)
        freq = torch.bincount(x.flatten(), minlength=K).double() / x.numel()
        assert (freq - p).abs().max() < 0.01, (steps, freq)  # 20 000 tokens: std of a frequency <= 0.0035
    x0 = torch.multinomial(p.float(), 64 * 64, replacement=True, generator=g).reshape(64, 64)
    nll = -p.log2()[x0].mean()  # -log2 p(x0) per token of this draw: the bound of the exact model, up to the prior
    for steps in (None, 7, 1):  # every step, skipping steps (the sampler's chain), one step
        bits = process.elbo_bits(model, x0, steps=steps, generator=torch.Generator().manual_seed(0))
        assert abs(bits.mean() - nll) < 0.03, steps


def test_joint_weighting_is_not_exact():
    """The D3PM paper's joint weighting q(x_s, x_t | x̃0) p̃ is biased for the exact posterior; ours is not."""
    process, _ = build("uniform", T=20)
    p = torch.tensor([0.6, 0.25, 0.1, 0.04, 0.01], dtype=torch.float64)
    model = iid_posterior_model(process, p)
    mix = process.posterior_log_probs  # ours

    def joint(x_t, x0_log_probs, s, t):
        s = t - 1 if s is None else s
        j = process.transition.column(x_t, s, t) * process.transition.marginal(x0_log_probs.exp(), s)
        return torch.log_softmax(j.log(), -1)

    g = torch.Generator().manual_seed(3)
    freqs = []
    for posterior in (mix, joint):
        process.posterior_log_probs = posterior
        x = process.sample(model, (400, 50), generator=g)
        freqs.append(torch.bincount(x.flatten(), minlength=K).double() / x.numel())
    del process.posterior_log_probs
    assert (freqs[0] - p).abs().max() < 0.01
    assert (freqs[1] - p).abs().max() > 0.05


@pytest.mark.parametrize("kind", ["uniform", "absorbing", "gaussian"])
@pytest.mark.parametrize("steps", [T, 3])
def test_infilling_keeps_given_tokens(kind, steps):
    """A ``Known`` (mask broadcast over the batch) is returned bit-exactly and the model sees it clean at every
    level (measured better than noising it to the level: benchmarks/RESULTS.md)."""
    process, _ = build(kind)
    g = torch.Generator().manual_seed(4)
    values = torch.randint(0, K - 1, (6, 30), generator=g)
    mask = torch.rand(30, generator=g) < 0.4
    seen = []
    model = LogitModel(lambda x, t: (seen.append(x.clone()), torch.randn(*x.shape, K, generator=g))[1])
    out = process.sample(model, (6, 30), steps=steps, known=Known(mask, values), generator=g)
    assert torch.equal(out[:, mask], values[:, mask]) and out.min() >= 0 and out.max() < K
    assert len(seen) == steps and all(torch.equal(x[:, mask], values[:, mask]) for x in seen)


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_known_tokens_stay_clean_in_the_loss_and_out_of_it(kind):
    """Infilling training: known tokens reach the model as ``x0`` at every level, and what the model says
    about them does not change the loss (they count 0)."""
    process, _ = build(kind)
    g = torch.Generator().manual_seed(7)
    x0 = torch.randint(0, K, (64, 20), generator=g)
    known = random_known(x0, 0.75, g)
    seen = []

    def predictor(garble: bool):
        def fn(x, t):
            seen.append(x.clone())
            logits = 4.0 * F.one_hot(x0, K).double()
            return torch.where(known[..., None] & garble, torch.randn(logits.shape, generator=g), logits)
        return LogitModel(fn)

    t = torch.randint(1, T + 1, (64,), generator=g)
    terms = [process.loss_terms(predictor(garble), x0, t, torch.Generator().manual_seed(8), known=known)
             for garble in (False, True)]
    assert all(torch.equal(x[known], x0[known]) for x in seen)
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[0][~known], x0[~known])
    for a, b in zip(*terms):
        assert torch.allclose(a, b)
    everything = torch.ones_like(known)
    vb, ce = process.loss_terms(predictor(True), x0, t, known=everything)
    assert torch.equal(vb, torch.zeros_like(vb)) and torch.equal(ce, torch.zeros_like(ce))


def test_random_known_parts():
    """``rate`` of the samples get a known part: scattered tokens or all but one hidden run; the rest none."""
    x0 = torch.zeros(4000, 24, dtype=torch.long)
    assert not random_known(x0, 0.0).any()
    known = random_known(x0, 0.5, torch.Generator().manual_seed(0))
    some = known.any(1)
    assert abs(some.float().mean().item() - 0.5) < 0.03
    hidden = ~known[some]
    first, last = hidden.float().argmax(1), 23 - hidden.flip(1).float().argmax(1)
    runs = (hidden.sum(1) == last - first + 1) & hidden.any(1)  # the hidden tokens are one contiguous run
    assert 0.5 < runs.float().mean().item() < 0.8  # every run-type part, and scattered ones that happen to be runs
    prompts = runs & (last == 23)
    assert prompts.any()
    grids = random_known(torch.zeros(8, 4, 6, dtype=torch.long), 1.0)
    assert grids.shape == (8, 4, 6) and grids.dtype == torch.bool
    # E[hidden tokens] = (scattered: N / 2 + a run uniform on 1..N: (N + 1) / 2) / 2 = 12.25 for N = 24
    hidden = (~random_known(torch.zeros(40_000, 24, dtype=torch.long), 1.0, torch.Generator().manual_seed(1)))
    assert abs(hidden.sum(1).double().mean().item() - 12.25) < 0.15  # 4 standard errors


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_the_hybrid_loss_is_vb_plus_lambda_ce_at_a_step_uniform_on_1_to_T(kind):
    """``loss`` draws t uniformly on {1..T} from the generator, then takes ``L_vb + λ CE`` of :meth:`loss_terms`
    on that draw: replayed with the same generator, the two agree exactly, for two values of λ."""
    process, _ = build(kind)
    x0 = torch.randint(0, K - 1, (64, 6), generator=torch.Generator().manual_seed(0))
    w = torch.randn(K, K, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = LogitModel(lambda x, t: w[x] + t.double()[:, None, None] / T)
    for lam in (0.01, 1.0):
        process.hybrid_lambda = lam
        loss = process.loss(model, x0, torch.Generator().manual_seed(2))
        g = torch.Generator().manual_seed(2)
        t = torch.randint(1, T + 1, (len(x0),), generator=g)
        vb, ce = process.loss_terms(model, x0, t, g)
        torch.testing.assert_close(loss, (vb + lam * ce).float(), rtol=0, atol=0)
    assert (ce > 0).all() and (vb > 0).any()


@pytest.mark.parametrize("stratified", [True, False])
def test_masked_diffusion_loss_is_an_upper_bound_scale(stratified):
    process, _ = build("absorbing", T=100)
    x0 = torch.randint(0, K - 1, (256, 32), generator=torch.Generator().manual_seed(5))
    uniform = LogitModel(lambda x, t: torch.zeros(*x.shape, K))
    loss = process.masked_diffusion_loss(uniform, x0, torch.Generator().manual_seed(6), stratified=stratified).mean()
    # E_u[(1/u) · u · log(K-1)] = log(K-1) nats per token for a uniform predictor
    assert abs(float(loss) - math.log(K - 1)) < 0.1
    with pytest.raises(ValueError, match="absorbing"):
        build("uniform")[0].masked_diffusion_loss(uniform, x0)


def test_stratified_times_lower_the_batch_loss_variance():
    """MDLM's low-discrepancy draw keeps the loss's mean (above) and shrinks the spread of batch means
    when the loss depends on the time: here the model's cross-entropy grows with t."""
    process, _ = build("absorbing", T=100)
    x0 = torch.randint(1, K - 1, (16, 256), generator=torch.Generator().manual_seed(5))

    def unsure_late(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*x.shape, K)
        logits[..., 0] = 8 * t[:, None] / 100  # category 0 never occurs: more mass on it costs more
        return logits

    g = torch.Generator().manual_seed(7)
    spread = {s: torch.stack([process.masked_diffusion_loss(LogitModel(unsure_late), x0, g, stratified=s).mean()
                              for _ in range(40)]).std().item() for s in (True, False)}
    assert spread[True] < 0.5 * spread[False]


def test_the_any_order_bound_asks_the_model_at_the_time_of_its_masked_share():
    """``any_order_bits`` shows the model ``x`` with ``m`` of ``L`` tokens masked at time ``m / L · T`` (where the jsd
    chain masks that share), once for each ``m`` in ``1..L``; a model that ignores ``t`` cannot tell."""
    T, V, L = 50, 3, 5
    process = D3PM(Absorbing(V + 1, d3pm_betas("jsd", T)))
    seen = []

    def model(x, t):
        seen.append(((x == V).sum(1).double(), t.double()))
        return torch.zeros(*x.shape, V + 1, dtype=torch.float64)

    x0 = torch.randint(0, V, (3, L), generator=torch.Generator().manual_seed(0))
    process.any_order_bits(model, x0, generator=torch.Generator().manual_seed(1))
    for masked, t in seen:
        torch.testing.assert_close(t, masked * T / L)
    assert sorted(int(masked[0]) for masked, _ in seen) == list(range(1, L + 1))


def test_any_order_bound_is_its_enumerated_value_and_the_limit_of_the_chains():
    """Absorbing, 4 tokens of 3 symbols: a predictor that reads every visible token (and not the time). The any-order
    estimate, averaged over orders, equals its definition summed over every masked subset, ``Σ_m (1/m) mean over
    m-subsets of Σ_masked CE``; the T-step chain's bound falls to it as T grows (two tokens revealed in one step are
    predicted independently, which costs what they tell of each other)."""
    import itertools

    L, V = 4, 3  # K = V + 1 with the mask
    process, _ = build("absorbing", K=V + 1, T=100)
    weights = torch.randn(L, V + 1, L, V + 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2

    def logits(x, t):  # position j's logits: sum over positions i of weights[i, x_i, j]
        return torch.einsum("bik,ikjc->bjc", F.one_hot(x, V + 1).double(), weights)

    model = LogitModel(logits)
    x0 = torch.tensor([[0, 2, 1, 1]])
    exact = 0.0
    for m in range(1, L + 1):
        subsets = list(itertools.combinations(range(L), m))
        for subset in subsets:
            masked = torch.zeros(1, L, dtype=torch.bool)
            masked[0, list(subset)] = True
            ce = -process.model_log_probs(logits(torch.where(masked, V, x0), None)).gather(-1, x0[..., None])[..., 0]
            exact += float(ce[masked].sum()) / m / len(subsets)
    exact /= L * math.log(2)
    many = x0.expand(4000, L)
    g = torch.Generator().manual_seed(4)
    estimate = process.any_order_bits(model, many, generator=g).double()
    assert abs(estimate.mean().item() - exact) < 4 * estimate.std().item() / 4000**0.5, (estimate.mean(), exact)
    chain = {T: process.elbo_bits(model, many, steps=T, generator=g).mean().item() for T in (2, 100)}
    assert chain[2] > exact + 0.2, (chain, exact)  # 5.45 against 5.05: pairs revealed together
    assert abs(chain[100] - exact) < 0.06, (chain, exact)  # standard error 0.01
    with pytest.raises(ValueError, match="absorbing"):
        build("uniform")[0].any_order_bits(model, x0)


def test_the_bound_weighted_over_orders_tightens_to_the_mixtures_likelihood():
    """The same predictor: the model that reveals one token per step in a uniformly random order has likelihood
    ``(1/L!) Σ_σ p_σ(x0)``, enumerated here over the 24 orders. The importance-weighted bound over K orders
    (``orders=K``) is the ELBO in expectation at K = 1, falls as K grows, and reaches that likelihood."""
    import itertools

    L, V = 4, 3
    process, _ = build("absorbing", K=V + 1, T=100)
    weights = torch.randn(L, V + 1, L, V + 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2

    def logits(x, t):
        return torch.einsum("bik,ikjc->bjc", F.one_hot(x, V + 1).double(), weights)

    model = LogitModel(logits)
    x0 = torch.tensor([[0, 2, 1, 1]])
    paths = []
    for order in itertools.permutations(range(L)):  # reveal order[0] first: it is predicted with all masked
        nats = 0.0
        for k, j in enumerate(order):
            x = x0.clone()
            x[0, list(order[k:])] = V
            nats -= float(process.model_log_probs(logits(x, None))[0, j, x0[0, j]])
        paths.append(nats)
    paths = torch.tensor(paths, dtype=torch.float64)
    mixture = -(torch.logsumexp(-paths, 0) - math.log(len(paths))).item() / (L * math.log(2))
    elbo = paths.mean().item() / (L * math.log(2))
    assert elbo > mixture + 0.3, (elbo, mixture)  # the gap the weighting can close
    many = x0.expand(500, L)
    g = torch.Generator().manual_seed(5)
    bound = {K: process.any_order_bits(model, many, generator=g, orders=K).double() for K in (1, 2, 8, 200)}
    assert abs(bound[1].mean().item() - elbo) < 4 * bound[1].std().item() / 500**0.5
    # at K = 2 its expectation is the mean over pairs of orders of -log of their mean likelihood
    pairs = -(torch.logaddexp(-paths[:, None], -paths[None, :]) - math.log(2)).mean().item() / (L * math.log(2))
    assert abs(bound[2].mean().item() - pairs) < 4 * bound[2].std().item() / 500**0.5, (bound[2].mean(), pairs)
    # at K = 1 it is the any-order ELBO of the drawn order (the mean over the masked tokens), not one path's
    g = torch.Generator().manual_seed(9)
    rank = torch.rand(1, L, generator=g).argsort(1).argsort(1)
    by_hand = 0.0
    for m in range(1, L + 1):
        masked = rank >= L - m
        ce = -process.model_log_probs(logits(torch.where(masked, V, x0), None)).gather(-1, x0[..., None])[..., 0]
        by_hand += float(ce[masked].sum()) / m
    estimate = process.any_order_bits(model, x0, generator=torch.Generator().manual_seed(9)).item()
    assert estimate == pytest.approx(by_hand / (L * math.log(2)), rel=1e-6)
    assert elbo > bound[2].mean() > bound[8].mean() > bound[200].mean() > mixture - 0.005
    assert bound[200].mean().item() - mixture < 0.02, (bound[200].mean(), mixture)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="orders: a whole number"):
            process.any_order_bits(model, x0, orders=bad)


def _use_generic_posterior(process: D3PM) -> None:
    """Route ``process`` through the generic Bayes step instead of the fused mixture one."""
    from discrete.d3pm import Transition

    process.transition.posterior_log_probs = types.MethodType(Transition.posterior_log_probs, process.transition)


@pytest.mark.parametrize("path", ["fused", "generic"])
def test_confident_model_never_redraws_visible_tokens(path):
    """Issue 17, bug 1: absorbing, K = 6, T = 20, a model sure of token 1, then of token 0 from halfway (logit gap
    10), temperature 0.1. Visible tokens must stay as they are: 1 where unmasked early, 0 where late, no mask left.
    (With probabilities floored at 1e-30 the sampler redrew them uniformly: 67 masks left in 2 000 x 16 tokens.)"""
    process, _ = build("absorbing", K=6, T=20)
    if path == "generic":
        _use_generic_posterior(process)
    seen = []

    def logits(x, t):
        seen.append(x.clone())
        sure = torch.where(t > 10, 1, 0)  # token 1 for t > T/2, then token 0
        return 10.0 * F.one_hot(sure, 6)[:, None, :].float().expand(*x.shape, 6)

    out = process.sample(LogitModel(logits), (2000, 16), temperature=0.1, generator=torch.Generator().manual_seed(0))
    assert set(out.unique().tolist()) <= {0, 1}, torch.bincount(out.flatten(), minlength=6)
    for before, after in zip(seen, [*seen[1:], out]):
        visible = before != 5
        assert torch.equal(after[visible], before[visible])  # once unmasked, a token never changes
    share_ones = (out == 1).double().mean()
    assert 0.4 < share_ones < 0.6  # about half the tokens are unmasked while t > T/2 (jsd: masked share t/T)


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
@pytest.mark.parametrize("path", ["fused", "generic"])
def test_reverse_step_stays_bayes_when_the_model_underflows(kind, path):
    """Logits 2 000 apart: every other x0 probability is 0 in float64. The step is then the posterior of the
    predicted x0 where that x0 can produce x_t, else (absorbing, visible x_t) x_t itself; it sums to one."""
    process, Q = build(kind)
    if path == "generic":
        _use_generic_posterior(process)
    s, t = 3, 4
    bar_s, between, bar_t = product(Q, 0, s), product(Q, s, t), product(Q, 0, t)
    for sure in range(K - 1):
        log_x0 = process.model_log_probs(2000.0 * F.one_hot(torch.tensor([[sure]]), K))
        for xt in range(K):
            got = process.posterior_log_probs(torch.tensor([[xt]]), log_x0, torch.tensor([s]), torch.tensor([t])).exp()
            if bar_t[sure, xt] > 0:
                expected = torch.tensor([between[k, xt] * bar_s[sure, k] / bar_t[sure, xt] for k in range(K)])
            else:
                expected = F.one_hot(torch.tensor(xt), K).double()
            assert torch.allclose(got[0, 0], expected, atol=1e-12), (sure, xt, got)


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_a_model_with_another_number_of_classes_is_named_in_the_loss_and_the_sampler(kind):
    """Logits of K - 1 or K + 1 classes (a vocabulary off by one) are an error naming K and the shape, not a
    broadcast or an index error deep in the posterior."""
    process, _ = build(kind)
    x0 = torch.randint(0, K - 1, (2, 5), generator=torch.Generator().manual_seed(0))
    for classes in (K - 1, K + 1):
        model = lambda x, t, c=classes: torch.zeros(*x.shape, c)  # noqa: E731
        message = rf"model logits: one per class of the K = {K} in the last dimension, got shape \(2, 5, {classes}\)"
        with pytest.raises(ValueError, match=message):
            process.loss(model, x0)
        with pytest.raises(ValueError, match=message):
            process.sample(model, (2, 5))
    with pytest.raises(ValueError, match=r"got shape \(\)"):
        process.model_log_probs(torch.tensor(1.0))


def test_min_p_drops_each_tokens_unlikely_classes_and_renormalises_the_rest():
    process, _ = build("absorbing")
    logits = torch.randn(3, 7, K, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    p = torch.softmax(logits.clone().index_fill_(-1, torch.tensor([K - 1]), -math.inf) / 0.7, -1)
    for min_p in (0.05, 0.3, 1.0):
        kept = p * (p >= min_p * p.amax(-1, keepdim=True))
        got = process.model_log_probs(logits, temperature=0.7, min_p=min_p).exp()
        assert torch.allclose(got, kept / kept.sum(-1, keepdim=True), atol=1e-12, rtol=0), min_p
    assert torch.equal(process.model_log_probs(logits, 0.7, min_p=0.0), process.model_log_probs(logits, 0.7))
    assert (process.model_log_probs(logits, min_p=1.0).exp().amax(-1) == 1).all()  # the argmax alone (no ties)


def test_min_p_samples_the_exact_predictors_truncated_distribution():
    """Absorbing, the exact x0 predictor of i.i.d. tokens: each token is revealed once from ``p``, so with min-p the
    samples follow ``p`` without its classes below ``min_p`` times its largest, renormalised; the dropped class never
    appears, which it does without min-p."""
    process, _ = build("absorbing", T=20)
    p = torch.tensor([0.6, 0.34, 0.06, 0.0, 0.0], dtype=torch.float64)  # K = 5: four classes and the mask
    model = iid_posterior_model(process, p)
    g = torch.Generator().manual_seed(3)
    for min_p, expected in ((0.2, torch.tensor([0.6, 0.34, 0.0, 0.0, 0.0]) / 0.94), (0.0, p)):
        x = process.sample(model, (400, 50), steps=5, generator=g, min_p=min_p)
        freq = torch.bincount(x.flatten(), minlength=K).double() / x.numel()
        assert (freq - expected.double()).abs().max() < 0.01, (min_p, freq)  # 20 000 tokens
        assert (freq[2] == 0) == (min_p > 0)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="min_p must be in \\[0, 1\\]"):
            process.sample(model, (2, 3), min_p=bad)


def test_remasking_keeps_the_exact_predictors_distribution_and_masks_visible_tokens_again():
    """Absorbing, the exact x0 predictor of a correlated distribution over all 27 sequences of 3 tokens (3 classes):
    with remasking (ReMDM's capped schedule) visible tokens are masked again and redrawn, and the samples still
    follow the data, as they do without; given tokens stay; a non-absorbing chain or a value outside [0, 1] is
    refused."""
    import itertools

    L, V = 3, 3
    process, _ = build("absorbing", K=V + 1, T=200)
    seqs = torch.tensor(list(itertools.product(range(V), repeat=L)))  # (27, 3)
    p = torch.rand(len(seqs), generator=torch.Generator().manual_seed(1), dtype=torch.float64) ** 4
    p /= p.sum()
    calls = []

    def logits(x, t):  # p(x0_j = c | the visible tokens of x), by enumeration
        calls.append(x.clone())
        fits = ((x[:, None, :] == seqs) | (x[:, None, :] == V)).all(-1)  # (B, 27): agrees where visible
        w = fits * p
        post = torch.einsum("bs,sjc->bjc", w, F.one_hot(seqs, V + 1).double()) / w.sum(-1)[:, None, None]
        return post.clamp_min(1e-300).log()

    model = LogitModel(logits)
    index = lambda x: (x * torch.tensor([V * V, V, 1])).sum(-1)  # noqa: E731
    g = torch.Generator().manual_seed(2)
    for remask in (0.0, 0.2):
        calls.clear()
        x = process.sample(model, (20000, L), generator=g, remask=remask)
        freq = torch.bincount(index(x), minlength=len(seqs)).double() / len(x)
        assert 0.5 * (freq - p).abs().sum() < 0.02, (remask, 0.5 * (freq - p).abs().sum())  # sampling: ~0.01
        hidden_again = sum(int(((a != V) & (b == V)).sum()) for a, b in zip(calls, calls[1:]))
        assert (hidden_again > 0) == (remask > 0), (remask, hidden_again)
        # q(x_t | x0) kept: at step t the model sees each token visible with probability ᾱ_t (60 000 tokens)
        abar = process.transition.alpha_bar
        seen = torch.tensor([float((calls[i] != V).double().mean()) for i in range(0, 200, 10)])
        assert (seen - abar[200 - torch.arange(0, 200, 10)]).abs().max() < 0.01, (remask, seen)
    values = torch.tensor([[2, 0, 1]]).expand(50, L)
    known = Known(torch.tensor([True, False, True]).expand(50, L), values)
    out = process.sample(model, (50, L), known=known, generator=g, remask=0.5)
    assert torch.equal(out[:, [0, 2]], values[:, [0, 2]]) and (out != V).all()
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="remask must be in \\[0, 1\\]"):
            process.sample(model, (2, L), remask=bad)
    uniform, _ = build("uniform")
    with pytest.raises(ValueError, match="remask=0.1: remasking is for the absorbing transition; .* uniform"):
        uniform.sample(LogitModel(lambda x, t: torch.zeros(*x.shape, K)), (2, 3), remask=0.1)


def test_temperature_must_be_positive():
    process, _ = build("absorbing")
    model = LogitModel(lambda x, t: torch.zeros(*x.shape, K))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            process.sample(model, (2, 3), temperature=bad)


@pytest.mark.parametrize("kind", list(CASES))
@pytest.mark.parametrize("steps", [None, 3], ids=["all_steps", "skip_steps"])
def test_d3pm_sampling_elbo_and_losses_keep_to_the_device(device, kind, steps):
    """Every tensor is made on the device of the inputs: meta raises on a CPU-made one. On CUDA the training
    losses also run under ``torch.cuda.set_sync_debug_mode('error')``: no host sync in a training step."""
    if kind == "gaussian" and steps == 3 and device.type == "meta":
        pytest.skip("the dense transition reads skipped step pairs on the host (sampling and ELBO only)")
    process, _ = build(kind)
    model = LogitModel(lambda x, t: 3.0 * (x[..., None] == torch.arange(K, device=x.device)).float()).to(device)
    x0 = torch.randint(0, K - 1, (3, 7)).to(device)
    mask = (torch.arange(7) < 3).expand(3, 7).to(device)
    g = device_generator(device)
    out = process.sample(model, (3, 7), steps=steps, known=Known(mask, x0), generator=g)
    assert out.device == device and out.shape == (3, 7) and out.dtype == torch.long
    bits = process.elbo_bits(model, x0, steps=steps, generator=g)
    assert bits.device == device and bits.shape == (3,)
    if kind == "absorbing":
        for orders in (1, 2):
            bits = process.any_order_bits(model, x0, generator=g, orders=orders)
            assert bits.device == device and bits.shape == (3,)
        out = process.sample(model, (3, 7), steps=steps, known=Known(mask, x0), generator=g, remask=0.1)
        assert out.device == device and out.shape == (3, 7)
    losses = [lambda: process.loss(model, x0, g)]
    if kind == "absorbing":
        losses.append(lambda: process.masked_diffusion_loss(model, x0, g))
    for loss in losses:
        assert loss().device == device  # also fills the per-device tables
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("error")
            try:
                value = loss()
            finally:
                torch.cuda.set_sync_debug_mode(0)
            assert value.shape == (3,)


def test_the_masked_objective_never_asks_the_model_at_a_time_below_one_thousandth():
    """A stratified batch of 4096 puts its first time at ``v / 4096`` (below 1e-3 whatever ``v``); the objective
    floors it at 1e-3 (mask rate and 1/u weight alike), so the model sees ``t >= 1e-3 T`` and every per-sample
    loss of a uniform predictor stays below ``1000 log(K - 1)``."""
    process, _ = build("absorbing", T=100)
    seen = []

    def uniform(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        return torch.zeros(*x.shape, K)

    x0 = torch.randint(0, K - 1, (4096, 8), generator=torch.Generator().manual_seed(0))
    loss = process.masked_diffusion_loss(LogitModel(uniform), x0, torch.Generator().manual_seed(1), stratified=True)
    assert float(seen[0].min()) >= 1e-3 * 100 * (1 - 1e-6)
    assert torch.isfinite(loss).all() and float(loss.max()) <= 1000 * torch.log(torch.tensor(K - 1.0)) + 1e-3


@pytest.mark.parametrize("kind", ["uniform", "absorbing", "gaussian"])
def test_the_bound_and_the_sampler_refuse_tokens_outside_the_data(kind):
    """Ids outside the data's categories (for the absorbing chain, its mask token too) are errors naming the
    input: the bound of data holding the mask token came out at about 100 bits a token, silently."""
    process, _ = build(kind)
    data = K - (kind == "absorbing")
    model = LogitModel(lambda x, t: torch.zeros(*x.shape, K))
    for bad in (torch.full((2, 3), data), torch.full((2, 3), -1)):
        with pytest.raises(ValueError, match=rf"x0: token ids in \[0, {data}\)"):
            process.elbo_bits(model, bad)
        if kind == "absorbing":
            with pytest.raises(ValueError, match=rf"x0: token ids in \[0, {data}\)"):
                process.any_order_bits(model, bad)
        mask = torch.zeros(2, 3, dtype=torch.bool)
        mask[:, 0] = True
        with pytest.raises(ValueError, match=rf"known.values: token ids in \[0, {data}\)"):
            process.sample(model, (2, 3), known=Known(mask, bad), device="cpu")
    with pytest.raises(ValueError, match="x0: integer token ids, got torch.float32"):
        process.elbo_bits(model, torch.zeros(2, 3))
    assert torch.isfinite(process.elbo_bits(model, torch.full((2, 3), data - 1))).all()


def test_a_plain_function_samples_on_the_cpu_without_naming_a_device():
    """``sample``'s model is any ``model(x_t, t)``; a plain function (no parameters to read a device from) samples
    on the CPU unless ``device`` says otherwise (it failed on ``.parameters()``)."""
    process, _ = build("uniform")
    out = process.sample(lambda x, t: torch.zeros(*x.shape, K), (2, 3), generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3) and out.device.type == "cpu" and ((out >= 0) & (out < K)).all()
