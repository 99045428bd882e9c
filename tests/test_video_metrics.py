"""video.metrics: frame_one_nna (leave-one-out 1-NNA of frames under the pixel L2 distance) on hand-computed sets;
psnr and ssim refuse integer frames."""

from __future__ import annotations

import pytest
import torch

from video.metrics import frame_one_nna, psnr, ssim


def frames(*pixels: tuple[float, ...]) -> torch.Tensor:
    """Frames ``(n, 1, 1, P)`` whose pixels are the given values."""
    return torch.tensor(pixels, dtype=torch.float32)[:, None, None, :]


def test_frame_one_nna_hand_computed_one_pixel() -> None:
    # samples 0, 1, 10 and references 0.4, 5, 5.2: only 5 and 5.2 have a nearest neighbour of their own set
    assert frame_one_nna(frames((0,), (1,), (10,)), frames((0.4,), (5,), (5.2,))) == 2 / 6


def test_frame_one_nna_is_pixel_l2_not_l1() -> None:
    # samples (0, 0), (2, 2) and the reference (0, 3): under L2 the first sample's nearest is the other sample
    # (2.83 < 3), so 1 of 3 is right; under L1 (4 > 3) none would be
    assert frame_one_nna(frames((0, 0), (2, 2)), frames((0, 3),)) == 1 / 3


def test_frame_one_nna_separated_sets_and_same_set() -> None:
    g = torch.Generator().manual_seed(0)
    real = torch.rand(64, 1, 4, 4, generator=g)
    assert frame_one_nna(real + 10, real) == 1.0
    same = frame_one_nna(torch.rand(64, 1, 4, 4, generator=g), real)
    assert 0.3 < same < 0.7


def test_frame_metrics_refuse_integer_frames():
    """uint8 frames (0..255) scored as if in [-1, 1] gave PSNR of about -35 dB without a word."""
    frames = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    for metric in (psnr, ssim):
        with pytest.raises(ValueError, match=r"frames are floats in \[-1, 1\], got torch.uint8"):
            metric(frames, frames)
