"""MR ghosting artefact (TorchIO ``Ghosting``): periodic k-space lines scaled down."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dqe.training.transforms._artefact import ArtefactTransform
from dqe.training.transforms.base import as_range, uniform


class Ghosting(ArtefactTransform):
    """``num_ghosts`` ghosts along a random in-plane axis with ``intensity`` in [0, 1]."""

    name = "ghosting"

    def __init__(
        self,
        p: float = 0.1,
        num_ghosts: Sequence[int] = (4, 10),
        intensity: float | Sequence[float] = (0.5, 1.0),
        channels: str = "one",
    ) -> None:
        super().__init__(p, channels)
        lo, hi = (int(v) for v in as_range(num_ghosts, "num_ghosts"))
        if lo < 1:
            raise ValueError(f"ghosting: num_ghosts must be >= 1; got {[lo, hi]}")
        self.num_ghosts = (lo, hi)
        self.intensity = as_range(intensity, "intensity")

    def build(self, rng: np.random.Generator, shape: tuple[int, int]) -> Any:
        import torchio as tio

        ghosts = int(rng.integers(self.num_ghosts[0], self.num_ghosts[1] + 1))
        axis = int(rng.integers(2))
        return tio.Ghosting(
            num_ghosts=ghosts, axis=axis, intensity=uniform(rng, self.intensity), restore=None
        )
