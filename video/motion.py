"""Global (whole-frame) motion between frames: a similarity found by phase correlation and Gauss-Newton.

Frames are ``(..., C, H, W)``. A motion is ``(..., 4)``: ``(dx, dy, log_scale, angle)``, the map
``M(q) = c + s R(angle) (q - c) + (dx, dy)`` about the frame's centre ``c``, in pixels (x right, y down;
a positive angle turns clockwise on screen), with ``s = exp(log_scale)``. ``b`` is ``a`` moved by a motion
when ``b(p) = a(M^{-1}(p))``: content at ``q`` in ``a`` appears at ``M(q)`` in ``b``. At constant velocity
the four numbers grow linearly with time (exact for a pan, a zoom or a turn alone).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from multigen.precision import float32

LOG_SCALES = (-0.4, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4)  # zooms tried before refinement: up to 1.5x
_STEP_LIMIT = (1.0, 1.0, 0.05, 0.05)  # the most one Gauss-Newton step moves each parameter


def _tukey(n: int, device: torch.device, alpha: float = 0.5) -> Tensor:
    """A Tukey window ``(n,)``: flat in the middle, cosine tapers over ``alpha / 2`` of each end."""
    x = torch.linspace(0, 1, n, device=device)
    edge = torch.minimum(x, 1 - x)  # distance to the nearer end, in [0, 1/2]
    return torch.where(edge < alpha / 2, 0.5 * (1 - torch.cos(2 * math.pi * edge / alpha)), torch.ones_like(x))


def phase_correlation(a: Tensor, b: Tensor) -> Tensor:
    """The whole-pixel translation ``d`` ``(..., 2)`` that best maps frames ``a`` onto ``b`` (both
    ``(..., C, H, W)``): the peak of their phase correlation on the channel mean. A Tukey window tapers the borders
    (a non-periodic frame's edges would pull the peak to 0) but keeps the middle, so that moves of up to ~40 % of
    the frame are found (a Hann window lost 12 % of 14-pixel pans at 32 x 32). Each component lies in
    ``[-size/2, size/2)``: larger moves alias."""
    H, W = a.shape[-2:]
    window = torch.outer(_tukey(H, a.device), _tukey(W, a.device))

    def spectrum(x: Tensor) -> Tensor:
        x = x.float().mean(-3)
        return torch.fft.rfft2((x - x.mean((-2, -1), keepdim=True)) * window)

    cross = spectrum(b) * spectrum(a).conj()
    corr = torch.fft.irfft2(cross / cross.abs().clamp(min=1e-12), s=(H, W))  # (..., H, W): a peak at d
    flat = corr.flatten(-2).argmax(-1)
    wrap = lambda f, n: torch.where(f >= n / 2, f - n, f).float()  # noqa: E731
    return torch.stack([wrap(flat % W, W), wrap(flat // W, H)], -1)


def _grid(frames: Tensor, motion: Tensor) -> Tensor:
    """``grid_sample``'s grid ``(N, H, W, 2)`` reading frames ``(N, C, H, W)`` at ``M^{-1}(p)`` for motions
    ``(N, 4)``: ``M^{-1}(p) = c + R(-angle) (p - c - d) / s``, in grid_sample's ``[-1, 1]`` units."""
    H, W = frames.shape[-2:]
    m = motion.to(frames.dtype)
    cos, sin, inv = m[:, 3].cos(), m[:, 3].sin(), torch.exp(-m[:, 2])
    dx, dy = m[:, 0], m[:, 1]
    # affine_grid's rows, written out: its batched 3 x 2 matmul costs more than the warp itself at these sizes
    x = ((torch.arange(W, device=frames.device, dtype=frames.dtype) * 2 + 1) / W - 1)[None, None, :]
    y = ((torch.arange(H, device=frames.device, dtype=frames.dtype) * 2 + 1) / H - 1)[None, :, None]
    row = lambda a, b, c: a[:, None, None] * x + b[:, None, None] * y + c[:, None, None]  # noqa: E731
    gx = row(cos * inv, sin * inv * H / W, -2 / W * (cos * dx + sin * dy) * inv)
    gy = row(-sin * inv * W / H, cos * inv, -2 / H * (-sin * dx + cos * dy) * inv)
    return torch.stack([gx, gy], -1)  # (N, H, W, 2)


def _sample(frames: Tensor, grid: Tensor, padding: str) -> Tensor:
    """``frames`` ``(N, C, H, W)`` read at ``grid`` ``(N, H, W, 2)``: bilinear, ``padding`` outside the frame."""
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def warp(frames: Tensor, motion: Tensor) -> Tensor:
    """``frames`` ``(N, C, H, W)`` moved by ``motion`` ``(N, 4)``: ``out(p) = frames(M^{-1}(p))``, bilinear, the
    border pixels repeated where the frame has no content."""
    return _sample(frames, _grid(frames, motion), "border")


def warp_and_coverage(frames: Tensor, motion: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`warp` ``(N, C, H, W)`` and where it has content ``(N, 1, H, W)``: 1 where ``M^{-1}(p)`` lies inside
    the frame, 0 where it repeats a border pixel, fractions along the edge (bilinear); one sampling grid for both."""
    grid = _grid(frames, motion)
    ones = frames.new_ones(frames.shape[0], 1, *frames.shape[2:])
    return _sample(frames, grid, "border"), _sample(ones, grid, "zeros")


def _residual(a: Tensor, b: Tensor, motion: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``b - warp(a, motion)`` ``(N, C, H, W)``, the pixels whose source lies inside ``a`` ``(N, 1, H, W)`` (0 or 1),
    and the mean squared residual over them ``(N,)``."""
    moved, cover = warp_and_coverage(a, motion)
    inside = (cover > 0.999).to(a.dtype)
    r = b - moved
    error = (r.square().mean(1, keepdim=True) * inside).flatten(1).sum(1) / inside.flatten(1).sum(1).clamp(min=1.0)
    return r, inside, error


@float32
def refine_motion(a: Tensor, b: Tensor, motion: Tensor, iterations: int = 4) -> Tensor:
    """Gauss-Newton (Levenberg-Marquardt damped) refinement ``(N, 4)`` of ``motion`` from frames ``a`` onto ``b``
    ``(N, C, H, W)``, on ``|b - warp(a, motion)|^2`` over the pixels whose source lies inside ``a``. The Jacobian is
    a central difference per parameter (bilinear sampling is piecewise linear); a step is bounded
    (``_STEP_LIMIT``) and kept only where it lowers the error, so the starting point keeps its basin."""
    a, b, motion = a.float(), b.float(), motion.float()
    H, W = a.shape[-2:]
    eps = motion.new_tensor([0.5, 0.5, 1.0 / max(H, W), 1.0 / max(H, W)])
    limit = motion.new_tensor(_STEP_LIMIT)
    eye = torch.eye(4, device=a.device)
    r, inside, error = _residual(a, b, motion)
    for _ in range(iterations):
        jac = torch.stack([
            (warp(a, motion + eps * eye[k]) - warp(a, motion - eps * eye[k])).flatten(1) / (2 * eps[k])
            for k in range(4)
        ], -1)  # (N, C*H*W, 4)
        weighted = jac * inside.expand_as(r).flatten(1)[..., None]
        hess = weighted.transpose(1, 2) @ jac  # (N, 4, 4)
        grad = (weighted.transpose(1, 2) @ r.flatten(1)[..., None])[..., 0]
        damped = hess + 1e-3 * torch.diag_embed(hess.diagonal(dim1=1, dim2=2)) + 1e-9 * eye
        step = torch.linalg.solve_ex(damped, grad).result.clamp(-limit, limit)  # solve_ex: no host sync
        step = torch.where(step.isfinite().all(1, keepdim=True), step, torch.zeros_like(step))
        trial = motion + step
        trial_r, trial_inside, trial_error = _residual(a, b, trial)
        better = trial_error < error
        keep = better[:, None, None, None]
        motion = torch.where(better[:, None], trial, motion)
        r, inside = torch.where(keep, trial_r, r), torch.where(keep, trial_inside, inside)
        error = torch.where(better, trial_error, error)
    return motion


@float32
def estimate_motion(a: Tensor, b: Tensor) -> Tensor:
    """The similarity ``(N, 4)`` with ``b ~ warp(a, motion)`` of frames ``a``, ``b`` ``(N, C, H, W)``. Start: for each
    zoom of ``LOG_SCALES``, the phase correlation's whole-pixel shift of ``a`` zoomed onto ``b``; the candidate that
    matches best is refined by :func:`refine_motion` to sub-pixel shifts, zoom and rotation. Where the result
    matches ``b`` no better than ``a`` itself does (a scene change has no one motion), no motion (zeros)."""
    a, b = a.float(), b.float()
    N = len(a)
    scales = a.new_tensor(LOG_SCALES)
    S = len(scales)
    zoom = torch.zeros(S * N, 4, device=a.device)
    zoom[:, 2] = scales.repeat_interleave(N)
    a_s, b_s = a.repeat(S, 1, 1, 1), b.repeat(S, 1, 1, 1)
    candidates = zoom.clone()
    candidates[:, :2] = phase_correlation(warp(a_s, zoom), b_s)
    errors = _residual(a_s, b_s, candidates)[2].view(S, N)
    start = candidates.view(S, N, 4)[errors.argmin(0), torch.arange(N, device=a.device)]
    motion = refine_motion(a, b, start)
    still = torch.zeros_like(motion)
    return torch.where((_residual(a, b, motion)[2] < _residual(a, b, still)[2])[:, None], motion, still)
