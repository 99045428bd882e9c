"""Masked conditioning: which frames of a clip are observed, and how the network sees them.

A mask is bool ``(B, T)``: True = the frame is observed (given clean), False = generated.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

import torch
from torch import Tensor

from .motion import estimate_motion, warp_and_coverage

TASKS = ("unconditional", "future", "past", "interpolate", "random")


@dataclass
class TaskMix:
    """Probabilities of the training tasks (normalised; need not sum to 1)."""

    unconditional: float = 0.1
    future: float = 0.4
    past: float = 0.15
    interpolate: float = 0.2
    random: float = 0.15

    def weights(self) -> list[float]:
        """The normalised probabilities, in the order of ``TASKS``."""
        w = [float(getattr(self, name)) for name in TASKS]
        if min(w) < 0 or sum(w) <= 0:
            raise ValueError(f"task probabilities must be >= 0 and not all 0, got {dict(zip(TASKS, w))}")
        return [x / sum(w) for x in w]


def sample_masks(
    batch: int, frames: int, mix: TaskMix, generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw one task per clip and return its observed-frame mask ``(batch, frames)`` on ``device``.

    * future: the first ``k`` frames observed, ``1 <= k < T``
    * past: the last ``k`` frames observed
    * interpolate: the first ``a`` and last ``b`` observed, ``a, b >= 1``: the gap ``T - a - b`` is uniform on
      ``1..T-2`` (a wide gap as likely as a narrow one), then ``a`` uniform on ``1..a+b-1``
    * random: each frame observed with probability 1/2
    * unconditional: nothing observed

    Every clip keeps at least one generated frame. Everything is drawn on ``device`` (with
    ``generator``, which must live there), so a training step never copies from the host.
    """
    if frames < 2:
        raise ValueError("masked conditioning needs clips of at least 2 frames")
    kw = {"generator": generator, "device": device}
    u = torch.rand(batch, **kw)
    cum = list(accumulate(mix.weights()))  # host floats: nothing is copied to the device
    task = sum((u >= c / cum[-1]).long() for c in cum[:-1])  # index into TASKS (a 0-probability task: never)
    idx = torch.arange(frames, device=device).expand(batch, frames)
    k = torch.randint(1, frames, (batch, 1), **kw)
    seen = frames - torch.randint(1, max(frames - 1, 2), (batch, 1), **kw)  # a + b, from 2 to T - 1
    a = 1 + (torch.rand(batch, 1, **kw) * (seen - 1)).floor().long()
    b = seen - a
    rand = torch.rand(batch, frames, **kw) < 0.5
    rows = torch.arange(batch, device=device)
    rand[rows, torch.randint(0, frames, (batch,), **kw)] = False
    options = torch.stack(
        [
            torch.zeros(batch, frames, dtype=torch.bool, device=device),
            idx < k,
            idx >= frames - k,
            (idx < a) | (idx >= frames - b) if frames > 2 else idx < 1,
            rand,
        ]
    )
    return options[task, rows]


def pack_condition(observed: Tensor, mask: Tensor, reference: Tensor | None = None) -> Tensor:
    """Network conditioning ``(B, T, C + 1, H, W)`` = ``[mask * observed, mask]`` from clips and ``(B, T)`` masks;
    with a residual model's ``reference`` frames ``(B, T, C, H, W)``, those appended: ``(B, T, 2C + 1, H, W)``."""
    m = mask.to(observed.dtype)[:, :, None, None, None]
    parts = [observed * m, m.expand(-1, -1, 1, *observed.shape[3:])]
    return torch.cat(parts if reference is None else [*parts, reference.to(observed.dtype)], dim=2)


def _positions(mask: Tensor, frame_index: Tensor | None) -> Tensor:
    """Frame positions ``(B, T)`` as floats: ``frame_index``, or ``0..T-1``."""
    B, T = mask.shape
    return (frame_index if frame_index is not None else torch.arange(T, device=mask.device).expand(B, T)).float()


def _distances_to_observed(mask: Tensor, frame_index: Tensor | None) -> Tensor:
    """``(B, T, T)``: the distance in ``frame_index`` (default ``0..T-1``) from frame ``t`` to frame ``s`` where
    ``s`` is observed, ``inf`` where it is not."""
    fi = _positions(mask, frame_index)
    return (fi[:, :, None] - fi[:, None, :]).abs().masked_fill(~mask[:, None, :], float("inf"))


def nearest_observed(observed: Tensor, mask: Tensor, frame_index: Tensor | None = None) -> Tensor:
    """Each frame's nearest observed frame ``(B, T, C, H, W)``: by distance in ``frame_index`` ``(B, T)``
    (default ``0..T-1``; the earlier frame on ties); observed frames map to themselves; all zeros in a
    clip with no observed frame."""
    source = _distances_to_observed(mask, frame_index).argmin(-1)  # (B, T); the first (earlier) of equal distances
    ref = observed[torch.arange(mask.shape[0], device=mask.device)[:, None], source]
    return torch.where(mask.any(1)[:, None, None, None, None], ref, torch.zeros_like(ref))


def observed_distance(mask: Tensor, frame_index: Tensor | None = None) -> Tensor:
    """Each frame's distance ``(B, T)`` (float) in ``frame_index`` (default ``0..T-1``) to the nearest observed
    frame: 0 on observed frames, ``inf`` in a clip with no observed frame."""
    return _distances_to_observed(mask, frame_index).amin(-1)


def per_frame_steps(mask: Tensor, timesteps: int, ordered: bool = False,
                    generator: torch.Generator | None = None) -> Tensor:
    """Diffusion-forcing training levels: a step ``(B, T)`` (long) per frame, 0 (clean) on observed frames, each
    generated frame's uniform on ``1..timesteps``, its own draw (the default, as ``task.per_frame_levels``'s).
    ``ordered`` sorts each clip's draws so that frames farther from the observed ones get the higher steps (equally
    far ones, and all frames of a clip with none observed, in a random order), as a sampler that starts the far
    frames later (``sample.frame_delay``) visits them."""
    B, T = mask.shape
    kw = {"device": mask.device, "generator": generator}
    steps = torch.randint(1, timesteps + 1, (B, T), **kw).masked_fill(mask, 0)
    if not ordered:
        return steps
    dist = observed_distance(mask)
    key = torch.where(dist.isinf(), 0.0, dist) + 0.5 * torch.rand(B, T, **kw)  # observed first: key < 1
    return torch.empty_like(steps).scatter_(1, key.argsort(1), steps.sort(1).values)


def _nearest_on_side(mask: Tensor, fi: Tensor, before: bool, strict: bool) -> tuple[Tensor, Tensor]:
    """For each frame ``(B, T)``: the index of the nearest observed frame before it (``before``) or after it, the
    frame itself included unless ``strict``, and whether there is one (``(B, T)`` long and bool)."""
    gap = fi[:, None, :] - fi[:, :, None]  # (B, T, T): position of frame s relative to frame t
    side = (gap < 0 if strict else gap <= 0) if before else (gap > 0 if strict else gap >= 0)
    cand = mask[:, None, :] & side
    found = torch.where(cand, gap, -torch.inf).max(-1) if before else torch.where(cand, gap, torch.inf).min(-1)
    return found.indices, found.values.isfinite()


def _bracket(mask: Tensor, fi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The nearest observed frames at or before (``lo``) and at or after (``hi``) each frame, both the one side's
    nearest where there is only one side, and the weight ``w`` of ``hi`` in a linear blend (0 unless the frame
    lies strictly between two observed frames): ``(B, T)`` each."""
    lo, has_lo = _nearest_on_side(mask, fi, before=True, strict=False)
    hi, has_hi = _nearest_on_side(mask, fi, before=False, strict=False)
    lo, hi = torch.where(has_lo, lo, hi), torch.where(has_hi, hi, lo)
    span = fi.gather(1, hi) - fi.gather(1, lo)
    w = torch.where(has_lo & has_hi & (span > 0), (fi - fi.gather(1, lo)) / span.clamp(min=1e-12), 0.0)
    return lo, hi, w


def blended_observed(observed: Tensor, mask: Tensor, frame_index: Tensor | None = None) -> Tensor:
    """Each frame as the linear blend ``(B, T, C, H, W)`` of the nearest observed frames before and after it,
    weighted by distance in ``frame_index`` ``(B, T)`` (default ``0..T-1``); a frame with observed frames on one
    side only copies the nearest of them; observed frames map to themselves; all zeros in a clip with no
    observed frame. With observed frames at both ends this is the interpolation baseline."""
    lo, hi, w = _bracket(mask, _positions(mask, frame_index))
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None]
    w = w[:, :, None, None, None].to(observed.dtype)
    ref = (1 - w) * observed[rows, lo] + w * observed[rows, hi]
    return torch.where(mask.any(1)[:, None, None, None, None], ref, torch.zeros_like(ref))


def motion_compensated(observed: Tensor, mask: Tensor, frame_index: Tensor | None = None) -> Tensor:
    """:func:`blended_observed` with global motion: each frame ``(B, T, C, H, W)`` from the nearest observed frames
    before and after it, each moved along the clip's estimated shift, zoom and rotation
    (:func:`video.motion.estimate_motion`, constant velocity) to the frame's position before they are blended. The
    velocity comes from the two frames that bracket it, or, on one side only, from the nearest observed frame and the
    next observed one beyond it (extrapolation); a single observed frame gives no motion (a copy). Where one moved
    frame has no content (it would repeat its border: content entering the view) and the other has, the other is
    taken. Observed frames map to themselves exactly; all zeros in a clip with no observed frame."""
    B, T = mask.shape
    fi = _positions(mask, frame_index)
    lo, hi, w = _bracket(mask, fi)
    prev, has_prev = _nearest_on_side(mask, fi, before=True, strict=True)
    after, has_after = _nearest_on_side(mask, fi, before=False, strict=True)
    between = lo != hi
    on_left = fi.gather(1, lo) <= fi  # one side: the observed frames lie before this one (or it is observed)
    p = torch.where(between, lo, torch.where(on_left, prev.gather(1, lo), hi))
    q = torch.where(between, hi, torch.where(on_left, lo, after.gather(1, hi)))
    valid = between | torch.where(on_left, has_prev.gather(1, lo), has_after.gather(1, hi))
    rows = torch.arange(B, device=mask.device)[:, None]
    span = fi.gather(1, q) - fi.gather(1, p)
    valid = valid & (span > 0)
    moves = estimate_motion(observed[rows, p].flatten(0, 1), observed[rows, q].flatten(0, 1)).unflatten(0, (B, T))
    velocity = moves / span.clamp(min=1e-12)[..., None]
    velocity = torch.where(valid[..., None], velocity, torch.zeros_like(velocity))  # (B, T, 4) per frame

    def moved(source: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        """The source frames moved to each frame's position, and their blend weight times their coverage (a
        little of the plain weight stays, so a frame that no source covers blends the repeated borders)."""
        frames = observed[rows, source].flatten(0, 1)
        motion = (velocity * (fi - fi.gather(1, source))[..., None]).flatten(0, 1)
        weight = weight[:, :, None, None, None].to(observed.dtype)
        moved, cover = warp_and_coverage(frames, motion)
        return moved.unflatten(0, (B, T)), weight * (cover.unflatten(0, (B, T)) + 1e-3)

    (a, wa), (b, wb) = moved(lo, 1 - w), moved(hi, w)
    ref = a + wb / (wa + wb) * (b - a)  # exactly the moved frame before where w = 0 (one side)
    ref = torch.where(mask[:, :, None, None, None], observed, ref)
    return torch.where(mask.any(1)[:, None, None, None, None], ref, torch.zeros_like(ref))


REFERENCES = {"nearest": nearest_observed, "blend": blended_observed, "motion": motion_compensated}
"""``model.reference``: the frames a residual model's output is added to."""


def scaled_residual(
    clips: Tensor, mask: Tensor, reference: str, scale: float = 1.0, frame_index: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """What a residual model diffuses, ``scale * (clips - ref)``, and ``ref``, the ``reference`` frames
    (``REFERENCES``) of ``clips`` ``(B, T, C, H, W)`` under ``mask`` ``(B, T)``; both ``(B, T, C, H, W)``, the
    first exactly 0 on observed frames. A clip is recovered as ``residual / scale + ref``."""
    if reference not in REFERENCES:
        raise ValueError(f"unknown residual reference {reference!r}; choose one of {', '.join(REFERENCES)}")
    ref = REFERENCES[reference](clips, mask, frame_index)
    return (clips - ref) * scale, ref
