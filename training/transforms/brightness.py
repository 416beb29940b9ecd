"""Multiplicative brightness (batchgenerators ``augment_brightness_multiplicative``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dqe.training.transforms.base import IntensityTransform, as_range, uniform


class Brightness(IntensityTransform):
    """``x * m`` with ``m ~ U(multiplier)``."""

    name = "brightness"

    def __init__(
        self, p: float = 0.15, multiplier: float | Sequence[float] = (0.7, 1.3), per_channel: bool = True
    ) -> None:
        super().__init__(p, per_channel)
        self.multiplier = as_range(multiplier, "multiplier")

    def draw(self, rng: np.random.Generator) -> float:
        return uniform(rng, self.multiplier)

    def apply_channel(self, channel: np.ndarray, rng: np.random.Generator, shared: Any = None) -> np.ndarray:
        m = self.draw(rng) if shared is None else float(shared)
        return channel * m
