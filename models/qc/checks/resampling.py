"""Resampling artefacts per region: a staircase border made on a coarser lattice.

A label map segmented on a coarse grid and brought back with nearest-neighbour (or linear-then-rounded)
interpolation has its borders on that grid: along each axis, the positions ``x`` of label transitions
(between voxel ``x`` and ``x + 1``) repeat with the coarse period ``P``. The phase concentration
``R(P) = |mean exp(2 pi i x / P)|`` is about ``1/sqrt(n)`` for a border drawn at full resolution and 1 for
a border on a lattice of period ``P``. Score: the largest ``R`` over the three axes and periods 1.5-4
voxels (``staircase``), with the period reported.
"""

from __future__ import annotations

import numpy as np

from dqe.models.qc.checks.evidence import Evidence
from dqe.models.qc.regional import Regional

PERIODS = np.round(np.arange(1.5, 4.0001, 0.1), 3)
MIN_TRANSITIONS = 60
AXIS_NAMES = ("left-right", "anterior-posterior", "inferior-superior")


def phase_concentration(positions: np.ndarray, periods: np.ndarray = PERIODS) -> np.ndarray:
    """``R(P)`` for each period (integer positions in voxels; computed on their histogram)."""
    return _concentration(np.bincount(positions), periods)


def _concentration(hist: np.ndarray, periods: np.ndarray = PERIODS) -> np.ndarray:
    """``R(P)`` from a histogram of transition counts per position (index = position in voxels)."""
    w = hist / max(float(hist.sum()), 1.0)
    ang = 2.0 * np.pi * np.arange(hist.size)[None, :] / periods[:, None]
    return np.hypot(np.cos(ang) @ w, np.sin(ang) @ w)


def staircase(reg: Regional, region: str) -> list[Evidence]:
    box = reg.sub(region, 1)
    m = reg.mask(region)[box]
    start = [int(sl.start or 0) for sl in box]
    best, best_axis, best_p = 0.0, 0, 0.0
    for axis in range(3):
        a = np.moveaxis(m, axis, 0)
        per_slice = (a[:-1] != a[1:]).sum(axis=(1, 2))
        if int(per_slice.sum()) < MIN_TRANSITIONS:
            continue
        hist = np.zeros(per_slice.size + int(reg.offset[axis]) + start[axis], dtype=np.float64)
        hist[int(reg.offset[axis]) + start[axis] :] = per_slice
        r = _concentration(hist)
        k = int(np.argmax(r))
        if float(r[k]) > best:
            best, best_axis, best_p = float(r[k]), axis, float(PERIODS[k])
    if best == 0.0:
        return []
    return [
        Evidence(
            "staircase",
            region,
            "resampling",
            best,
            "ratio",
            f"{region.upper()} borders along the {AXIS_NAMES[best_axis]} axis repeat every {best_p:.1f} "
            f"voxels with concentration {best:.2f} (0 = drawn at full resolution, 1 = on a coarse grid)",
            "the labels were made on a coarser grid and upsampled (staircase surface)",
            floor=0.02,
        )
    ]
