"""Point-cloud metrics against brute force and on sets with known answers."""

import itertools
import math

import pytest
import torch

from pointcloud.metrics import (chamfer, coverage, coverage_by_group, emd_approx, emd_exact, fscore, mmd, one_nna,
                                pairwise, set_metrics, share_by_group)


def brute_chamfer(x, y):
    d = [[float(((p - q) ** 2).sum()) for q in y] for p in x]
    return sum(min(r) for r in d) / len(x) + sum(min(c) for c in zip(*d)) / len(y)


def test_chamfer_and_fscore_match_loops():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 30, 3, generator=g), torch.randn(2, 20, 3, generator=g)
    assert torch.allclose(chamfer(x, y), torch.tensor([brute_chamfer(a, b) for a, b in zip(x, y)]), atol=1e-5)
    t = 0.5
    for a, b, f in zip(x, y, fscore(x, y, t)):
        p = sum(min(float((pa - pb).norm()) for pb in b) <= t for pa in a) / len(a)
        r = sum(min(float((pa - pb).norm()) for pa in a) <= t for pb in b) / len(b)
        assert math.isclose(float(f), 2 * p * r / (p + r) if p + r else 0.0, abs_tol=1e-6)


def test_emd_exact_against_permutations_and_translation():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 6, 3, generator=g), torch.randn(3, 6, 3, generator=g)
    for a, b, e in zip(x, y, emd_exact(x, y)):
        best = min(sum(float((a[i] - b[j]).norm()) for i, j in enumerate(p)) for p in itertools.permutations(range(6)))
        assert math.isclose(float(e), best / 6, rel_tol=1e-6)
    cloud = torch.randn(1, 50, 3, generator=g)
    assert float(emd_exact(cloud, cloud[:, torch.randperm(50)])) < 1e-7
    shift = torch.tensor([0.3, -0.4, 0.0])
    assert math.isclose(float(emd_exact(cloud, cloud + shift)), 0.5, rel_tol=1e-5)


def test_emd_approx_within_stated_gap_of_exact():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 256, 3, generator=g)
    y = torch.randn(4, 256, 3, generator=g) * torch.tensor([1.5, 0.5, 1.0]) + 0.2
    exact, approx = emd_exact(x, y), emd_approx(x, y)
    gap = ((approx - exact) / exact).abs().max()
    assert gap < 0.02, gap  # the stated bound: within 2 % on these clouds


def test_emd_approx_of_coincident_clouds_is_zero_not_nan():
    same = torch.ones(2, 16, 3)  # every point of both clouds at one place: cost 0 everywhere
    assert torch.equal(emd_approx(same, same), torch.zeros(2))
    assert torch.allclose(emd_approx(same, same + 1), torch.full((2,), 3 ** 0.5))


def test_emd_approx_converges_early_and_without_host_reads(monkeypatch):
    """Epsilon-scaling and over-relaxation stop well before the 500 iterations plain Sinkhorn ran; with
    ``tol=None`` a fixed schedule (no reads of the device) stays within the bound too."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 128, 3, generator=g)
    y = torch.randn(2, 128, 3, generator=g) * torch.tensor([1.5, 0.5, 1.0]) + 0.2
    exact = emd_exact(x, y)
    passes = []
    logsumexp = torch.logsumexp
    monkeypatch.setattr(torch, "logsumexp", lambda *a, **k: passes.append(1) or logsumexp(*a, **k))
    approx = emd_approx(x, y)
    assert ((approx - exact) / exact).abs().max() < 0.02
    assert len(passes) < 2 * 200, len(passes)  # two passes (rows, columns) per iteration
    fixed = emd_approx(x, y, tol=None, max_iterations=150)
    assert ((fixed - exact) / exact).abs().max() < 0.02
    with pytest.warns(UserWarning, match="did not reach"):
        emd_approx(x, y, max_iterations=20)
    with pytest.raises(ValueError, match="overrelax=2"):
        emd_approx(x, y, overrelax=2)


def test_set_metrics_known_answers():
    g = torch.Generator().manual_seed(3)
    refs = torch.randn(6, 64, 3, generator=g)
    same = set_metrics(refs, refs)
    assert same["MMD-CD"] < 1e-6 and same["COV-CD"] == 1.0
    # Hand-made distances: 2 samples, 3 references.
    d_sr = torch.tensor([[1.0, 4.0, 9.0], [2.0, 0.5, 7.0]])
    assert math.isclose(mmd(d_sr), (1.0 + 0.5 + 7.0) / 3, rel_tol=1e-6)
    assert coverage(d_sr) == 2 / 3
    # both samples match references of family "a": family "b" is not covered at all
    assert coverage_by_group(d_sr, ["a", "a", "b"]) == {"a": 1.0, "b": 0.0}
    assert coverage_by_group(d_sr, ["a", "b", "a"]) == {"a": 0.5, "b": 1.0}
    assert share_by_group(d_sr, ["a", "a", "b"]) == {"a": 1.0, "b": 0.0}
    assert share_by_group(d_sr, ["a", "b", "a"]) == {"a": 0.5, "b": 0.5}
    assert share_by_group(d_sr, ["b", "b", "a"]) == {"b": 1.0, "a": 0.0}  # groups in order of first reference
    grouped = set_metrics(refs, refs, groups=["x", "y"] * 3)
    assert grouped["COV-CD/x"] == grouped["COV-CD/y"] == 1.0
    assert grouped["SHARE-CD/x"] == grouped["SHARE-CD/y"] == 0.5


def test_one_nna_half_for_one_distribution_and_one_for_separated_sets():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(40, 64, 3, generator=g), torch.randn(40, 64, 3, generator=g)
    d = {k: pairwise(*v) for k, v in {"ab": (a, b), "aa": (a, a), "bb": (b, b)}.items()}
    assert 0.35 < one_nna(d["aa"], d["bb"], d["ab"]) < 0.65
    far = b + 5.0
    d_far = pairwise(a, far)
    assert one_nna(d["aa"], pairwise(far, far), d_far) == 1.0


def test_set_metrics_and_one_nna_name_an_empty_set():
    """An empty set of samples or references is named (it was an IndexError of min() or argmin())."""
    clouds = torch.randn(3, 8, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="got 0 samples and 3 references"):
        set_metrics(clouds[:0], clouds)
    with pytest.raises(ValueError, match="got 3 samples and 0 references"):
        set_metrics(clouds, clouds[:0])
    d = pairwise(clouds, clouds)
    with pytest.raises(ValueError, match="1-NNA compares two sets, got 3 samples and 0 references"):
        one_nna(d, d[:0, :0], d[:, :0])


def test_point_set_inputs_that_cannot_be_measured_are_named():
    """Misshapen or out-of-range inputs are errors that say what is wrong (they were IndexErrors and RuntimeErrors
    from deep inside), and the exact EMD of clouds that carry gradients is computed (on detached values)."""
    from pointcloud.ops import ball_query, knn

    a, b = torch.rand(2, 8, 3), torch.rand(3, 8, 3)
    with pytest.raises(ValueError, match=r"point sets \(B, N, D\) and \(B, M, D\), the same B and D, got \(2, 8, 3\)"):
        chamfer(a, b)
    with pytest.raises(ValueError, match="the same B and D"):
        chamfer(a[0], a[0])
    with pytest.raises(ValueError, match="k = -1: at least 1"):
        knn(a, a, -1)
    with pytest.raises(ValueError, match="chunk = 0"):
        knn(a, a, 1, chunk=0)
    with pytest.raises(ValueError, match="a radius >= 0 and at least one point"):
        ball_query(a, a, -0.1, 2)
    with pytest.raises(ValueError, match="a radius >= 0 and at least one point"):
        ball_query(a, a[:, :0], 0.1, 2)
    with pytest.raises(ValueError, match="groups: one name per reference cloud, got 1 for 2"):
        set_metrics(a, a, groups=["x"])
    assert set_metrics(a, a, metrics="cd").keys() == set_metrics(a, a).keys()
    assert torch.equal(emd_exact(a.requires_grad_(), a.detach() + 0.1), emd_exact(a.detach(), a.detach() + 0.1))


@pytest.mark.parametrize("metric", [chamfer, fscore, emd_exact, emd_approx])
def test_clouds_that_are_not_b_n_3_are_refused_by_every_pair_metric(metric):
    """Channels-first clouds ``(B, 3, N)`` would be read as 3 points of N coordinates; unequal batches, empty
    clouds and (EMD) unequal sizes are refused too."""
    x = torch.rand(2, 64, 3)
    with pytest.raises(ValueError, match=r"x: clouds are \(B, N, 3\) with N >= 1, got \(2, 3, 64\)"):
        metric(x.transpose(1, 2), x)
    with pytest.raises(ValueError, match=r"y: clouds are \(B, N, 3\) with N >= 1, got \(2, 0, 3\)"):
        metric(x, x[:, :0])
    with pytest.raises(ValueError, match=r"the same B and D|clouds of equal size"):
        metric(x, x[:1])
    if metric in (emd_exact, emd_approx):
        with pytest.raises(ValueError, match=r"clouds of equal size, got \(2, 64, 3\) and \(2, 32, 3\)"):
            metric(x, x[:, :32])
