"""Frame-quality metrics (PSNR, SSIM), the MCVD evaluation protocol, and trivial baselines.

Frames are ``(..., C, H, W)`` in ``[-1, 1]``; clips ``(B, T, C, H, W)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from multigen.metrics import one_nna
from multigen.precision import float32

from .conditioning import blended_observed


PSNR_CAP = 60.0
"""dB: at or above it frames differ by less than 8-bit quantisation noise (about 59 dB), so :func:`psnr` stops
there. Identical frames (a copy of a static scene, an exact motion-compensated prediction) would otherwise score
``inf`` and make every mean over frames ``inf``."""


def _check_frames(x: Tensor, y: Tensor) -> torch.Size:
    """The shape ``(..., C, H, W)`` that ``x`` and ``y`` broadcast to; an error for anything else (not tensors, no
    channel axis, shapes that do not broadcast) and for integer frames (uint8 ``0..255`` would be scored as if in
    ``[-1, 1]``, silently wrong)."""
    if not (isinstance(x, Tensor) and isinstance(y, Tensor)):
        raise TypeError(f"frames are torch tensors (torch.from_numpy converts an array), got {type(x).__name__} and "
                        f"{type(y).__name__}")
    try:
        shape = torch.broadcast_shapes(x.shape, y.shape)
    except RuntimeError:
        shape = None
    if shape is None or min(x.dim(), y.dim()) < 3 or shape[-3:] != x.shape[-3:] or shape[-3:] != y.shape[-3:]:
        raise ValueError(f"frames are (..., C, H, W) of one frame shape, got {tuple(x.shape)} and {tuple(y.shape)} "
                         f"(a grey (H, W) frame: frame[None])")
    if not (x.is_floating_point() and y.is_floating_point()):
        raise ValueError(f"frames are floats in [-1, 1], got {x.dtype} and {y.dtype} (video.io.from_uint8 converts "
                         f"uint8 frames)")
    return shape


def psnr(x: Tensor, y: Tensor, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio per frame, ``(...)`` (``x`` and ``y`` broadcast), at most :data:`PSNR_CAP`
    (identical frames score it); ``data_range`` is the span of the frames' values."""
    _check_frames(x, y)
    mse = ((x.float() - y.float()) ** 2).flatten(-3).mean(-1)
    return (10 * torch.log10(data_range**2 / mse)).clamp(max=PSNR_CAP)


@float32
def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Structural similarity per frame, ``(...)`` (``x`` and ``y`` broadcast), via ``pytorch_msssim``, in float32 also
    under autocast, of frames in ``[-1, 1]`` (moved to ``[0, 2]``: SSIM's luminance term depends on where the
    values lie).

    The Gaussian window is 11 px (the standard) or, for frames smaller than that, the largest odd size that fits.
    """
    try:
        from pytorch_msssim import ssim as _ssim
    except ImportError as e:
        raise ImportError("video.metrics.ssim needs pytorch-msssim: pip install multigen-diffusion[video]") from e
    shape = _check_frames(x, y)
    x, y = x.expand(shape), y.expand(shape)
    lead = shape[:-3]
    C, H, W = shape[-3:]
    if min(H, W) < 2:  # pytorch_msssim squeezes such an axis away and names a wrong shape
        raise ValueError(f"ssim: frames of {H}x{W} pixels (H x W); it needs at least 2x2")
    win = min(11, H - (1 - H % 2), W - (1 - W % 2))
    a = x.float().reshape(-1, C, H, W)
    b = y.float().reshape(-1, C, H, W)
    return _ssim(a + 1, b + 1, data_range=2.0, size_average=False, win_size=win).reshape(lead)


def best_and_mean_scores(samples: Tensor, target: Tensor, generated: Tensor) -> dict[str, Tensor]:
    """MCVD protocol: per clip, the best and the mean over ``S`` samples of the frame-averaged score.

    Args:
        samples: ``(S, B, T, C, H, W)``.
        target: ``(B, T, C, H, W)``.
        generated: bool ``(T,)`` or ``(B, T)``: the frames that were generated (scored).

    Returns:
        ``psnr_best``, ``psnr_mean``, ``ssim_best``, ``ssim_mean``, averaged over clips, as 0-dim
        tensors on ``target``'s device (nothing is read back to the host).
    """
    gen = generated.to(target.device).expand(target.shape[:2])
    out = {}
    for name, fn in (("psnr", psnr), ("ssim", ssim)):
        per_frame = fn(samples, target.expand_as(samples))  # (S, B, T); observed frames: PSNR's cap, SSIM 1
        per_clip = torch.where(gen, per_frame, 0.0).sum(-1) / gen.sum(-1)  # (S, B)
        out[f"{name}_best"] = per_clip.amax(0).mean()
        out[f"{name}_mean"] = per_clip.mean()
    return out


def linear_blend(clip: Tensor, observed: Tensor) -> Tensor:
    """Baseline of every evaluated task: unobserved frames blend linearly between the nearest observed ones
    (interpolation), and frames outside the observed range copy the nearest observed frame (prediction: the last
    context frame repeated forward, or the first repeated backward).

    ``observed`` is bool ``(T,)`` with at least one True (not checked: that would read the device).
    """
    return blended_observed(clip, observed.to(clip.device).expand(clip.shape[:2]))


def frame_one_nna(samples: Tensor, real: Tensor) -> float:
    """Leave-one-out 1-NNA of generated frames ``(n, C, H, W)`` against real ones ``(m, C, H, W)`` under the
    pixel L2 distance (0.5 is ideal). Take frames from distinct clips: neighbouring frames of one clip are each
    other's nearest neighbours, which pushes the accuracy towards 1 even for perfect samples."""
    a, b = samples.detach().flatten(1).double().cpu(), real.detach().flatten(1).double().cpu()
    return one_nna(torch.cdist(a, a), torch.cdist(b, b), torch.cdist(a, b))
