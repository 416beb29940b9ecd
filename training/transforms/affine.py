"""Random in-plane affine transform (rotation, isotropic scaling, translation)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dqe.training.transforms._warp import identity_grid, warp
from dqe.training.transforms.base import Transform, as_range, uniform


class RandomAffine(Transform):
    """Rotate by ``degrees``, zoom by ``scale`` and shift by ``translation`` (fraction of the size).

    Rotation and scaling are about the view centre; images are interpolated linearly and labels with
    nearest neighbour; pixels that come from outside the view are 0.
    """

    name = "affine"
    spatial = True

    def __init__(
        self,
        p: float = 0.2,
        degrees: float | Sequence[float] = 15.0,
        scale: float | Sequence[float] = (0.85, 1.15),
        translation: float | Sequence[float] = 0.05,
    ) -> None:
        super().__init__(p)
        self.degrees = as_range(degrees, "degrees", symmetric=True)
        self.scale = as_range(scale, "scale")
        if self.scale[0] <= 0:
            raise ValueError(f"scale must be positive; got {list(self.scale)}")
        self.translation = as_range(translation, "translation", symmetric=True)

    def apply(
        self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        shape = (int(image.shape[1]), int(image.shape[2]))
        theta = np.radians(uniform(rng, self.degrees))
        zoom = uniform(rng, self.scale)
        shift = np.array(
            [uniform(rng, self.translation) * shape[0], uniform(rng, self.translation) * shape[1]]
        )
        # output pixel o samples source s = R(-theta) (o - c) / zoom + c - shift
        cos, sin = np.cos(theta), np.sin(theta)
        matrix = np.array([[cos, sin], [-sin, cos]]) / zoom
        centre = (np.array(shape, dtype=np.float64) - 1.0) / 2.0
        grid = identity_grid(shape) - centre[:, None, None]
        coords = np.einsum("ij,jhw->ihw", matrix, grid) + (centre - shift)[:, None, None]
        return warp(image, labels, coords)
