"""The augmentation protocol: one 2-D view split into image channels and label channels.

A view is the ``(C, H, W)`` float32 array the network reads: the first ``n_image`` channels are the
normalised MR images, the rest the label channels (TC/WT/ET as 0/1, or one tissue channel). Spatial
transforms move both with the same parameters (images linearly interpolated, labels with nearest
neighbour, so label channels keep their values and stay aligned with the images); intensity transforms
touch the image channels only. Every transform draws its parameters from the ``numpy.random.Generator``
it is given, so a pipeline is deterministic under a seed whatever the worker process.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np


def uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    """One draw from ``U(lo, hi)``; ``lo == hi`` gives ``lo`` (still consuming one draw)."""
    lo, hi = float(bounds[0]), float(bounds[1])
    return lo + (hi - lo) * float(rng.random())


def as_range(value: float | Sequence[float], name: str, symmetric: bool = False) -> tuple[float, float]:
    """A ``(lo, hi)`` pair from a scalar (``(-v, v)`` when ``symmetric`` else ``(v, v)``) or a pair.

    Raises:
        ValueError: not one or two numbers, or ``lo > hi``.
    """
    if isinstance(value, int | float):
        pair = (-float(value), float(value)) if symmetric else (float(value), float(value))
    else:
        items = [float(v) for v in value]
        if len(items) != 2:
            raise ValueError(f"{name} must be a number or a pair [lo, hi]; got {list(value)}")
        pair = (items[0], items[1])
    if pair[0] > pair[1]:
        raise ValueError(f"{name} has lo > hi: {list(pair)}")
    return pair


class Transform(ABC):
    """A random augmentation applied with probability ``p``.

    Subclasses set ``name`` (the key used in config files) and ``spatial`` and implement :meth:`apply`.
    The probability draw is always made, so the random stream does not depend on earlier outcomes.
    """

    name: ClassVar[str]
    spatial: ClassVar[bool] = False

    def __init__(self, p: float = 0.15) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{self.name}: p must be within [0, 1]; got {p}")
        self.p = float(p)

    def __call__(
        self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Maybe apply the transform; ``image`` is ``(Ci, H, W)``, ``labels`` ``(Cl, H, W)``, both float32."""
        if rng.random() >= self.p:
            return image, labels
        new_image, new_labels = self.apply(image, labels, rng)
        return new_image.astype(np.float32, copy=False), new_labels.astype(np.float32, copy=False)

    @abstractmethod
    def apply(
        self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Always apply (``p`` already decided); never modify the inputs in place."""

    def params(self) -> dict[str, Any]:
        """The constructor arguments, for run records."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class IntensityTransform(Transform):
    """Changes image channels only; ``per_channel`` draws parameters for each channel separately."""

    def __init__(self, p: float = 0.15, per_channel: bool = True) -> None:
        super().__init__(p)
        self.per_channel = bool(per_channel)

    def apply(
        self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty_like(image, dtype=np.float32)
        if self.per_channel:
            for c in range(image.shape[0]):
                out[c] = self.apply_channel(image[c].astype(np.float64), rng)
        else:
            shared = self.draw(rng)
            for c in range(image.shape[0]):
                out[c] = self.apply_channel(image[c].astype(np.float64), rng, shared)
        return out, labels

    def draw(self, rng: np.random.Generator) -> Any:
        """Parameters shared by all channels when ``per_channel`` is false (default: none)."""
        return None

    @abstractmethod
    def apply_channel(self, channel: np.ndarray, rng: np.random.Generator, shared: Any = None) -> np.ndarray:
        """Transform one ``(H, W)`` float64 channel."""
