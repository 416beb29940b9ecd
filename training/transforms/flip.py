"""Mirroring along the view's axes, images and labels together."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dqe.training.transforms.base import Transform


class Flip(Transform):
    """Flip each axis in ``axes`` (0 = rows, 1 = columns of the view) with probability 1/2.

    When every axis happens to be left alone, one of them is flipped, so an applied flip always flips.
    """

    name = "flip"
    spatial = True

    def __init__(self, p: float = 0.5, axes: Sequence[int] = (0, 1)) -> None:
        super().__init__(p)
        self.axes = tuple(int(a) for a in axes)
        if not self.axes or any(a not in (0, 1) for a in self.axes):
            raise ValueError(f"flip axes must be a non-empty subset of (0, 1); got {list(axes)}")

    def apply(
        self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        chosen = [a for a in self.axes if rng.random() < 0.5]
        if not chosen:
            chosen = [self.axes[int(rng.integers(len(self.axes)))]]
        dims = tuple(a + 1 for a in chosen)  # channel axis first
        return np.flip(image, axis=dims).copy(), np.flip(labels, axis=dims).copy()
