"""MR motion artefact (TorchIO ``Motion``, Shaw et al. 2019): k-space assembled from moved copies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dqe.training.transforms._artefact import ArtefactTransform
from dqe.training.transforms.base import as_range


class Motion(ArtefactTransform):
    """Up to ``num_transforms`` in-plane rigid movements of ``degrees`` and ``translation`` (pixels)."""

    name = "motion"

    def __init__(
        self,
        p: float = 0.1,
        degrees: float | Sequence[float] = 10.0,
        translation: float | Sequence[float] = 10.0,
        num_transforms: int = 2,
        channels: str = "one",
    ) -> None:
        super().__init__(p, channels)
        self.degrees = as_range(degrees, "degrees", symmetric=True)
        self.translation = as_range(translation, "translation", symmetric=True)
        if num_transforms < 1:
            raise ValueError(f"motion: num_transforms must be >= 1; got {num_transforms}")
        self.num_transforms = int(num_transforms)

    def build(self, rng: np.random.Generator, shape: tuple[int, int]) -> Any:
        import torchio as tio

        n = self.num_transforms
        degrees = np.zeros((n, 3))
        degrees[:, 2] = rng.uniform(*self.degrees, size=n)
        translation = np.zeros((n, 3))
        translation[:, :2] = rng.uniform(*self.translation, size=(n, 2))
        step = 1.0 / (n + 1)
        times = np.arange(1, n + 1) * step + rng.uniform(-step / 4, step / 4, size=n)
        return tio.Motion(degrees=degrees, translation=translation, times=times, image_interpolation="linear")
