"""Gamma correction within the channel's range (batchgenerators ``augment_gamma``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dqe.training.transforms.base import IntensityTransform, as_range
from dqe.training.transforms.contrast import draw_factor

EPS = 1e-7


class Gamma(IntensityTransform):
    """``((x - min) / range) ** g * range + min``; ``retain_stats`` restores mean and std afterwards.

    ``invert`` applies the curve to the negated image (nnU-Net uses that with a small probability).
    """

    name = "gamma"

    def __init__(
        self,
        p: float = 0.3,
        gamma: float | Sequence[float] = (0.7, 1.5),
        retain_stats: bool = True,
        invert: bool = False,
        per_channel: bool = True,
    ) -> None:
        super().__init__(p, per_channel)
        self.gamma = as_range(gamma, "gamma")
        if self.gamma[0] <= 0:
            raise ValueError(f"gamma must be positive; got {list(self.gamma)}")
        self.retain_stats = bool(retain_stats)
        self.invert = bool(invert)

    def draw(self, rng: np.random.Generator) -> float:
        return draw_factor(rng, self.gamma)

    def apply_channel(self, channel: np.ndarray, rng: np.random.Generator, shared: Any = None) -> np.ndarray:
        g = self.draw(rng) if shared is None else float(shared)
        x = -channel if self.invert else channel
        mean, std = x.mean(), x.std()
        lo = x.min()
        span = x.max() - lo
        out = np.power((x - lo) / (span + EPS), g) * span + lo
        if self.retain_stats:
            out = out - out.mean() + mean
            out = out / (out.std() + 1e-8) * std
        return -out if self.invert else out
