"""MR spike (herringbone) artefact (TorchIO ``Spike``): bright points added to k-space."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dqe.training.transforms._artefact import ArtefactTransform
from dqe.training.transforms.base import as_range, uniform


class Spike(ArtefactTransform):
    """``num_spikes`` spikes of ``intensity`` times the spectrum maximum."""

    name = "spike"

    def __init__(
        self,
        p: float = 0.1,
        num_spikes: Sequence[int] = (1, 1),
        intensity: float | Sequence[float] = (0.5, 2.0),
        channels: str = "one",
    ) -> None:
        super().__init__(p, channels)
        lo, hi = (int(v) for v in as_range(num_spikes, "num_spikes"))
        if lo < 1:
            raise ValueError(f"spike: num_spikes must be >= 1; got {[lo, hi]}")
        self.num_spikes = (lo, hi)
        self.intensity = as_range(intensity, "intensity")

    def build(self, rng: np.random.Generator, shape: tuple[int, int]) -> Any:
        import torchio as tio

        n = int(rng.integers(self.num_spikes[0], self.num_spikes[1] + 1))
        positions = np.zeros((n, 3))
        positions[:, :2] = rng.random((n, 2))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        return tio.Spike(spikes_positions=positions, intensity=sign * uniform(rng, self.intensity))
