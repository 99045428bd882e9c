"""Muon: momentum whose update of each weight matrix is orthogonalised (Jordan et al., 2024).

For a weight matrix ``W`` (``(out, in)``) with gradient ``G``, Muon keeps a momentum ``M <- mu M + (1 - mu) G``,
takes the Nesterov step ``U = (1 - mu) G + mu M``, replaces it by about ``Q`` of its polar factor ``U = Q S``
(five steps of a quintic Newton-Schulz iteration, in bf16 on GPUs: singular values land in about [0.7, 1.2],
not exactly 1) and moves ``W <- W (1 - lr wd) - lr s Q`` with ``s = 0.2 sqrt(max(out, in))``, the scale at which Muon's
update has the RMS of a typical AdamW update, so that one learning rate serves both (``torch.optim.Muon``'s
``adjust_lr_fn="match_rms_adamw"``). Muon is for the hidden matrices only: linear layers' weights, and convolution
kernels ``(out, in, *k)`` taken as ``(out, in * prod(k))`` matrices (as Jordan's CIFAR-10 runs do). Embeddings,
output layers, biases and norms stay with AdamW (:func:`hidden_matrices` picks them, the trainer builds both).

Like fused AdamW, :class:`Muon` takes a device flag ``found_inf`` (a float tensor: 1 skips the step) that leaves
every parameter and momentum bit-identical without a host sync.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)  # the quintic's coefficients: steepest at 0, then about flat
NEWTON_SCHULZ_EPS = 1e-7
# Matrices of one shape are updated in stacks of at most this many elements: a few batched products for many small
# kernels, and a transient of about six stacks' size (weights, gradients, momenta, their updates; 400 MB in fp32)
# however large the model, where stacking all of a shape at once would copy most of a large model several times.
STACK_ELEMENTS = 1 << 24


def orthogonalize(g: Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> Tensor:
    """About ``U V^T`` for each ``g = U S V^T`` of a batch ``(..., m, n)``, computed in ``dtype`` (None: fp32 on a
    CPU, where bf16 products are often emulated and 10-20x slower, bf16 elsewhere): singular values within about two
    decades of the largest land in about [0.7, 1.2]; far smaller ones grow (about 500x) but stay below.

    Each matrix is scaled to spectral norm at most 1 (by its Frobenius norm), then each step maps ``X`` to
    ``a X + (b A + c A^2) X`` with ``A = X X^T``, on the wide orientation (``A`` the smaller Gram matrix)."""
    a, b, c = NEWTON_SCHULZ
    if dtype is None:
        dtype = torch.float32 if g.device.type == "cpu" else torch.bfloat16
    x = g.to(dtype).reshape(-1, *g.shape[-2:])
    tall = g.shape[-2] > g.shape[-1]
    if tall:
        x = x.mT
    x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=NEWTON_SCHULZ_EPS)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.mT if tall else x).reshape(g.shape)


def output_layer(model: nn.Module) -> nn.Module:
    """The network's last layer: the last module, in registration order, that holds parameters of its own (every
    network of multigen registers the layer that writes its result last)."""
    return [m for m in model.modules() if next(m.parameters(recurse=False), None) is not None][-1]


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The weights of ``model``'s ``nn.Linear`` and (not transposed) convolution layers except its
    :func:`output_layer`: the matrices Muon is meant for. Embeddings (``nn.Embedding``), biases and norms are not
    among them."""
    output = output_layer(model)
    return [m.weight for m in model.modules() if m is not output and (
        isinstance(m, nn.Linear) or isinstance(m, nn.modules.conv._ConvNd) and not m.transposed)]


class Muon(torch.optim.Optimizer):
    """Muon over matrices ``(out, in)`` and kernels ``(out, in, *k)``, a kernel taken as the matrix
    ``(out, in * prod(k))`` (see the module docstring); ``lr`` and ``weight_decay`` mean what AdamW's do."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 1e-3, momentum: float = 0.95,
                 weight_decay: float = 0.0, ns_steps: int = 5, ns_dtype: torch.dtype | None = None) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps))
        self.ns_dtype = ns_dtype  # the orthogonalisation's (see orthogonalize; None: by device)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon updates weight matrices and kernels only; got a parameter of shape "
                                     f"{tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update, after re-evaluating the loss with ``closure`` if given (its value is returned, as torch's
        optimizers do); ``self.found_inf`` (if set: a float tensor, 1 = skip) makes it a no-op on the device."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        skip = None if found_inf is None else found_inf > 0
        for group in self.param_groups:
            by_shape: dict[torch.Size, list[Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(p.shape, []).append(p)
            for shape, same_shape in by_shape.items():
                rows, cols = shape[0], math.prod(shape[1:])
                per_stack = max(1, STACK_ELEMENTS // (rows * cols))
                for start in range(0, len(same_shape), per_stack):
                    self._update(same_shape[start:start + per_stack], rows, cols, group, skip)
        return loss

    def _update(self, params: list[Tensor], rows: int, cols: int, group: dict, skip: Tensor | None) -> None:
        """One step of ``params``, all of one shape, taken as ``(rows, cols)`` matrices, as one batch."""
        mu, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
        grads = torch.stack([p.grad for p in params])
        bufs = torch.stack([self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params])
        weights = torch.stack(params)
        new_bufs = bufs.lerp(grads, 1 - mu)
        update = orthogonalize(grads.lerp(new_bufs, mu).view(-1, rows, cols), group["ns_steps"], self.ns_dtype)
        new_weights = (weights * (1 - lr * wd)).add_(update.reshape(weights.shape),
                                                      alpha=-lr * 0.2 * math.sqrt(max(rows, cols)))
        if skip is not None:  # a skipped step keeps the old values (a where, not a product: 0 * nan is nan)
            new_bufs, new_weights = torch.where(skip, bufs, new_bufs), torch.where(skip, weights, new_weights)
        torch._foreach_copy_([self.state[p]["momentum_buffer"] for p in params], list(new_bufs.unbind()))
        torch._foreach_copy_(params, list(new_weights.unbind()))
