"""D3PM cost: closed-form transitions against dense K x K matrices, and training throughput.

Part 1 times drawing from ``q(x_t | x_0)``, the posterior ``q(x_{t-1} | x_t, x_0)`` and the model's
reverse step ``p(x_{t-1} | x_t)`` (the posterior mixed over a predicted x0 distribution)
for a batch of tokens with our O(K) closed forms (uniform and absorbing) and with the
dense-matrix computation they replace (rows and columns of ``Q̄_t`` and ``Q_t``, and for
the reverse step the product of the x0 distribution with ``Q̄_{t-1}``; the posterior of a
token x0 is three numbers per token, which is what the loss's KL term uses), at several
vocabulary sizes K, with the peak memory of each (CUDA: allocator peak; CPU: the size
of the tensors each method materialises, computed from their shapes).

Part 2 (``--throughput``) measures training tokens per second of the shipped text
configs' transformer.

Part 3 (``--infill``) compares ways of showing the known part to the model while infilling:
clean at every level (the sampler's way) and drawn afresh from ``q(x_t | x_0)`` at each level
(RePaint's way for Gaussian data, proposed in issue 17; a wrapper around the model does it).
First with the exact x0 posterior of a small random joint distribution (4 tokens, K = 3, by
enumeration): total-variation distance of the infilled samples to the true conditional, next
to an oracle that is told the known token exactly. Then with the tiny text config trained with
the uniform transition per seed, plainly (clean or noised) and with known parts marked
(``process.infill_rate``): infill accuracy on held-out text (the share of generated characters
equal to the held-out truth), with scattered characters hidden and with one hidden run.

Part 4 (``--versus-ar``) is the autoregressive baseline: per seed, the default text config trained by the
trainer and the same transformer with a causal mask (same size, data, batch, steps, optimiser and EMA, unless
``--ar-override`` gives the twin the batch and steps where it does best), with held-out bits/char of both on the
same windows (the diffusion model's negative ELBO, the twin's exact NLL).

    python benchmarks/discrete.py [--device cpu|cuda] [--vocab 27 256 8192] [--tokens 16384] [--throughput]
    python benchmarks/discrete.py --skip-transitions --infill [--seeds 0 1 2] [--train-steps 4000] [--infill-rate 0.5]
    python benchmarks/discrete.py --skip-transitions --versus-ar --seeds 0 1 [--override train.max_steps=900 ...] \
        [--ar-override train.batch_size=32 train.max_steps=1000 train.warmup_steps=100 train.lr=2e-3 \
         train.lr_decay=none "train.adam_betas=[0.9,0.999]" train.grad_clip=1 train.optimizer=muon model.mlp=gelu]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
# This script shares its name with the package it measures: import the package, not the script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

from discrete.d3pm import D3PM, Absorbing, DiscretizedGaussian, Uniform, d3pm_betas  # noqa: E402
from discrete.domain import Discrete, DiscreteConfig, mean_and_stderr  # noqa: E402
from discrete.model import SequenceTransformer  # noqa: E402
from multigen.benchmarking import json_path, markdown_table, timed, write_results  # noqa: E402
from multigen.cli import available_device, positive_int  # noqa: E402
from multigen.config import ConfigError, load_config, replaced  # noqa: E402
from multigen.domain import check_count  # noqa: E402
from multigen.train import resolve_config_file  # noqa: E402


def dense_matrices(process: D3PM, t: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Q̄_{t-1}``, ``Q_t``, ``Q̄_t`` as dense K x K float64 matrices built on ``device`` (what the closed forms
    avoid)."""
    tr = process.transition
    K, eye = tr.K, torch.eye(tr.K, dtype=torch.float64, device=device)
    pi = tr.pi.to(device=device, dtype=torch.float64)[None, :].expand(K, K)

    def bar(s: int) -> torch.Tensor:
        a = float(tr.alpha_bar[s])
        return a * eye + (1 - a) * pi

    beta = float(tr.betas[t - 1])
    return bar(t - 1), (1 - beta) * eye + beta * pi, bar(t)


def compare(kind: str, K: int, tokens: int, predicted_tokens: int, device: str) -> dict:
    cls, schedule = {"uniform": (Uniform, "cosine"), "absorbing": (Absorbing, "jsd")}[kind]
    T, t = 1000, 500
    process = D3PM(cls(K, d3pm_betas(schedule, T)))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, K - 1, (1, tokens), generator=g).to(device)
    x_t = process.q_sample(x0, torch.tensor([t], device=device))
    tt, ss = torch.tensor([t], device=device), torch.tensor([t - 1], device=device)
    onehot = F.one_hot(x0, K).double()  # only to check the closed-form posterior against the dense one
    # A model's x0 prediction (what L_vb and sampling feed the reverse step), on fewer tokens:
    # the dense path multiplies it by a K x K matrix.
    n = min(predicted_tokens, tokens)
    log_probs = process.model_log_probs(torch.randn(1, n, K, generator=g, dtype=torch.float64).to(device) * 3)
    probs = log_probs.exp()
    x_t_few = x_t[:, :n]

    def closed_q():  # draw x_t ~ q(x_t | x_0): keep with probability ᾱ_t, else redraw from π
        return process.q_sample(x0, tt)

    def closed_posterior():  # three numbers per token: q = c π + u [k = x_t] + v [k = x_0]
        return process.transition.posterior_of_tokens(x_t, x0, ss, tt)

    def closed_reverse():
        return process.posterior_log_probs(x_t_few, log_probs, ss, tt)

    # A dense implementation cannot keep Q̄_t for all T at large K (T·K²·8 bytes), so it builds the
    # matrices of the step it needs; all dense timings include that.
    def dense_q():  # rows of Q̄_t, then a categorical draw from each
        rows = dense_matrices(process, t, device)[2][x0]
        return (rows.clamp_min(1e-30).log() - torch.empty_like(rows).exponential_().log()).argmax(-1)

    def dense_posterior():
        bar_s, step, _ = dense_matrices(process, t, device)
        joint = step[:, x_t].movedim(0, -1) * bar_s[x0]  # q(x_t | x_{t-1}=k) q(x_{t-1}=k | x_0)
        return torch.log_softmax(joint.clamp_min(1e-30).log(), -1)

    def dense_reverse():  # the D3PM reference's form: Σ_x̃0 q(x_s | x_t, x̃0) p̃(x̃0) with w = p̃ / q(x_t | x̃0)
        bar_s, step, bar_t = dense_matrices(process, t, device)
        w = probs / bar_t[:, x_t_few].movedim(0, -1).clamp_min(1e-300)
        joint = step[:, x_t_few].movedim(0, -1) * (w @ bar_s)
        return torch.log_softmax(joint.clamp_min(1e-30).log(), -1)

    assert torch.allclose(process.q_probs(x0, tt), dense_matrices(process, t, device)[2][x0], atol=1e-12)
    c, u, v = closed_posterior()
    pi = process.transition.pi.to(device)
    densified = c[..., None] * pi + u[..., None] * F.one_hot(x_t, K) + v[..., None] * onehot
    assert torch.allclose(densified, dense_posterior().exp(), atol=1e-9)
    del densified, c, u, v
    assert torch.allclose(closed_reverse().exp(), dense_reverse().exp(), atol=1e-9)
    row = {"transition": kind, "K": K, "tokens": tokens, "predicted_tokens": n}
    for name, fn in [("q_closed", closed_q), ("q_dense", dense_q), ("posterior_closed", closed_posterior),
                     ("posterior_dense", dense_posterior), ("reverse_closed", closed_reverse),
                     ("reverse_dense", dense_reverse)]:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        row[f"{name}_ms"] = timed(fn, device, repeats=2 if name == "reverse_dense" else 5) * 1e3
        if device == "cuda":
            row[f"{name}_peak_MB"] = torch.cuda.max_memory_allocated() / 2**20
    # Memory each method needs beyond its (tokens, K) output: the dense path holds three K x K
    # float64 matrices and gathers (tokens, K) rows from two of them; the closed form holds (K,) vectors.
    row["dense_matrices_MB"] = 3 * K * K * 8 / 2**20
    row["dense_all_T_GB"] = T * K * K * 8 / 2**30
    row["output_MB"] = tokens * K * 8 / 2**20
    for name in ("q", "posterior", "reverse"):
        row[f"speedup_{name}"] = row[f"{name}_dense_ms"] / row[f"{name}_closed_ms"]
    return row


def throughput(device: str, steps: int) -> list[dict]:
    rows = []
    for config in ("tiny", "default"):
        cfg = load_config(DiscreteConfig, REPO / "configs" / "discrete" / f"{config}.yaml")
        domain = Discrete(cfg)
        domain.fit()
        model = domain.build_model().to(device)
        data = domain.build_dataset("train")
        batch = torch.stack([data[i] for i in range(cfg.train.batch_size)]).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            loss = domain.training_loss(model, batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        seconds = timed(step, device, repeats=steps)
        rows.append({"config": config, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
                     "objective": domain.objective, "batch_tokens": batch.numel(), "step_seconds": seconds,
                     "tokens_per_second": batch.numel() / seconds})
    return rows


def _noised(model, known, process: D3PM):
    """``model`` shown the known part drawn from ``q(x_t | values)`` at each call instead of clean."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(torch.where(known.mask, process.q_sample(known.values, t), x), t)

    return fn


def infill_exact(seeds: list[int], T: int, n: int) -> list[dict]:
    """TV distance to the true conditional of infilled samples from the exact x0 posterior of a random joint
    over 4 tokens of K = 3 (the first one known), uniform and discretised-Gaussian, known part clean or noised;
    ``oracle`` conditions the posterior on the known token exactly (what the sampler would do if it could)."""
    import itertools

    from multigen.samplers import Known

    K, L, v = 3, 4, 1
    seqs = torch.tensor(list(itertools.product(range(K), repeat=L)))  # (K^L, L), first token most significant
    onehots = F.one_hot(seqs, K).double().reshape(len(seqs), L * K)
    rows = []
    for kind, cls, schedule in (("uniform", Uniform, "cosine"), ("gaussian", DiscretizedGaussian, "linear")):
        process = D3PM(cls(K, d3pm_betas(schedule, T)))
        for seed in seeds:
            logp = torch.randn(len(seqs), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2.5

            def posterior(x: torch.Tensor, t: torch.Tensor, oracle: bool = False) -> torch.Tensor:
                like = process.transition.likelihood(x, t)  # (B, L, K): q(x_t_j | x0_j = k)
                if oracle:
                    like = torch.cat([F.one_hot(torch.tensor(v), K).double().expand_as(like[:, :1]), like[:, 1:]], 1)
                ll = like.clamp_min(1e-300).log()[:, torch.arange(L)[None, :], seqs].sum(-1)  # (B, K^L)
                return (torch.softmax(ll + logp, -1) @ onehots).reshape(-1, L, K).clamp_min(1e-300).log()

            mask = (torch.arange(L) == 0).expand(n, L)
            known = Known(mask, torch.full((n, L), v))
            truth = torch.softmax(logp, 0) * (seqs[:, 0] == v)
            truth = truth / truth.sum()
            row = {"transition": kind, "seed": seed, "T": T, "samples": n}
            for name, fn in (("clean", posterior), ("noised", _noised(posterior, known, process)),
                             ("oracle", lambda x, t: posterior(x, t, oracle=True))):
                x = process.sample(fn, (n, L), known=known, device="cpu", generator=torch.Generator().manual_seed(seed))
                freq = torch.bincount((x * K ** torch.arange(L - 1, -1, -1)).sum(1), minlength=len(seqs)) / n
                row[f"tv_{name}"] = 0.5 * (freq.double() - truth).abs().sum().item()
            rows.append(row)
            print(f"exact posterior, {kind}, seed {seed}: TV to the true conditional clean {row['tv_clean']:.3f}, "
                  f"noised {row['tv_noised']:.3f}, oracle {row['tv_oracle']:.3f}")
    return rows


def _train_tiny(device: str, seed: int, train_steps: int,
                overrides: list[str]) -> tuple[Discrete, torch.nn.Module, float]:
    """The tiny text config with ``overrides``, trained ``train_steps`` plain AdamW steps: (domain, model, seconds)."""
    torch.manual_seed(seed)
    cfg = load_config(DiscreteConfig, REPO / "configs" / "discrete" / "tiny.yaml", overrides)
    domain = Discrete(cfg)
    domain.fit()
    model = domain.build_model().to(device)
    data = domain.build_dataset("train")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(train_steps):
        for group in opt.param_groups:
            group["lr"] = cfg.train.lr * min(1.0, (step + 1) / cfg.train.warmup_steps)
        idx = torch.randint(0, len(data), (cfg.train.batch_size,), generator=g)
        loss = domain.training_loss(model, torch.stack([data[int(i)] for i in idx]).to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return domain, model.eval(), time.perf_counter() - start


INFILL_VARIANTS = ("clean", "noised", "marked")


def infill(device: str, seeds: list[int], train_steps: int, windows: int, hidden: float, rate: float) -> dict:
    """Per seed, train the tiny config with the uniform transition twice: plainly, and with known parts marked
    (``process.infill_rate=rate``). Then infill held-out windows, two ways of hiding: ``hidden`` of the
    characters scattered, and one run of a quarter of the window. The plain model sees the known part clean
    (the sampler's way) or noised to each level; the marked model sees it clean and marked."""
    from multigen.samplers import Known

    rows = []
    for seed in seeds:
        plain, plain_model, plain_seconds = _train_tiny(device, seed, train_steps, ["process.transition=uniform"])
        marked, marked_model, marked_seconds = _train_tiny(
            device, seed, train_steps, ["process.transition=uniform", f"process.infill_rate={rate}"])
        val = plain.build_dataset("val")
        truth = torch.stack([val[i] for i in range(min(windows, len(val)))]).to(device)
        g = torch.Generator().manual_seed(seed)
        L, run = truth.shape[1], truth.shape[1] // 4
        starts = torch.randint(0, L - run + 1, (len(truth), 1), generator=g)
        pos = torch.arange(L)
        scattered = torch.rand(truth.shape, generator=g) < hidden
        scattered[0, 0] |= ~scattered.any()  # at least one character to generate
        hides = {"scattered": scattered, "run": (pos >= starts) & (pos < starts + run)}
        row = {"seed": seed, "train_steps": train_steps, "train_seconds": plain_seconds,
               "marked_train_seconds": marked_seconds}

        def generator() -> torch.Generator:  # the same sampling noise for every variant
            return torch.Generator(device=device).manual_seed(seed)

        for pattern, hide in hides.items():
            known = Known(~hide.to(device), truth)
            outs = {
                "clean": plain.sample(plain_model, len(truth), known=known, generator=generator()),
                "noised": plain.process.sample(_noised(plain_model, known, plain.process), truth.shape, known=known,
                                               device=device, generator=generator()),
                "marked": marked.sample(marked_model, len(truth), known=known, generator=generator()),
            }
            for name, out in outs.items():
                row[f"accuracy_{name}_{pattern}"] = ((out == truth) & ~known.mask).sum().item() / hide.sum().item()
            row[f"generated_{pattern}"] = hide.sum().item()
        rows.append(row)
        print(f"seed {seed}: trained {train_steps} steps in {plain_seconds:.0f} s (marked: {marked_seconds:.0f} s); "
              "infill accuracy " + ", ".join(f"{k.removeprefix('accuracy_')} {v:.3f}" for k, v in row.items()
                                             if k.startswith("accuracy_")))
    return {"rows": rows, "windows": len(truth), "hidden": hidden, "run": run, "infill_rate": rate}


def train_text(device: str, out_dir: Path, overrides: list[str], sequences: int):
    """Train the default text config through the trainer into ``out_dir`` (``overrides`` applied last).

    Returns the loaded export, its first ``sequences`` held-out windows ``(N, L)`` and the wall seconds of the run
    (with the trainer's own evaluations)."""
    from multigen.export import load_pretrained
    from multigen.train import main as train

    args = [f"train.output_dir={out_dir}", "train.resume=false", "train.tensorboard=false",
            *(["train.cpu=true"] if device == "cpu" else []), *overrides]
    start = time.perf_counter()
    if code := train(["--domain", "discrete", "--config", "default", *args]):
        raise SystemExit(code)  # the trainer has said why
    seconds = time.perf_counter() - start
    p = load_pretrained(out_dir / "export", device)
    val = p.domain.build_dataset("val")
    return p, torch.stack([val[i] for i in range(min(sequences, len(val)))]), seconds


def curve(device: str, out_dir: Path, eval_every: int, sampling_steps: list[int], sequences: int,
          overrides: list[str] = ()) -> dict:
    """Train the default text config (``overrides`` applied), logging held-out bits/char every ``eval_every`` steps,
    then score the export's held-out ELBO for the chains that sampling with fewer steps runs."""
    from multigen.trainer import read_log

    p, data, seconds = train_text(device, out_dir, [f"train.eval_every={eval_every}",
                                                    f"eval.num_sequences={sequences}", *overrides], sequences)
    by_step = [{"step": r["step"], "bits_per_char": r["eval/elbo_bits_per_token"],
                "unigram_bits": r["eval/baseline_unigram_bits"]}
               for r in read_log(out_dir) if "eval/elbo_bits_per_token" in r]
    by_sampling = []
    for steps in sampling_steps:
        start = time.perf_counter()
        bits, stderr = mean_and_stderr(p.domain.elbo_bits(p.model, data, batch_size=32, steps=steps))
        by_sampling.append({"steps": steps, "bits_per_char": bits, "stderr": stderr,
                            "seconds": time.perf_counter() - start})
    return {"train_minutes": seconds / 60, "held_out_sequences": len(data), "by_training_step": by_step,
            "by_sampling_steps": by_sampling}


def train_autoregressive(domain, seed: int, device: str, out_dir: Path, overrides: list[str] | None = None,
                         eval_every: int = 0) -> tuple[torch.nn.Module, float]:
    """The autoregressive baseline of ``domain``'s text model (:class:`AutoregressiveText`), trained by the
    trainer into ``out_dir`` with the config's batch, steps, optimiser, warmup, decay, clipping and EMA on the same
    training windows, seeded with ``seed``; ``overrides`` (dotted) change the twin's config only, e.g. the batch
    and steps at which it does best in the same time. Its held-out NLL (``eval.num_sequences`` windows) goes to
    ``out_dir/log.jsonl`` at the end, and every ``eval_every`` steps when > 0 (a twin that over-fits does best
    before its last step: see :func:`best_autoregressive_eval`). Returns the EMA model and the training seconds."""
    from multigen.trainer import Trainer

    cfg = replaced(domain.cfg, overrides=overrides or [])
    t = cfg.train
    t.seed, t.output_dir, t.cpu, t.resume, t.tensorboard = seed, str(out_dir), device == "cpu", False, False
    t.sample_every = t.checkpoint_every = 0  # samples once, at the end
    t.eval_every = eval_every
    start = time.perf_counter()
    trainer = Trainer(AutoregressiveText, cfg)
    trainer.resume()
    while trainer.state.step < trainer.t.max_steps:  # the trainer's copy of the config: a time limit ends it
        trainer.periodic(trainer.step())
    trainer.export()
    return trainer.ema.module, time.perf_counter() - start


def best_autoregressive_eval(out_dir: Path) -> dict:
    """The lowest held-out NLL the twin trained into ``out_dir`` logged (:func:`train_autoregressive` with
    ``eval_every``): ``{"step", "nll_bits", "nll_stderr", "last_nll_bits"}``. Chosen on the windows it is scored
    on, so it is the twin stopped early by an oracle: a baseline no worse than any stopping rule would give."""
    from multigen.trainer import read_log

    evals = [r for r in read_log(out_dir) if "eval/nll_bits_per_token" in r]
    if not evals:
        raise ValueError(f"no held-out evaluation in {out_dir / 'log.jsonl'}")
    best = min(evals, key=lambda r: r["eval/nll_bits_per_token"])
    return {"step": best["step"], "nll_bits": best["eval/nll_bits_per_token"],
            "nll_stderr": best["eval/nll_bits_stderr"], "last_nll_bits": evals[-1]["eval/nll_bits_per_token"]}


def autoregressive_bits(model, x: torch.Tensor, start_id: int) -> torch.Tensor:
    """Exact negative log-likelihood of each sequence ``x`` ``(B, L)`` in bits per token ``(B,)``; the start
    token (the last class) is never a prediction, so the softmax runs over the data's tokens only."""
    inputs = torch.cat([torch.full_like(x[:, :1], start_id), x[:, :-1]], dim=1)
    logits = model(inputs, torch.zeros(len(x), device=x.device))[..., :start_id]
    return F.cross_entropy(logits.transpose(1, 2), x, reduction="none").mean(1) / math.log(2)


class AutoregressiveText(Discrete):
    """The text domain's autoregressive twin: the same transformer (size, positions, relative bias) with a causal
    mask. Position i predicts token i from tokens < i, the first from a start token (id ``data_vocab``). Its loss
    is the exact negative log-likelihood (bits per token); it samples left to right and evaluates exact NLL."""

    name = "discrete-autoregressive"

    def build_model(self) -> torch.nn.Module:
        m, d = self.cfg.model, self.cfg.data
        if self.grid:
            raise ValueError("the autoregressive twin is for sequences (data.source=text or tokens)")
        return SequenceTransformer(self.data_vocab + 1, d.length, self.cfg.process.timesteps, dim=m.dim,
                                   depth=m.depth, heads=m.heads, dropout=m.dropout, causal=True, mlp=m.mlp,
                                   rotary=m.rotary, relative_bias=m.relative_bias)

    def training_loss(self, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return autoregressive_bits(model, batch, self.data_vocab).mean()

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, n: int, *, condition: Any = None, known: Any = None,
               generator: torch.Generator | None = None, progress: bool = False, **settings: Any) -> torch.Tensor:
        """``n`` sequences ``(n, L)`` drawn token by token at ``temperature`` (``length``: L, at most
        ``data.length``); one forward pass per token (no cache): a baseline, not a fast sampler."""
        if condition is not None or known is not None:
            raise ValueError("the autoregressive twin samples left to right only: no condition or known tokens")
        check_count(n)
        s = self.sample_settings(**settings)
        length = s.length or self.cfg.data.length
        device = next(model.parameters()).device
        x = torch.full((n, length + 1), self.data_vocab, device=device)  # the start token, then the sequence
        zero = torch.zeros(n, device=device)
        for i in tqdm(range(length), desc="sample", disable=not progress, leave=False):
            logits = model(x[:, :-1], zero)[:, i].float() / s.temperature
            logits[:, self.data_vocab] = -math.inf  # never the start token
            x[:, i + 1] = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
        return x[:, 1:]

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, dataset: Any) -> dict[str, float]:
        """Held-out exact NLL (bits per token; mean and standard error) of the first ``eval.num_sequences``
        windows, the ones the diffusion model's ELBO is scored on."""
        e, device = self.cfg.eval, next(model.parameters()).device
        data = torch.stack([dataset[i] for i in range(min(e.num_sequences, len(dataset)))])
        bits = torch.cat([autoregressive_bits(model, c.to(device), self.data_vocab).float().cpu()
                          for c in data.split(e.batch_size)])
        mean, stderr = mean_and_stderr(bits)
        return {"nll_bits_per_token": mean, "nll_bits_stderr": stderr}


def versus_autoregressive(device: str, seeds: list[int], overrides: list[str], ar_overrides: list[str],
                          sequences: int, out_dir: Path, orders: int = 1) -> dict:
    """Per seed: train the text diffusion config (the trainer, ``overrides`` applied) and its autoregressive
    twin (:func:`train_autoregressive`, ``ar_overrides`` applied after them), and score both on the same
    ``sequences`` held-out windows: the diffusion model's negative ELBO (an upper bound; with ``orders`` above 1
    also its bound importance-weighted over that many random orders, tighter), the twin's exact negative
    log-likelihood, both in bits/char."""

    rows = []
    for seed in seeds:
        p, data, diffusion_seconds = train_text(device, out_dir / f"text_seed{seed}",
                                                [f"train.seed={seed}", *overrides], sequences)
        elbo, elbo_se = mean_and_stderr(p.domain.elbo_bits(p.model, data, batch_size=32))
        weighted = {}
        if orders > 1:
            bits, se = mean_and_stderr(p.domain.elbo_bits(p.model, data, 32, any_order=True, orders=orders))
            weighted = {"weighted_bits": bits, "weighted_stderr": se, "orders": orders}
        ar, ar_seconds = train_autoregressive(p.domain, seed, device, out_dir / f"autoregressive_seed{seed}",
                                              ar_overrides)
        with torch.no_grad():
            nll, nll_se = mean_and_stderr(torch.cat([autoregressive_bits(ar, chunk.to(device), p.domain.data_vocab)
                                                     .cpu() for chunk in data.split(32)]))
        rows.append({"seed": seed, "diffusion_bits": elbo, "diffusion_stderr": elbo_se, "ar_bits": nll,
                     "ar_stderr": nll_se, "unigram_bits": p.domain.unigram_bits(data),
                     "diffusion_train_seconds": diffusion_seconds, "ar_train_seconds": ar_seconds, **weighted})
        print(f"seed {seed}: diffusion {elbo:.3f} ± {elbo_se:.3f} bits/char ({diffusion_seconds:.0f} s with its "
              f"evaluation), autoregressive {nll:.3f} ± {nll_se:.3f} ({ar_seconds:.0f} s)")
    return {"held_out_sequences": len(data), "length": data.shape[1], "overrides": overrides,
            "ar_overrides": ar_overrides, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", type=available_device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--vocab", type=positive_int, nargs="+", default=[27, 256, 8192])
    parser.add_argument("--tokens", type=positive_int, default=16384)
    parser.add_argument("--predicted-tokens", type=positive_int, default=1024,
                        help="tokens for the reverse step from a predicted x0 (its dense form is a K x K matmul)")
    parser.add_argument("--throughput", action="store_true")
    parser.add_argument("--steps", type=positive_int, default=5)
    parser.add_argument("--curve", action="store_true",
                        help="train configs/discrete/default.yaml and report held-out bits/char against training "
                             "steps and against sampling steps")
    parser.add_argument("--eval-every", type=positive_int, default=150)
    parser.add_argument("--sampling-steps", type=positive_int, nargs="+", default=[256, 128, 64, 32, 16, 8, 4])
    parser.add_argument("--sequences", type=positive_int, default=64,
                        help="held-out sequences scored (--curve, --versus-ar)")
    parser.add_argument("--skip-transitions", action="store_true")
    parser.add_argument("--infill", action="store_true",
                        help="infilling with the known part clean or noised to each level: exact posterior of a "
                             "small joint (TV), then a tiny uniform text model (accuracy)")
    parser.add_argument("--infill-samples", type=positive_int, default=20000,
                        help="infilled samples per exact-posterior case")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-steps", type=positive_int, default=4000)
    parser.add_argument("--windows", type=positive_int, default=256, help="held-out windows infilled per seed")
    parser.add_argument("--hidden", type=float, default=0.25, help="share of characters hidden and generated")
    parser.add_argument("--infill-rate", type=float, default=0.5,
                        help="process.infill_rate of the marked model (share of sequences trained with a known part)")
    parser.add_argument("--versus-ar", action="store_true",
                        help="train the default text config and the same transformer with a causal mask per seed "
                             "(--seeds) and compare held-out bits/char")
    parser.add_argument("--override", nargs="*", default=[], help="dotted config overrides for --versus-ar and --curve")
    parser.add_argument("--orders", type=positive_int, default=1,
                        help="--versus-ar: above 1, also score the diffusion model's bound importance-weighted over "
                             "this many random orders a window (this many times the any-order bound's cost)")
    parser.add_argument("--ar-override", nargs="*", default=[],
                        help="dotted overrides of the autoregressive twin's config only, applied after --override")
    parser.add_argument("--out", type=json_path, default="benchmarks/out/discrete.json")
    args = parser.parse_args()
    if len(set(args.seeds)) < len(args.seeds):
        parser.error(f"--seeds {args.seeds}: each seed once (a repeated seed repeats its run and hides the spread)")
    if min(args.vocab) < 2:
        parser.error(f"--vocab: a transition needs at least 2 classes, got {min(args.vocab)}")
    if not 0 < args.hidden < 1:
        parser.error(f"--hidden: a share of the characters in (0, 1), got {args.hidden}")
    if not 0 <= args.infill_rate <= 1:
        parser.error(f"--infill-rate: a share of the sequences in [0, 1], got {args.infill_rate}")
    try:  # before anything trains: the diffusion model's overrides, then its twin's on top
        Discrete(load_config(DiscreteConfig, resolve_config_file("discrete", "default"),
                             [*args.override, *args.ar_override]))
    except ConfigError as e:
        parser.error(f"--override / --ar-override: {e}")

    rows = [] if args.skip_transitions else [compare(kind, K, args.tokens, args.predicted_tokens, args.device)
                                             for kind in ("uniform", "absorbing") for K in args.vocab]
    if rows:
        print_transitions(rows)
    result = {"device": args.device, "transitions": rows}
    write_results(args.out, result)  # after each part: a run stopped from outside keeps what it measured
    if args.throughput:
        result["throughput"] = throughput(args.device, args.steps)
        print("\n" + markdown_table([{
            "config": r["config"], "params": f"{r['params_M']:.2f} M", "objective": r["objective"],
            "tokens/step": r["batch_tokens"], "s/step": f"{r['step_seconds']:.3f}",
            "tokens/s": f"{r['tokens_per_second']:.0f}"} for r in result["throughput"]]))
    if args.infill:
        exact = result["infill_exact"] = infill_exact(args.seeds, 20, args.infill_samples)
        print("\n" + markdown_table([{"transition": row["transition"], "seed": row["seed"],
                                      **{f"TV {k}": f"{row[f'tv_{k}']:.3f}" for k in ("clean", "noised", "oracle")}}
                                     for row in exact]))
        r = result["infill"] = infill(args.device, args.seeds, args.train_steps, args.windows, args.hidden,
                                      args.infill_rate)
        table = []
        for pattern in ("scattered", "run"):
            acc = {k: torch.tensor([row[f"accuracy_{k}_{pattern}"] for row in r["rows"]]) for k in INFILL_VARIANTS}
            for k in INFILL_VARIANTS:
                gain = acc[k] - acc["clean"]
                table.append({"known part shown to the model": k, "hidden": pattern,
                              f"infill accuracy, mean ± std over {len(args.seeds)} seeds": mean_std(acc[k], ".3f"),
                              "minus clean, paired by seed": mean_std(gain, "+.3f")})
        print("\n" + markdown_table(table))
    if args.curve:
        c = result["curve"] = curve(args.device, args.out.parent / "discrete_run", args.eval_every,
                                    args.sampling_steps, args.sequences, args.override)
        print(f"\ntrained in {c['train_minutes']:.1f} min; held-out bits/char ({c['held_out_sequences']} sequences)")
        by_step, by_steps = c["by_training_step"], c["by_sampling_steps"]
        print(markdown_table([
            {"training step": "bits/char", **{r["step"]: f"{r['bits_per_char']:.3f}" for r in by_step}},
            {"training step": "unigram", **{r["step"]: f"{r['unigram_bits']:.3f}" for r in by_step}}]))
        print("\n" + markdown_table([{"sampling steps": "bits/char",
                                      **{r["steps"]: f"{r['bits_per_char']:.3f}" for r in by_steps}}]))
    if args.versus_ar:
        v = result["versus_ar"] = versus_autoregressive(args.device, args.seeds, args.override, args.ar_override,
                                                        args.sequences, args.out.parent / "discrete_ar",
                                                        args.orders)
        score = f"held-out bits/char ({v['held_out_sequences']} windows of {v['length']}), mean ± std over " \
                f"{len(v['rows'])} seeds"
        table = []
        for name, key in (("diffusion (negative ELBO)", "diffusion"), ("autoregressive (exact NLL)", "ar")):
            bits = torch.tensor([r[f"{key}_bits"] for r in v["rows"]])
            se = sum(r[f"{key}_stderr"] for r in v["rows"]) / len(v["rows"])
            secs = sum(r[f"{key}_train_seconds"] for r in v["rows"]) / len(v["rows"])
            table.append({"model": name, score: mean_std(bits, ".3f"), "mean s.e. of one estimate": f"{se:.3f}",
                          "training seconds": f"{secs:.0f}"})
        if args.orders > 1:
            bits = torch.tensor([r["weighted_bits"] for r in v["rows"]])
            se = sum(r["weighted_stderr"] for r in v["rows"]) / len(v["rows"])
            table.insert(1, {"model": f"diffusion (bound weighted over {args.orders} orders)",
                             score: mean_std(bits, ".3f"), "mean s.e. of one estimate": f"{se:.3f}"})
        table.append({"model": "unigram", score: f"{v['rows'][0]['unigram_bits']:.3f}"})
        print("\n" + markdown_table(table))
    write_results(args.out, result)


def mean_std(values: torch.Tensor, spec: str) -> str:
    """``mean ± std`` of ``values`` (one per seed) formatted by ``spec``; the mean alone for one seed."""
    mean = format(values.mean().item(), spec)
    return f"{mean} ± {values.std().item():.3f}" if len(values) > 1 else mean


def print_transitions(rows: list[dict]) -> None:
    """The closed forms' timings against dense K x K matrices (rows of :func:`compare`) as a markdown table."""
    reverse = f"p(x_s ∣ x_t), {rows[0]['predicted_tokens']} tokens, closed / dense (ms)"
    print(markdown_table([{
        "transition": r["transition"], "K": r["K"],
        "x_t ~ q(x_t ∣ x_0) closed / dense (ms)": f"{r['q_closed_ms']:.2f} / {r['q_dense_ms']:.2f}",
        "q speed-up": f"{r['speedup_q']:.1f}x",
        "q(x_s ∣ x_t, x_0) closed / dense (ms)": f"{r['posterior_closed_ms']:.1f} / {r['posterior_dense_ms']:.1f}",
        "posterior speed-up": f"{r['speedup_posterior']:.1f}x",
        reverse: f"{r['reverse_closed_ms']:.1f} / {r['reverse_dense_ms']:.1f}",
        "reverse speed-up": f"{r['speedup_reverse']:.1f}x",
        "dense matrices (one step / all T)": f"{r['dense_matrices_MB']:.1f} MB / {r['dense_all_T_GB']:.1f} GB"}
        for r in rows]))


if __name__ == "__main__":
    main()
