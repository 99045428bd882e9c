"""Muon (multigen.optim): against torch's own Muon, its orthogonalisation, kernels, a skipped step, which weights
it takes."""

import pytest
import torch
from torch import nn

from discrete.model import SequenceTransformer
from multigen.optim import Muon, hidden_matrices, orthogonalize, output_layer
from video.model import SpaceTimeUNet


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon arrived in torch 2.9")
@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (16, 16)])
def test_muon_equals_torchs_muon_at_adamw_matched_rates(shape):
    torch.manual_seed(0)
    w = torch.randn(shape)
    ours, theirs = nn.Parameter(w.clone()), nn.Parameter(w.clone())
    opt_ours = Muon([ours], lr=2e-3, weight_decay=0.1, ns_dtype=torch.bfloat16)  # torch's computes in bf16
    opt_theirs = torch.optim.Muon([theirs], lr=2e-3, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for _ in range(4):
        g = torch.randn(shape)
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    assert not torch.equal(ours, w)
    assert torch.equal(ours, theirs)



def test_a_closure_computes_the_gradient_and_its_loss_is_returned():
    """As torch's optimizers: ``step(closure)`` evaluates the loss (with gradients on, even under no_grad) before
    the update, which then equals a step on the gradient computed outside."""
    torch.manual_seed(0)
    w, x = torch.randn(8, 6), torch.randn(6, 4)
    by_closure, by_hand = nn.Parameter(w.clone()), nn.Parameter(w.clone())
    opt_closure, opt_hand = Muon([by_closure], lr=0.02), Muon([by_hand], lr=0.02)

    def closure() -> torch.Tensor:
        opt_closure.zero_grad()
        loss = (by_closure @ x).square().mean()
        loss.backward()
        return loss

    (by_hand @ x).square().mean().backward()
    opt_hand.step()
    with torch.no_grad():
        loss = opt_closure.step(closure)
    assert loss.item() == (w @ x).square().mean().item()
    assert torch.equal(by_closure, by_hand) and not torch.equal(by_hand, w)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(32, 96), (96, 32)])
def test_orthogonalize_maps_every_singular_value_near_one(shape, dtype):
    torch.manual_seed(1)
    u, _, vh = torch.linalg.svd(torch.randn(shape), full_matrices=False)
    g = u @ torch.diag(torch.logspace(-2, 0, min(shape))) @ vh  # singular values over two decades
    q = orthogonalize(g, dtype=dtype)
    assert q.dtype == dtype and orthogonalize(g).dtype == torch.float32  # by default fp32 on a CPU
    q = q.float()
    s = torch.linalg.svdvals(q)
    assert q.shape == g.shape
    assert s.min() > 0.6 and s.max() < 1.25, s
    # the same singular vectors: u^T q v is diagonal (up to bf16 rounding)
    core = u.T @ q @ vh.T
    assert (core - torch.diag(core.diagonal())).abs().max() < 0.05


def test_a_skipped_step_keeps_weights_and_momentum_bit_identical():
    torch.manual_seed(2)
    p = nn.Parameter(torch.randn(8, 12))
    opt = Muon([p], lr=1e-2, weight_decay=0.1)
    p.grad = torch.randn(8, 12)
    opt.step()  # a momentum to keep
    before = p.detach().clone(), opt.state[p]["momentum_buffer"].clone()
    p.grad = torch.full((8, 12), float("nan"))
    opt.found_inf = torch.ones(())
    opt.step()
    assert torch.equal(p, before[0]) and torch.equal(opt.state[p]["momentum_buffer"], before[1])
    g = torch.randn(8, 12)
    p.grad = g
    opt.found_inf = torch.zeros(())
    opt.step()
    flagged = p.detach().clone()
    with torch.no_grad():
        p.copy_(before[0])
    opt.state[p]["momentum_buffer"].copy_(before[1])
    del opt.found_inf
    p.grad = g
    opt.step()
    assert torch.equal(p, flagged), "found_inf = 0 is the plain step"


def test_matrices_of_one_shape_stacked_in_parts_move_as_stacked_at_once(monkeypatch):
    """However many elements a step stacks at once (multigen.optim.STACK_ELEMENTS), every matrix gets the same
    update: five matrices of one shape updated in stacks of 2, 2 and 1 against one stack of 5."""
    torch.manual_seed(4)
    ws = [torch.randn(6, 10) for _ in range(5)]
    apart, together = [nn.Parameter(w.clone()) for w in ws], [nn.Parameter(w.clone()) for w in ws]
    opts = Muon(apart, lr=1e-2, weight_decay=0.1), Muon(together, lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        gs = [torch.randn(6, 10) for _ in ws]
        for params, opt, elements in ((apart, opts[0], 2 * 60 + 59), (together, opts[1], 5 * 60)):
            for p, g in zip(params, gs):
                p.grad = g.clone()
            monkeypatch.setattr("multigen.optim.STACK_ELEMENTS", elements)
            opt.step()
    for w, a, t in zip(ws, apart, together):
        assert not torch.equal(a, w)
        torch.testing.assert_close(a, t, rtol=1e-6, atol=1e-7)


def test_muon_takes_matrices_and_kernels_only():
    with pytest.raises(ValueError, match=r"matrices and kernels only; got a parameter of shape \(5,\)"):
        Muon([nn.Parameter(torch.zeros(5))])


@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (20, 3, 3), (5, 2, 3, 3, 3)])
def test_a_kernel_moves_as_its_flattened_matrix(shape):
    """A kernel (out, in, *k) gets exactly the update of the (out, in * prod(k)) matrix with its gradients."""
    torch.manual_seed(3)
    w = torch.randn(shape)
    kernel, matrix = nn.Parameter(w.clone()), nn.Parameter(w.clone().flatten(1))
    opts = Muon([kernel], lr=1e-2, weight_decay=0.1), Muon([matrix], lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        g = torch.randn(shape)
        kernel.grad, matrix.grad = g.clone(), g.clone().flatten(1)
        for opt in opts:
            opt.step()
    assert not torch.equal(kernel, w)
    assert torch.equal(kernel.flatten(1), matrix)


def test_the_transformers_hidden_matrices_leave_out_embeddings_and_its_output_layer():
    model = SequenceTransformer(vocab=20, max_length=16, timesteps=8, dim=16, depth=2, heads=2)
    assert output_layer(model) is model.head
    chosen = {id(p) for p in hidden_matrices(model)}
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert chosen == {id(m.weight) for m in linear if m is not model.head}
    assert id(model.tokens.weight) not in chosen and id(model.positions) not in chosen
    assert all(p.ndim == 2 for p in hidden_matrices(model))


def test_a_unets_hidden_matrices_are_its_linear_weights_and_kernels_but_its_output_convolution():
    model = SpaceTimeUNet(channels=1, base=16, mults=(1, 2), blocks=1, attn_levels=(1,), head_channels=8)
    output = output_layer(model)
    assert isinstance(output, nn.Conv2d)
    chosen = {id(p) for p in hidden_matrices(model)}
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert chosen == {id(m.weight) for m in layers if m is not output}
    assert any(p.ndim == 4 for p in hidden_matrices(model)) and id(output.weight) not in chosen


def test_transposed_convolutions_stay_with_adamw():
    """A transposed kernel is ``(in, out, *k)``: taken as an ``(out, in)`` matrix it would be orthogonalised the wrong
    way round, so Muon never gets one (the digit grids' upsampling is one)."""
    from discrete.model import GridUNet

    model = GridUNet(vocab=5, timesteps=10)
    transposed = [m.weight for m in model.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert transposed and not any(any(w is p for p in hidden_matrices(model)) for w in transposed)
