"""Procedural shapes and partial views."""

import numpy as np
import pytest
import torch

from pointcloud.ops import knn
from pointcloud.shapes import FAMILIES, ProceduralShapes, make_shape, make_surface
from pointcloud.views import partial_masks, visible_points


def test_shapes_deterministic_normalised_and_split():
    a, b = ProceduralShapes(num_shapes=10, points=512), ProceduralShapes(num_shapes=10, points=512)
    val = ProceduralShapes(num_shapes=10, points=512, split="val")
    for i in range(10):
        x = a[i]
        assert x.shape == (512, 3) and x.dtype == torch.float32 and torch.isfinite(x).all()
        assert torch.equal(x, b[i]) and not torch.equal(x, val[i])
        assert abs(float(x.norm(dim=1).max()) - 1) < 1e-5  # farthest point on the unit sphere
        centre = (x.min(0).values + x.max(0).values) / 2
        assert centre.abs().max() < 1e-5
    with pytest.raises(ValueError, match="unknown shape families"):
        ProceduralShapes(families=["spaceship"])


@pytest.mark.parametrize("family", FAMILIES)
def test_surface_is_dense_and_in_the_cloud_frame(family):
    cloud = torch.from_numpy(make_shape(family, 256, 5))[None]
    surface = torch.from_numpy(make_surface(family, 256, 5))[None]
    to_surface = knn(cloud, surface, 1)[0][..., 0]  # squared distances
    from_surface = knn(surface, cloud, 1)[0][..., 0]
    assert to_surface.mean() < 0.1 * from_surface.mean()  # the cloud lies on the surface, which is denser
    assert knn(cloud * 1.05, surface, 1)[0].mean() > 3 * to_surface.mean()  # another frame is detected
    shapes = ProceduralShapes([family], 1, 256, seed=2)
    assert torch.equal(shapes.surface(0, 100), torch.from_numpy(make_surface(family, 256, shapes.base, dense=100)))


def test_families_differ_in_shape_statistics():
    # Bounding-box extents (sorted) distinguish the families on average.
    ext = {f: np.mean([np.sort(np.ptp(make_shape(f, 512, s), 0)) for s in range(8)], 0) for f in FAMILIES}
    assert ext["airplane"][0] < 0.4 * ext["airplane"][2]  # flat: low against span and length
    assert ext["torus"][0] < 0.4 * ext["torus"][2] and ext["torus"][1] > 0.9 * ext["torus"][2]  # a flat ring
    assert ext["vase"][0] > 0.95 * ext["vase"][1]  # round: two equal horizontal extents
    assert ext["table"][2] > 1.5 * ext["table"][0]  # longer than high
    shapes = {f: make_shape(f, 512, 0) for f in FAMILIES}
    assert len({tuple(np.round(np.ptp(s, 0), 3)) for s in shapes.values()}) == len(FAMILIES)


def test_visibility_of_a_sphere_and_partial_masks():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(2000, 3))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    seen = visible_points(p, np.array([0.0, 0.0, 5.0]))
    assert (p[seen, 2] > -0.05).all()  # nothing from the far side
    assert seen.sum() > 0.6 * (p[:, 2] > 0.3).sum()  # most of the near cap
    clouds = torch.from_numpy(p[None].repeat(3, 0)).float()
    masks = partial_masks(clouds, 200, seed=1)
    assert masks.shape == (3, 2000) and (masks.sum(1) == 200).all()
    assert torch.equal(masks, partial_masks(clouds, 200, seed=1))
    # The partial view is one-sided: its points lie within a hemisphere around some direction.
    for cloud, mask in zip(clouds, masks):
        direction = cloud[mask].mean(0)
        assert (cloud[mask] @ direction > -0.1).float().mean() > 0.95


def test_viewpoints_lie_outside_the_unit_sphere_and_a_short_view_fills_up_nearest_first():
    from pointcloud.views import partial_mask, random_viewpoint

    rng = np.random.default_rng(0)
    eyes = np.stack([random_viewpoint(rng) for _ in range(100)])
    assert np.allclose(np.linalg.norm(eyes, axis=1), 2.5)
    p = rng.normal(size=(300, 3))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    assert visible_points(p, eyes[0]).mean() < 0.8  # from outside, much of the far side is hidden (inside: all seen)
    # asked for more points than are visible: the hidden points nearest the viewpoint fill up
    eye = random_viewpoint(np.random.default_rng(5))
    visible = visible_points(p, eye)
    mask = partial_mask(p, 250, np.random.default_rng(5))
    filled, left = mask & ~visible, ~mask
    assert mask.sum() == 250 and (mask >= visible).all() and filled.any()
    distance = np.linalg.norm(p - eye, axis=1)
    assert distance[filled].max() <= distance[left].min()


def test_every_seed_and_split_draws_its_own_shapes():
    firsts = [ProceduralShapes(num_shapes=1, points=64, seed=s, split=split)[0] for s in range(4)
              for split in ("train", "val")]
    assert all(not torch.equal(a, b) for i, a in enumerate(firsts) for b in firsts[i + 1:])
