"""Rician noise, the magnitude-image noise of MR (batchgenerators ``augment_rician_noise``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dqe.training.transforms.gaussian_noise import GaussianNoise


class RicianNoise(GaussianNoise):
    """``sqrt((x + n1)^2 + n2^2) * sign(x)`` with ``n1, n2 ~ N(0, s)``, ``s ~ U(std)`` (same draws as GaussianNoise)."""

    name = "rician_noise"

    def __init__(
        self, p: float = 0.1, std: float | Sequence[float] = (0.0, 0.1), per_channel: bool = True
    ) -> None:
        super().__init__(p, std, per_channel)

    def apply_channel(self, channel: np.ndarray, rng: np.random.Generator, shared: Any = None) -> np.ndarray:
        s = self.draw(rng) if shared is None else float(shared)
        real = channel + rng.normal(0.0, s, size=channel.shape)
        imag = rng.normal(0.0, s, size=channel.shape)
        sign = np.where(channel < 0, -1.0, 1.0)
        return np.sqrt(real**2 + imag**2) * sign
