"""Elastic deformation: a smoothed random displacement field (batchgenerators' ``alpha``/``sigma``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from dqe.training.transforms._warp import identity_grid, warp
from dqe.training.transforms.base import Transform, as_range, uniform


class ElasticDeformation(Transform):
    """Displace every pixel by Gaussian-smoothed uniform noise (``sigma`` px) scaled by ``alpha``.

    With ``sigma`` 9-13 px, ``alpha`` 0-300 gives displacements of a few pixels on a 240 x 240 view.
    """

    name = "elastic"
    spatial = True

    def __init__(
        self,
        p: float = 0.2,
        alpha: float | Sequence[float] = (0.0, 300.0),
        sigma: float | Sequence[float] = (9.0, 13.0),
    ) -> None:
        super().__init__(p)
        self.alpha = as_range(alpha, "alpha")
        self.sigma = as_range(sigma, "sigma")
        if self.sigma[0] <= 0:
            raise ValueError(f"sigma must be positive; got {list(self.sigma)}")

    def apply(
        self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        shape = (int(image.shape[1]), int(image.shape[2]))
        alpha = uniform(rng, self.alpha)
        sigma = uniform(rng, self.sigma)
        field = np.stack(
            [
                ndimage.gaussian_filter(rng.random(shape) * 2.0 - 1.0, sigma, mode="constant") * alpha
                for _ in range(2)
            ]
        )
        return warp(image, labels, identity_grid(shape) + field)
