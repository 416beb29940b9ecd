"""MR artefacts simulated with TorchIO's deterministic transforms on one 2-D channel at a time.

Parameters are drawn here from the numpy generator (not TorchIO's global torch RNG) and passed to the
deterministic TorchIO classes (``Motion``, ``Ghosting``, ``Spike``, ``BiasField``), so the pipeline stays
reproducible under a seed. A view is handed to TorchIO as a ``(1, H, W, 1)`` image with an identity affine;
rotations are about the slice normal, so nothing moves out of the slice.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from dqe.training.transforms.base import Transform


def run_torchio(transform: Any, channel: np.ndarray) -> np.ndarray:
    """Apply a TorchIO intensity transform to one ``(H, W)`` channel."""
    import torch
    import torchio as tio

    tensor = torch.from_numpy(np.ascontiguousarray(channel, dtype=np.float32)[None, :, :, None])
    image = tio.ScalarImage(tensor=tensor, affine=np.eye(4))
    out = transform(image)
    return np.asarray(out.data[0, :, :, 0].numpy(), dtype=np.float64)


class ArtefactTransform(Transform):
    """An artefact on one randomly chosen image channel (``channels="one"``, each sequence is acquired
    separately) or on every image channel with independent parameters (``channels="all"``)."""

    def __init__(self, p: float = 0.1, channels: str = "one") -> None:
        super().__init__(p)
        if channels not in ("one", "all"):
            raise ValueError(f"{self.name}: channels must be 'one' or 'all'; got {channels!r}")
        self.channels = channels

    def apply(
        self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        out = image.astype(np.float32, copy=True)
        chosen = range(image.shape[0]) if self.channels == "all" else [int(rng.integers(image.shape[0]))]
        for c in chosen:
            out[c] = run_torchio(self.build(rng, (int(image.shape[1]), int(image.shape[2]))), image[c])
        return out, labels

    @abstractmethod
    def build(self, rng: np.random.Generator, shape: tuple[int, int]) -> Any:
        """A deterministic TorchIO transform with parameters drawn from ``rng``."""
