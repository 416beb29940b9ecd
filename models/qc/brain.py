"""A brain mask from skull-stripped images.

BraTS-style images are skull-stripped: zero outside the brain. Resampling leaves small values of either
sign around the edge (the TCGA cases in ``../shared/data`` have -136 .. -3 at the rim), and float images
can carry tiny interpolation residues, so a voxel is brain when ``|v| > eps`` on *any* modality, with
``eps`` a small fraction of that modality's largest magnitude. Enclosed holes (all four modalities exactly
zero inside the brain) are filled and only the largest connected component is kept, which removes specks
of residue outside the head.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from dqe.models.nifti import Volume
from dqe.models.qc.morphology import fill_holes

REL_EPS = 1e-3  # |v| must exceed 0.1 % of the modality's largest magnitude to count as signal


def subsample(volume: Volume, step: int) -> np.ndarray:
    """Every ``step``-th voxel along each axis, as float32 voxel values (NIfTI scaling applied)."""
    sl = slice(None, None, step)
    raw = np.asarray(volume.data[sl, sl, sl])
    if volume.scaled:
        return (raw.astype(np.float64) * volume.slope + volume.inter).astype(np.float32)
    return raw.astype(np.float32)


def signal_mask(images: Sequence[np.ndarray], rel_eps: float = REL_EPS) -> np.ndarray:
    """Voxels where any image has ``|v| > rel_eps * max|v|`` (NaN never counts as signal)."""
    mask: np.ndarray | None = None
    for img in images:
        if img.size == 0:
            continue
        lo, hi = float(img.min()), float(img.max())  # NaN propagates and takes the slow path
        top = max(abs(lo), abs(hi)) if np.isfinite(lo) and np.isfinite(hi) else _finite_top(img)
        thr = rel_eps * top
        m = (img > thr) | (img < -thr)  # comparisons with NaN are False
        mask = m if mask is None else (mask | m)
    if mask is None:
        raise ValueError("no images given")
    return mask


def _finite_top(img: np.ndarray) -> float:
    finite = img[np.isfinite(img)]
    return float(np.abs(finite).max()) if finite.size else 0.0


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Largest 26-connected component with its enclosed holes filled."""
    if not mask.any():
        return mask
    structure = np.ones((3, 3, 3), dtype=bool)
    cc, n = ndi.label(mask, structure=structure)
    if n > 1:
        sizes = np.bincount(cc.ravel())
        sizes[0] = 0
        mask = cc == int(np.argmax(sizes))
    box = bbox(mask, margin=1)
    out = mask.copy()
    out[box] = fill_holes(mask[box])
    return out


def bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice, slice]:
    """Bounding box of ``mask`` grown by ``margin`` voxels and clipped to the array (whole array if empty)."""
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        if idx.size == 0:
            return (slice(None), slice(None), slice(None))
        out.append(slice(max(0, int(idx[0]) - margin), min(mask.shape[axis], int(idx[-1]) + 1 + margin)))
    return (out[0], out[1], out[2])


def brain_mask(images: Sequence[Volume], step: int = 1, rel_eps: float = REL_EPS) -> np.ndarray:
    """Boolean brain mask on the grid subsampled by ``step`` (``[::step]`` along each axis).

    Args:
        images: the four co-registered MR volumes of a case.
        step: subsampling factor (1 = full resolution).
        rel_eps: signal threshold as a fraction of each image's largest magnitude.
    """
    arrays = [subsample(v, step) for v in images]
    return clean_mask(signal_mask(arrays, rel_eps))


def brain_mask_full(images: Sequence[Volume | np.ndarray], rel_eps: float = REL_EPS) -> np.ndarray:
    """Full-resolution brain mask from volumes or plain arrays (for the failure generator and tests)."""
    arrays = [subsample(v, 1) if isinstance(v, Volume) else np.asarray(v, dtype=np.float32) for v in images]
    return clean_mask(signal_mask(arrays, rel_eps))
