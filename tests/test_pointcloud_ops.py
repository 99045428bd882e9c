"""Point operations against the plain-loop references of :mod:`pointcloud.reference`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pointcloud.ops import (
    ball_query, chamfer_distance, farthest_point_sample, farthest_point_sample_torch, group, knn,
    trilinear_devoxelize, voxelization, voxelize,
)
from pointcloud.reference import ball_query_loop, chamfer_dense, fps_loop, knn_loop, voxelize_loop

REPO = Path(__file__).resolve().parent.parent


def cloud(b=2, n=200, seed=0):
    return torch.rand(b, n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def test_fps_matches_naive():
    xyz = cloud()
    got = farthest_point_sample(xyz, 32)
    assert torch.equal(got, fps_loop(xyz, 32))
    assert len(set(got[0].tolist())) == 32


def test_fps_from_given_start_breaks_ties_to_lowest_index():
    # the 8 corners of a cube: from corner 0 the farthest is 7, then the other 6 tie (each 1 from 0 or 7)
    corners = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=torch.float32)[None]
    assert farthest_point_sample(corners, 4).tolist() == [[0, 7, 1, 2]]
    assert farthest_point_sample(corners, 3, torch.tensor([6])).tolist() == [[6, 1, 0]]


def fps_cases() -> list[tuple[torch.Tensor, int, torch.Tensor | None, int]]:
    """(cloud, m, start, max_block) cases: random float32 clouds of 1, 37 and 1 000 points from given starts
    (and the default), and integer grid points, where most picks are ties, in one block and swept in tiles."""
    cases = []
    for n, ms in [(1, [1]), (37, [1, 4, 12]), (1000, [2, 12])]:
        g = torch.Generator().manual_seed(n)
        xyz = torch.randn(3, n, 3, generator=g) * torch.tensor([1.0, 0.5, 2.0])
        start = torch.randint(0, n, (3,), generator=g)
        cases += [(xyz, m, start, 8192) for m in ms] + [(xyz, ms[0], None, 8192)]
    grid = torch.stack(torch.meshgrid(*[torch.arange(4.0)] * 3, indexing="ij"), -1).reshape(1, 64, 3)
    grids = torch.cat([grid, grid[:, torch.randperm(64, generator=torch.Generator().manual_seed(0))]])
    return cases + [(grids, 10, torch.tensor([0, 5]), 8192), (grids, 10, torch.tensor([0, 5]), 32)]


INTERPRET = """
import sys, torch
from pointcloud.fps_triton import farthest_point_sample_triton
cases = torch.load(sys.argv[1])
torch.save([farthest_point_sample_triton(xyz, m, start, max_block) for xyz, m, start, max_block in cases], sys.argv[2])
"""


def _interpreter_runs_loops() -> bool:
    """False for Triton < 3.7 beside NumPy >= 2.4: that interpreter turns a loop bound into an int with
    ``int(array of shape (1,))``, which NumPy 2.4 refuses (fixed in Triton 3.7 with a squeeze; the CUDA
    compiler is not affected). Seen with torch 2.11's Triton 3.6, the GPU machine's."""
    import numpy
    import triton

    def major_minor(v: str) -> tuple[int, int]:
        return tuple(int(part) for part in v.split(".")[:2])

    return major_minor(triton.__version__) >= (3, 7) or major_minor(numpy.__version__) < (2, 4)


def test_fps_triton_kernel_equals_reference(tmp_path):
    """The Triton kernel under Triton's interpreter equals the PyTorch loop, index for index. The interpreter
    must be chosen before Triton is imported (its library functions are made then), hence a subprocess."""
    pytest.importorskip("triton", reason="triton is not installed (the dev extra installs it on Linux)")
    if not _interpreter_runs_loops():
        pytest.skip("Triton < 3.7's interpreter cannot run a loop with NumPy >= 2.4 (the CUDA test covers the GPU)")
    cases = fps_cases()
    torch.save(cases, tmp_path / "cases.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, "-c", INTERPRET, tmp_path / "cases.pt", tmp_path / "out.pt"], env=env, cwd=REPO,
                   check=True)
    for (xyz, m, start, max_block), got in zip(cases, torch.load(tmp_path / "out.pt"), strict=True):
        assert torch.equal(got, farthest_point_sample_torch(xyz, m, start)), (xyz.shape, m, start, max_block)
    grids, m, start, _ = cases[-1]
    d = ((grids[:, :, None] - grids[:, None]) ** 2).sum(-1)
    nearest = d.gather(1, farthest_point_sample(grids, m, start)[:, :, None].expand(-1, -1, 64)).cummin(1).values
    ties = (nearest.amax(-1, keepdim=True) == nearest).sum(-1)[:, :-1]  # points at the largest distance
    assert (ties > 1).float().mean() > 0.5  # most grid picks were ties


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (MULTIGEN_TEST_DEVICE=cuda on a GPU machine)")
def test_fps_triton_kernel_on_cuda_equals_reference():
    """The compiled kernel, as ``farthest_point_sample`` dispatches to it on CUDA, equals the PyTorch loop on the
    CPU index for index: the interpreter's cases, and 8 clouds of 2 048 -> 1 024 (the benchmark's size) in one
    block and swept in tiles."""
    pytest.importorskip("triton", reason="triton is not installed")
    from pointcloud.fps_triton import farthest_point_sample_triton

    big = torch.randn(8, 2048, 3, generator=torch.Generator().manual_seed(0))
    start = torch.randint(0, 2048, (8,), generator=torch.Generator().manual_seed(1))
    for xyz, m, start, max_block in [*fps_cases(), (big, 1024, start, 8192), (big, 1024, start, 512)]:
        got = farthest_point_sample_triton(xyz.cuda(), m, None if start is None else start.cuda(), max_block)
        assert torch.equal(got.cpu(), farthest_point_sample_torch(xyz, m, start)), (xyz.shape, m, max_block)
    assert torch.equal(farthest_point_sample(big.cuda(), 1024).cpu(), farthest_point_sample_torch(big, 1024))


def test_fps_triton_rejects_other_dtypes():
    pytest.importorskip("triton", reason="triton is not installed (the dev extra installs it on Linux)")
    from pointcloud.fps_triton import farthest_point_sample_triton

    with pytest.raises(TypeError, match="float32"):
        farthest_point_sample_triton(cloud(), 4)


def test_knn_matches_brute_force_and_chunks_agree():
    q, r = cloud(n=50, seed=1), cloud(n=120, seed=2)
    d, i = knn(q, r, 5)
    d2, i2 = knn(q, r, 5, chunk=7)
    assert torch.equal(i, i2)
    d_ref, i_ref = knn_loop(q, r, 5)
    assert torch.equal(i, i_ref)
    torch.testing.assert_close(d, d_ref)


def test_ball_query_matches_naive():
    xyz, centres = cloud(n=300, seed=3), cloud(n=40, seed=4)
    radius, k = 0.35, 8
    got = ball_query(centres, xyz, radius, k)
    assert torch.equal(got, ball_query_loop(centres, xyz, radius, k))
    assert (got[..., 1:] != got[..., :1]).any()  # some balls hold several points
    for r, n in [(0.05, 300), (0.6, 5)]:  # most balls empty (the nearest point instead); fewer points than k
        assert torch.equal(ball_query(centres, xyz[:, :n], r, k), ball_query_loop(centres, xyz[:, :n], r, k))
    assert (torch.cdist(centres, xyz).amin(-1) > 0.05).float().mean() > 0.5
    feats = torch.randn(2, 4, 300, dtype=torch.float64)
    g = group(feats, got)
    assert g.shape == (2, 4, 40, k)
    assert torch.equal(g[1, :, 5, 3], feats[1, :, got[1, 5, 3]])


def test_voxelize_averages_features_per_voxel_and_devoxelize_interpolates():
    coords = cloud(b=2, n=500, seed=5).transpose(1, 2)
    feats = torch.randn(2, 3, 500, dtype=torch.float64)
    R = 6
    grid, norm = voxelize(feats, coords, R)
    # PVCNN's normalisation in closed form: centred, the farthest point at distance R / 2 from the grid's centre
    centred = coords - coords.mean(2, keepdim=True)
    expected = (centred / (2 * centred.norm(dim=1).amax(1))[:, None, None] + 0.5) * R
    torch.testing.assert_close(norm, expected.clamp(0, R - 1))
    assert torch.allclose((expected - R / 2).norm(dim=1).amax(1), torch.full((2,), R / 2, dtype=torch.float64))
    torch.testing.assert_close(grid, voxelize_loop(feats, norm.round().long(), R))
    vox = voxelization(coords, R)  # kept by layers that voxelize the same cloud again
    assert torch.equal(vox.average(feats), grid)
    assert torch.equal(vox.interpolate(grid), trilinear_devoxelize(grid, norm))

    # devoxelizing a linear field reproduces it exactly (trilinear interpolation is exact on linear functions)
    idx = torch.arange(R, dtype=torch.float64)
    field = (2 * idx[:, None, None] - idx[None, :, None] + 0.5 * idx[None, None, :]).expand(2, 1, R, R, R)
    values = trilinear_devoxelize(field.contiguous(), norm)
    torch.testing.assert_close(values[:, 0], 2 * norm[:, 0] - norm[:, 1] + 0.5 * norm[:, 2])


def test_pvcnn_voxelizes_each_level_once_per_forward(monkeypatch):
    """The encoder and decoder blocks on the same points share one voxelization per resolution (18 PVConv
    blocks, 4 levels with voxel branches), and the grids equal voxelizing from scratch."""
    import pointcloud.model as model

    made = []

    def counted(coords, resolution):
        made.append((coords.shape[-1], resolution))
        return voxelization(coords, resolution)

    monkeypatch.setattr(model, "voxelization", counted)
    net = model.PVCNNUNet(model.pvd_spec(0.25, 0.25, 256))
    net(cloud(2, 256).float(), torch.rand(2))
    assert sorted(made) == [(8, 2), (32, 2), (128, 4), (256, 8)]  # (points, resolution)
    assert sum(isinstance(m, model.PVConv) for m in net.modules()) == 18


def test_pvd_attention_blocks_start_as_identity_and_are_permutation_equivariant():
    """``attention`` adds PVD's two blocks, over the voxels of the second stage's first PVConv and over the coarsest
    points; each is the identity at initialisation (zero output projection) and treats positions as a set."""
    import pointcloud.model as model

    net = model.PVCNNUNet(model.pvd_spec(0.25, 0.25, 256, attention=True))
    blocks = [m for m in net.modules() if isinstance(m, model.SelfAttention)]
    assert len(blocks) == 2 and net.global_attention is blocks[-1]
    g = torch.Generator().manual_seed(0)
    grid = torch.randn(2, 16, 4, 4, 4, generator=g)
    assert torch.equal(blocks[0](grid), grid)
    block = blocks[-1]
    torch.nn.init.normal_(block.attn.out.weight, generator=g)
    feats, perm = torch.randn(2, 128, 9, generator=g), torch.randperm(9, generator=g)
    assert not torch.allclose(block(feats), feats)
    torch.testing.assert_close(block(feats)[..., perm], block(feats[..., perm]))
    assert net(cloud(2, 256).float(), torch.rand(2)).shape == (2, 256, 3)


def test_chamfer_matches_brute_force():
    x, y = cloud(n=80, seed=6), cloud(n=60, seed=7)
    got = chamfer_distance(x, y, chunk=16)
    torch.testing.assert_close(got, chamfer_dense(x, y))
    assert torch.allclose(chamfer_distance(x, x), torch.zeros(2, dtype=torch.float64))


def test_distances_keep_float32_precision_far_from_the_origin():
    """Chamfer distances and neighbours of float32 clouds 100 units out equal those at the origin (the expanded
    square distance, uncentred, lost a third of the neighbours there)."""
    x, y = cloud(n=300, seed=8).float() * 0.3, cloud(n=300, seed=9).float() * 0.3
    shift = torch.tensor([100.0, 50.0, -100.0])
    torch.testing.assert_close(chamfer_distance(x + shift, y + shift), chamfer_distance(x, y), rtol=1e-4, atol=1e-6)
    assert chamfer_distance(x + shift, x + shift).abs().max() < 1e-6
    assert torch.equal(knn(x + shift, y + shift, 4)[1], knn_loop(x.double(), y.double(), 4)[1])


def test_fps_start_must_index_the_cloud():
    for start in (5, -1):
        with pytest.raises(ValueError, match="start must index the 5 points"):
            farthest_point_sample(cloud(b=1, n=5), 2, torch.tensor([start]))


def test_point_ops_keep_to_the_device(device):
    """FPS (the loop on meta, the Triton kernel on CUDA), kNN, ball query, voxelize/devoxelize, Chamfer and
    Sinkhorn EMD make every tensor on their inputs' device; on a real device they equal the CPU results."""
    from pointcloud.metrics import emd_approx

    def run(xyz: torch.Tensor, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        centres, meta = xyz[:, :40], xyz.device.type == "meta"
        grid, norm = voxelize(feats, xyz.transpose(1, 2), 6)
        return {
            "fps": farthest_point_sample(xyz, 16, torch.tensor([3, 7], device=xyz.device)),
            "fps from 0": farthest_point_sample(xyz, 16),
            "knn": knn(centres, xyz, 5)[1], "knn distances": knn(centres, xyz, 5)[0],
            "ball query": ball_query(centres, xyz, 0.3, 8),
            "voxelize": grid, "devoxelize": trilinear_devoxelize(grid, norm),
            "chamfer": chamfer_distance(xyz, centres, chunk=16),
            # meta holds no values to test convergence on: a short fixed schedule there
            "emd": emd_approx(xyz[:, :64], xyz[:, 64:128], **({"tol": None, "max_iterations": 20} if meta else {})),
        }

    g = torch.Generator().manual_seed(0)
    xyz, feats = torch.rand(2, 300, 3, generator=g) * 2 - 1, torch.randn(2, 4, 300, generator=g)
    on_cpu, on_device = run(xyz, feats), run(xyz.to(device), feats.to(device))
    for name, want in on_cpu.items():
        got = on_device[name]
        assert got.device.type == device.type and got.shape == want.shape and got.dtype == want.dtype, name
        if device.type != "meta":
            if want.is_floating_point():  # Sinkhorn may stop at another check of its tolerance on another device
                rtol = 1e-2 if name == "emd" else 1e-4
                torch.testing.assert_close(got.cpu(), want, rtol=rtol, atol=1e-5, msg=name)
            else:
                assert torch.equal(got.cpu(), want), name
