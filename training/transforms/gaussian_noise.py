"""Additive Gaussian noise on the image channels (batchgenerators ``augment_gaussian_noise``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dqe.training.transforms.base import IntensityTransform, as_range, uniform


class GaussianNoise(IntensityTransform):
    """``x + N(0, s)`` with ``s ~ U(std)`` per channel; images are in [0, 1] units after normalisation."""

    name = "gaussian_noise"

    def __init__(
        self, p: float = 0.15, std: float | Sequence[float] = (0.0, 0.1), per_channel: bool = True
    ) -> None:
        super().__init__(p, per_channel)
        self.std = as_range(std, "std")

    def draw(self, rng: np.random.Generator) -> float:
        return uniform(rng, self.std)

    def apply_channel(self, channel: np.ndarray, rng: np.random.Generator, shared: Any = None) -> np.ndarray:
        s = self.draw(rng) if shared is None else float(shared)
        return channel + rng.normal(0.0, s, size=channel.shape)
