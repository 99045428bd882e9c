"""Measurements stay float32 under bf16 autocast (training and evaluation with train.mixed_precision=bf16): the
same distances, neighbours and SSIM as without it, where autocast used to run their products in bf16."""

import torch

from multigen.precision import float32
from pointcloud.metrics import chamfer, emd_approx
from pointcloud.ops import ball_query, knn
from video.metrics import ssim


@float32
def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b


def test_float32_turns_autocast_off_only_inside():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    exact = a @ b
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16  # autocast is on here ...
        assert torch.equal(_product(a, b), exact)
        assert (a @ b).dtype == torch.bfloat16  # ... and again after
    assert _product(a.to("meta"), b.to("meta")).device.type == "meta"  # no autocast to turn off there


def test_point_and_frame_measurements_are_the_same_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    x = 0.5 * torch.randn(4, 256, 3, generator=g)
    y = x + 0.05 * torch.randn(x.shape, generator=g)
    clips = torch.rand(2, 4, 1, 32, 32, generator=g) * 2 - 1
    noisy = (clips + 0.1 * torch.randn(clips.shape, generator=g)).clamp(-1, 1)

    def measure():
        return [chamfer(x, y), knn(x, y, 8)[1], ball_query(x, y, 0.3, 16), emd_approx(x[:2], y[:2]),
                ssim(clips, noisy)]

    plain = measure()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = measure()
    for name, p, m in zip(["chamfer", "knn", "ball query", "sinkhorn emd", "ssim"], plain, mixed):
        assert m.dtype == p.dtype and torch.equal(m, p), name
