"""Resampling of a view on a coordinate map: images linear, labels nearest neighbour (values kept)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def warp(image: np.ndarray, labels: np.ndarray, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample every channel at ``coords`` (``(2, H, W)`` source positions in pixels).

    Images use linear interpolation and labels order-0 (nearest) interpolation, both with a constant 0
    outside the view, so a binary label channel stays binary and the same pixel moves in every channel.
    """
    out_img = np.stack(
        [
            ndimage.map_coordinates(c.astype(np.float64), coords, order=1, mode="constant", cval=0.0)
            for c in image
        ]
    ).astype(np.float32)
    out_lab = np.stack(
        [ndimage.map_coordinates(c, coords, order=0, mode="constant", cval=0.0) for c in labels]
    ).astype(np.float32)
    return out_img, out_lab


def identity_grid(shape: tuple[int, int]) -> np.ndarray:
    """``(2, H, W)`` float64 pixel coordinates of a grid."""
    return np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")).astype(np.float64)
