"""Contrast around the channel mean (batchgenerators ``augment_contrast``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dqe.training.transforms.base import IntensityTransform, as_range, uniform


def draw_factor(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """Half the draws below 1 and half above, as batchgenerators does, so shrinking is as likely as growing."""
    lo, hi = bounds
    if rng.random() < 0.5 and lo < 1.0:
        return uniform(rng, (lo, min(1.0, hi)))
    return uniform(rng, (max(lo, 1.0), hi)) if hi >= 1.0 else uniform(rng, (lo, hi))


class Contrast(IntensityTransform):
    """``(x - mean) * f + mean`` with ``f`` in ``factor``; ``preserve_range`` clips to the old min/max."""

    name = "contrast"

    def __init__(
        self,
        p: float = 0.15,
        factor: float | Sequence[float] = (0.75, 1.25),
        preserve_range: bool = True,
        per_channel: bool = True,
    ) -> None:
        super().__init__(p, per_channel)
        self.factor = as_range(factor, "factor")
        self.preserve_range = bool(preserve_range)

    def draw(self, rng: np.random.Generator) -> float:
        return draw_factor(rng, self.factor)

    def apply_channel(self, channel: np.ndarray, rng: np.random.Generator, shared: Any = None) -> np.ndarray:
        f = self.draw(rng) if shared is None else float(shared)
        mean = channel.mean()
        out = (channel - mean) * f + mean
        if self.preserve_range:
            out = np.clip(out, channel.min(), channel.max())
        return out
