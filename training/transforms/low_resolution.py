"""Simulated low resolution: nearest downsampling then cubic upsampling (nnU-Net's setting)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dqe.training.transforms.base import IntensityTransform, as_range, uniform


class LowResolution(IntensityTransform):
    """Resample each channel down by a zoom in ``zoom`` and back up to its size."""

    name = "low_resolution"

    def __init__(
        self,
        p: float = 0.25,
        zoom: float | Sequence[float] = (0.5, 1.0),
        order_down: int = 0,
        order_up: int = 3,
        per_channel: bool = True,
    ) -> None:
        super().__init__(p, per_channel)
        self.zoom = as_range(zoom, "zoom")
        if not 0.0 < self.zoom[0] <= self.zoom[1] <= 1.0:
            raise ValueError(f"zoom must lie within (0, 1]; got {list(self.zoom)}")
        self.order_down = int(order_down)
        self.order_up = int(order_up)

    def draw(self, rng: np.random.Generator) -> float:
        return uniform(rng, self.zoom)

    def apply_channel(self, channel: np.ndarray, rng: np.random.Generator, shared: Any = None) -> np.ndarray:
        from skimage.transform import resize

        z = self.draw(rng) if shared is None else float(shared)
        small = tuple(max(1, round(s * z)) for s in channel.shape)
        down = resize(channel, small, order=self.order_down, mode="edge", anti_aliasing=False)
        return np.asarray(resize(down, channel.shape, order=self.order_up, mode="edge", anti_aliasing=False))
