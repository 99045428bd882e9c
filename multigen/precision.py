"""Computations that stay in float32 under mixed precision.

``torch.autocast`` (bf16 training and evaluation, ``train.mixed_precision=bf16``) runs every matrix product and
convolution in bf16, including ones that are measurements, not network layers: point distances, SSIM's window,
a motion fit. In bf16 those lose what they measure (Chamfer distances of ~0.01 off by 10 %, nearest neighbours
swapped), so they are wrapped in :func:`float32`.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch
from torch import Tensor

Fn = TypeVar("Fn", bound=Callable)


def float32(fn: Fn) -> Fn:
    """``fn`` with autocast turned off on the device of its first tensor argument while it runs (where autocast is
    on; nothing to turn off elsewhere, e.g. on ``meta``): it computes in its inputs' own dtypes."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        device = next((a.device for a in args if isinstance(a, Tensor)), None)
        if device is None or not torch.amp.is_autocast_available(device.type) \
                or not torch.is_autocast_enabled(device.type):
            return fn(*args, **kwargs)
        with torch.autocast(device.type, enabled=False):
            return fn(*args, **kwargs)

    return wrapped  # type: ignore[return-value]
