"""Masked conditioning: which frames of a clip are observed, and how the network sees them.

A mask is bool ``(B, T)``: True = the frame is observed (given clean), False = generated.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

import torch
from torch import Tensor

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


def pack_condition(observed: Tensor, mask: Tensor) -> Tensor:
    """Network conditioning ``(B, T, C + 1, H, W)`` = ``[mask * observed, mask]`` from clips and ``(B, T)`` masks."""
    m = mask.to(observed.dtype)[:, :, None, None, None]
    return torch.cat([observed * m, m.expand(-1, -1, 1, *observed.shape[3:])], dim=2)


def nearest_observed(observed: Tensor, mask: Tensor, frame_index: Tensor | None = None) -> Tensor:
    """Each frame's nearest observed frame ``(B, T, C, H, W)``: by distance in ``frame_index`` ``(B, T)``
    (default ``0..T-1``; the earlier frame on ties); observed frames map to themselves; all zeros in a
    clip with no observed frame."""
    B, T = mask.shape
    fi = frame_index if frame_index is not None else torch.arange(T, device=mask.device).expand(B, T)
    dist = (fi[:, :, None] - fi[:, None, :]).abs().float().masked_fill(~mask[:, None, :], float("inf"))
    source = dist.argmin(-1)  # (B, T); argmin keeps the first (earlier) of equal distances
    ref = observed[torch.arange(B, device=mask.device)[:, None], source]
    return torch.where(mask.any(1)[:, None, None, None, None], ref, torch.zeros_like(ref))


def blended_observed(observed: Tensor, mask: Tensor, frame_index: Tensor | None = None) -> Tensor:
    """Each frame as the linear blend ``(B, T, C, H, W)`` of the nearest observed frames before and after it,
    weighted by distance in ``frame_index`` ``(B, T)`` (default ``0..T-1``); a frame with observed frames on one
    side only copies the nearest of them; observed frames map to themselves; all zeros in a clip with no
    observed frame. With observed frames at both ends this is the interpolation baseline."""
    B, T = mask.shape
    fi = (frame_index if frame_index is not None else torch.arange(T, device=mask.device).expand(B, T)).float()
    gap = fi[:, None, :] - fi[:, :, None]  # (B, T, T): position of frame s relative to frame t
    seen = mask[:, None, :]
    before = torch.where(seen & (gap <= 0), gap, -torch.inf).max(-1)  # nearest observed at or before t
    after = torch.where(seen & (gap >= 0), gap, torch.inf).min(-1)  # nearest observed at or after t
    has_before, has_after = before.values.isfinite(), after.values.isfinite()
    lo = torch.where(has_before, before.indices, after.indices)
    hi = torch.where(has_after, after.indices, lo)
    lo = torch.where(has_before, lo, hi)
    span = (after.values - before.values).nan_to_num(posinf=0.0, neginf=0.0)  # 0 unless observed on both sides
    w = torch.where(has_before & has_after & (span > 0), -before.values / span.clamp(min=1e-12), 0.0)
    rows = torch.arange(B, device=mask.device)[:, None]
    w = w[:, :, None, None, None].to(observed.dtype)
    ref = (1 - w) * observed[rows, lo] + w * observed[rows, hi]
    return torch.where(mask.any(1)[:, None, None, None, None], ref, torch.zeros_like(ref))


REFERENCES = {"nearest": nearest_observed, "blend": blended_observed}
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
