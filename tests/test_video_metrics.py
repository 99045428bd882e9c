"""video.metrics: frame_one_nna (leave-one-out 1-NNA of frames under the pixel L2 distance) on hand-computed sets;
psnr and ssim refuse integer frames."""

from __future__ import annotations

import sys

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


def test_frame_metrics_refuse_integer_frames_and_frames_of_other_shapes():
    """uint8 frames (0..255) scored as if in [-1, 1] gave PSNR of about -35 dB without a word; frames without a channel
    axis, of two shapes, or arrays are named too."""
    frames = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    for metric in (psnr, ssim):
        for x, y in ((frames, frames), (frames.float() / 127.5 - 1, frames), (frames, frames.float() / 127.5 - 1)):
            with pytest.raises(ValueError, match=r"frames are floats in \[-1, 1\], got torch\.(uint8|float32) and"):
                metric(x, y)
        grey = frames.float()[:, 0] / 127.5 - 1  # (B, H, W): no channel axis
        for x, y, error, message in ((grey[0], grey[0], ValueError, r"got \(16, 16\) and \(16, 16\).*frame\[None\]"),
                                     (grey[:, None], grey, ValueError, r"of one frame shape, got \(2, 1, 16, 16\) and"),
                                     (grey.numpy(), grey, TypeError, "torch tensors .* got ndarray and Tensor")):
            with pytest.raises(error, match=message):
                metric(x, y)
        samples = torch.rand(3, 2, 1, 16, 16) * 2 - 1  # samples of two frames against one target: broadcast
        assert torch.equal(metric(samples, grey[:, None]), metric(samples, grey[:, None].expand_as(samples)))


@pytest.mark.parametrize("a, b", [(-1.0, 1.0), (0.5, -0.2), (0.0, 0.0)])
def test_ssim_of_flat_frames_is_the_luminance_term_over_a_range_of_two(a, b):
    """Flat frames have no contrast or structure: SSIM is its luminance term, (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2
    + C1), with the frames moved from [-1, 1] to [0, 2] and C1 = (0.01 * 2)^2."""
    x, y = torch.full((2, 1, 16, 16), a), torch.full((2, 1, 16, 16), b)
    mx, my, c1 = a + 1, b + 1, (0.01 * 2) ** 2
    expected = torch.full((2,), (2 * mx * my + c1) / (mx**2 + my**2 + c1))
    torch.testing.assert_close(ssim(x, y), expected, rtol=1e-3, atol=1e-6)  # float32 variances: ~1e-7 off


def test_ssim_names_frames_too_small_for_it():
    """A frame 1 pixel high or wide was named by pytorch_msssim as a 3-d tensor; 2x2 has a result."""
    for h, w in ((1, 16), (16, 1)):
        with pytest.raises(ValueError, match=rf"ssim: frames of {h}x{w} pixels"):
            ssim(torch.zeros(2, 1, h, w), torch.zeros(2, 1, h, w))
    assert ssim(torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)).shape == (2,)


def test_ssim_without_pytorch_msssim_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_msssim", None)  # as if not installed
    frames = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ImportError, match=r"needs pytorch-msssim: pip install multigen-diffusion\[video\]"):
        ssim(frames, frames)
