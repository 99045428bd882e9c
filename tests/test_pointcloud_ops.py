"""Point operations against naive references written with plain loops."""

import itertools

import torch

from pointcloud.ops import (
    ball_query, chamfer_distance, farthest_point_sample, group, knn, normalize_coords, trilinear_devoxelize, voxelize,
)


def cloud(b=2, n=200, seed=0):
    return torch.rand(b, n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def test_fps_matches_naive():
    xyz = cloud()
    got = farthest_point_sample(xyz, 32)
    for b in range(2):
        chosen = [0]
        for _ in range(31):
            d = torch.stack([((xyz[b] - xyz[b, c]) ** 2).sum(-1) for c in chosen]).min(0).values
            chosen.append(int(d.argmax()))
        assert got[b].tolist() == chosen
    assert len(set(got[0].tolist())) == 32


def test_knn_matches_brute_force_and_chunks_agree():
    q, r = cloud(n=50, seed=1), cloud(n=120, seed=2)
    d, i = knn(q, r, 5)
    d2, i2 = knn(q, r, 5, chunk=7)
    assert torch.equal(i, i2)
    for b, m in itertools.product(range(2), range(50)):
        full = ((r[b] - q[b, m]) ** 2).sum(-1)
        assert i[b, m].tolist() == full.argsort()[:5].tolist()
        torch.testing.assert_close(d[b, m], full.sort().values[:5])


def test_ball_query_matches_naive():
    xyz, centres = cloud(n=300, seed=3), cloud(n=40, seed=4)
    radius, k = 0.35, 8
    got = ball_query(centres, xyz, radius, k)
    for b, m in itertools.product(range(2), range(40)):
        d = ((xyz[b] - centres[b, m]) ** 2).sum(-1)
        inside = [j for j in range(300) if d[j] <= radius**2][:k]
        if not inside:
            inside = [int(d.argmin())]
        expected = inside + [inside[0]] * (k - len(inside))
        assert got[b, m].tolist() == expected
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
    vox = norm.round().long()
    naive = torch.zeros(2, 3, R, R, R, dtype=torch.float64)
    count = torch.zeros(2, R, R, R, dtype=torch.float64)
    for b in range(2):
        for n in range(500):
            x, y, z = vox[b, :, n].tolist()
            naive[b, :, x, y, z] += feats[b, :, n]
            count[b, x, y, z] += 1
    naive = naive / count.clamp(min=1)[:, None]
    torch.testing.assert_close(grid, naive)

    # devoxelizing a linear field reproduces it exactly (trilinear interpolation is exact on linear functions)
    idx = torch.arange(R, dtype=torch.float64)
    field = (2 * idx[:, None, None] - idx[None, :, None] + 0.5 * idx[None, None, :]).expand(2, 1, R, R, R)
    values = trilinear_devoxelize(field.contiguous(), norm)
    torch.testing.assert_close(values[:, 0], 2 * norm[:, 0] - norm[:, 1] + 0.5 * norm[:, 2])


def test_chamfer_matches_brute_force():
    x, y = cloud(n=80, seed=6), cloud(n=60, seed=7)
    got = chamfer_distance(x, y, chunk=16)
    d = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)
    torch.testing.assert_close(got, d.min(2).values.mean(1) + d.min(1).values.mean(1))
    assert torch.allclose(chamfer_distance(x, x), torch.zeros(2, dtype=torch.float64))
