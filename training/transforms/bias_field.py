"""MR bias field (TorchIO ``BiasField``): a smooth multiplicative polynomial field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dqe.training.transforms._artefact import ArtefactTransform
from dqe.training.transforms.base import as_range


class BiasField(ArtefactTransform):
    """``exp(polynomial)`` of ``order`` with coefficients in ``coefficients``."""

    name = "bias_field"

    def __init__(
        self,
        p: float = 0.1,
        coefficients: float | Sequence[float] = 0.5,
        order: int = 3,
        channels: str = "one",
    ) -> None:
        super().__init__(p, channels)
        self.coefficients = as_range(coefficients, "coefficients", symmetric=True)
        if order < 0:
            raise ValueError(f"bias_field: order must be >= 0; got {order}")
        self.order = int(order)

    def n_coefficients(self) -> int:
        """As TorchIO counts them: every (x, y, z) power with x + y + z <= order."""
        o = self.order
        return sum(1 for x in range(o + 1) for y in range(o + 1 - x) for _ in range(o + 1 - x - y))

    def build(self, rng: np.random.Generator, shape: tuple[int, int]) -> Any:
        import torchio as tio

        coefficients = rng.uniform(*self.coefficients, size=self.n_coefficients()).tolist()
        return tio.BiasField(coefficients=coefficients, order=self.order)
