"""Point operations against the plain-loop references of :mod:`pointcloud.reference`."""

import torch

from pointcloud.ops import (
    ball_query, chamfer_distance, farthest_point_sample, group, knn, normalize_coords, trilinear_devoxelize, voxelize,
)
from pointcloud.reference import ball_query_loop, chamfer_dense, fps_loop, knn_loop, voxelize_loop


def cloud(b=2, n=200, seed=0):
    return torch.rand(b, n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def test_fps_matches_naive():
    xyz = cloud()
    got = farthest_point_sample(xyz, 32)
    assert torch.equal(got, fps_loop(xyz, 32))
    assert len(set(got[0].tolist())) == 32


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
    feats = torch.randn(2, 4, 300, dtype=torch.float64)
    g = group(feats, got)
    assert g.shape == (2, 4, 40, k)
    assert torch.equal(g[1, :, 5, 3], feats[1, :, got[1, 5, 3]])


def test_voxelize_averages_features_per_voxel_and_devoxelize_interpolates():
    coords = cloud(b=2, n=500, seed=5).transpose(1, 2)
    feats = torch.randn(2, 3, 500, dtype=torch.float64)
    R = 6
    grid, norm = voxelize(feats, coords, R)
    torch.testing.assert_close(norm, normalize_coords(coords, R))
    torch.testing.assert_close(grid, voxelize_loop(feats, norm.round().long(), R))

    # devoxelizing a linear field reproduces it exactly (trilinear interpolation is exact on linear functions)
    idx = torch.arange(R, dtype=torch.float64)
    field = (2 * idx[:, None, None] - idx[None, :, None] + 0.5 * idx[None, None, :]).expand(2, 1, R, R, R)
    values = trilinear_devoxelize(field.contiguous(), norm)
    torch.testing.assert_close(values[:, 0], 2 * norm[:, 0] - norm[:, 1] + 0.5 * norm[:, 2])


def test_chamfer_matches_brute_force():
    x, y = cloud(n=80, seed=6), cloud(n=60, seed=7)
    got = chamfer_distance(x, y, chunk=16)
    torch.testing.assert_close(got, chamfer_dense(x, y))
    assert torch.allclose(chamfer_distance(x, x), torch.zeros(2, dtype=torch.float64))
