"""Seeded synthetic segmentation failures, made from a good segmentation.

Each mode imitates a way real segmentation pipelines fail (the failures the QC gate must catch and a
quality model should learn to rate low):

``spill``
    tumour labels spilled over large regions of the head (20-60 % of the head, brain *and* the skull/scalp
    band around it), as when an algorithm runs on images that were not skull-stripped or badly normalised.
``all_voxels``
    every voxel labelled: the original labels kept, every background voxel written as edema or necrosis.
``shift``
    the whole segmentation translated by 4-30 voxels (log-uniform) in a random direction, zero-filled:
    a segmentation saved on the wrong grid / misregistered.
``flip_lr``
    mirrored left-right about the brain's midline (about the grid centre without a brain mask): the
    orientation error of a wrong header or an RAS/LPS mix-up.
``erode``
    heavy erosion: 60-90 % of the whole-tumour voxels removed from the outside in (labels kept).
``dilate``
    heavy dilation: the whole tumour grown by 8-20 voxels as edema (inside the brain when a mask is given).
``false_positives``
    3-8 spurious blobs (radius 4-10 voxels) in brain far from the lesion, some with an enhancing core.
``drop_enhancing``
    enhancing tumour dropped: relabelled as necrosis or as edema (chosen by the seed); needs ET voxels.
``swap_enhancing_necrosis``
    enhancing tumour and necrosis labels exchanged; needs both.
``empty``
    no tumour label at all (a :class:`~dqe.models.case.Case` rejects it with ``EmptySegmentation``).

Labels use the input's convention: enhancing tumour stays 4 when the input uses legacy label 4, else 3.
Axis 0 of the stored array is taken as left-right, as in BraTS/SRI-24 files (LPS, x first).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from dqe.models.qc.brain import bbox
from dqe.models.qc.morphology import box_dilate, box_erode

FAILURE_MODES: tuple[str, ...] = (
    "spill",
    "all_voxels",
    "shift",
    "flip_lr",
    "erode",
    "dilate",
    "false_positives",
    "drop_enhancing",
    "swap_enhancing_necrosis",
    "empty",
)

NECROSIS, EDEMA = 1, 2
# The enhancing-tumour modes need this many voxels of each compartment they change (1 ml at 1 mm): dropping
# or swapping a few hundred voxels of ET (TCGA-DU-7294 has 0-352) is not a failure a reader would notice.
MIN_COMPARTMENT_VOXELS = 1000


def enhancing_label(labels: np.ndarray) -> int:
    """The label value used for enhancing tumour: 4 for the legacy convention, else 3."""
    return 4 if bool((labels == 4).any()) and not bool((labels == 3).any()) else 3


def applicable_modes(labels: np.ndarray, min_voxels: int = MIN_COMPARTMENT_VOXELS) -> tuple[str, ...]:
    """The failure modes that make a real failure of ``labels``: the ET modes need at least ``min_voxels``
    of enhancing tumour, the swap also of necrosis."""
    counts = np.bincount(np.asarray(labels).ravel().astype(np.intp, copy=False), minlength=5)
    has_et = int(counts[3] + counts[4]) >= min_voxels
    has_ncr = int(counts[NECROSIS]) >= min_voxels
    modes = []
    for mode in FAILURE_MODES:
        if mode == "drop_enhancing" and not has_et:
            continue
        if mode == "swap_enhancing_necrosis" and not (has_et and has_ncr):
            continue
        modes.append(mode)
    return tuple(modes)


def generate_failure(
    labels: np.ndarray, mode: str, seed: int, brain_mask: np.ndarray | None = None
) -> np.ndarray:
    """A failed version of a good segmentation; same seed and inputs, same output.

    Args:
        labels: 3-D integer label volume (0 background, 1 necrosis, 2 edema, 3 or 4 enhancing tumour).
        mode: one of :data:`FAILURE_MODES`.
        seed: random seed (direction, magnitude, blob positions, ...).
        brain_mask: optional boolean brain mask on the same grid (e.g. from
            :func:`dqe.models.qc.brain.brain_mask_full`); makes spills, blobs, dilation and the flip axis
            anatomically placed. Without it the whole grid is treated as head.

    Returns:
        A new label volume with the dtype and shape of ``labels``.

    Raises:
        ValueError: unknown mode, not a 3-D volume, an empty input, or a mode that does not apply to these
            labels (see :func:`applicable_modes`: the ET modes need >= 1000 voxels of ET, the swap also of
            necrosis).
    """
    labels = np.asarray(labels)
    if mode not in FAILURE_MODES:
        raise ValueError(f"failure mode {mode!r} is not one of {FAILURE_MODES}")
    if labels.ndim != 3:
        raise ValueError(f"labels have shape {labels.shape}; expected a 3-D volume")
    if brain_mask is not None and brain_mask.shape != labels.shape:
        raise ValueError(f"brain_mask has shape {brain_mask.shape}; labels have shape {labels.shape}")
    if not (labels > 0).any():
        raise ValueError("labels have no tumour voxel; a failure needs a segmentation to start from")
    if mode not in applicable_modes(labels):
        raise ValueError(
            f"failure mode {mode!r} does not apply: it needs >= {MIN_COMPARTMENT_VOXELS} voxels of the "
            "compartments it changes (see applicable_modes)"
        )
    rng = np.random.default_rng(seed)
    brain = None if brain_mask is None else np.asarray(brain_mask, dtype=bool)
    out = _MODES[mode](labels.copy(), rng, brain)
    return out.astype(labels.dtype, copy=False)


# ----------------------------------------------------------------------------------------- the modes
def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, cell: int = 12) -> np.ndarray:
    """Low-frequency random field on ``shape`` (blobs ~``cell`` voxels across), zero mean."""
    coarse = tuple(max(2, s // cell + 2) for s in shape)
    field = ndi.gaussian_filter(rng.normal(size=coarse), sigma=0.8)
    zoom = [s / c for s, c in zip(shape, coarse, strict=True)]
    return ndi.zoom(field, zoom, order=1)[: shape[0], : shape[1], : shape[2]]


def _head(labels: np.ndarray, brain: np.ndarray | None, margin: int) -> np.ndarray:
    if brain is None:
        return np.ones(labels.shape, dtype=bool)
    return box_dilate(brain, margin)


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    return bbox(mask, margin=margin)


def _spill(labels: np.ndarray, rng: np.random.Generator, brain: np.ndarray | None) -> np.ndarray:
    head = _head(labels, brain, margin=8)
    field = _smooth_field(labels.shape, rng)
    frac = rng.uniform(0.2, 0.6)
    cut = np.quantile(field[head], 1.0 - frac)
    spill = head & (field >= cut)
    kinds = _smooth_field(labels.shape, rng, cell=8)
    et = enhancing_label(labels)
    new = np.where(kinds > 0.4, et, np.where(kinds < -0.4, NECROSIS, EDEMA)).astype(labels.dtype)
    out = labels.copy()
    mask = spill & (labels == 0)
    out[mask] = new[mask]
    return out


def _all_voxels(labels: np.ndarray, rng: np.random.Generator, brain: np.ndarray | None) -> np.ndarray:
    fill = EDEMA if rng.random() < 0.7 else NECROSIS
    out = labels.copy()
    out[labels == 0] = fill
    return out


def _shift(labels: np.ndarray, rng: np.random.Generator, brain: np.ndarray | None) -> np.ndarray:
    magnitude = float(np.exp(rng.uniform(np.log(4.0), np.log(30.0))))
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    offset = np.round(direction * magnitude).astype(int)
    if not offset.any():
        offset[int(np.argmax(np.abs(direction)))] = 4
    out = np.zeros_like(labels)
    src = tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip(offset, labels.shape, strict=True))
    dst = tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip(offset, labels.shape, strict=True))
    out[dst] = labels[src]
    if not (out > 0).any():  # shifted off the grid: shift back half-way
        return _shift(labels, rng, brain)
    return out


def _flip_lr(labels: np.ndarray, rng: np.random.Generator, brain: np.ndarray | None) -> np.ndarray:
    n = labels.shape[0]
    if brain is None or not brain.any():
        return labels[::-1].copy()
    xs = np.flatnonzero(brain.any(axis=(1, 2)))
    mirror = int(xs[0] + xs[-1])  # index i maps to mirror - i
    src = mirror - np.arange(n)
    valid = (src >= 0) & (src < n)
    out = np.zeros_like(labels)
    out[valid] = labels[src[valid]]
    return out


def _erode(labels: np.ndarray, rng: np.random.Generator, brain: np.ndarray | None) -> np.ndarray:
    wt = labels > 0
    box = _box(wt, 1)
    depth = ndi.distance_transform_edt(wt[box])
    inside = depth[wt[box]]
    removed = rng.uniform(0.6, 0.9)
    cut = float(np.quantile(inside, removed))
    keep = depth > cut
    if not keep.any():
        keep = depth >= depth.max()
    out = np.zeros_like(labels)
    out[box][keep] = labels[box][keep]
    return out


def _dilate(labels: np.ndarray, rng: np.random.Generator, brain: np.ndarray | None) -> np.ndarray:
    radius = rng.uniform(8.0, 20.0)
    wt = labels > 0
    box = _box(wt, int(np.ceil(radius)) + 1)
    grown = ndi.distance_transform_edt(~wt[box]) <= radius
    if brain is not None:
        grown &= brain[box] | wt[box]
    out = labels.copy()
    out[box][grown & ~wt[box]] = EDEMA
    return out


def _false_positives(labels: np.ndarray, rng: np.random.Generator, brain: np.ndarray | None) -> np.ndarray:
    wt = labels > 0
    allowed = brain.copy() if brain is not None else np.ones(labels.shape, dtype=bool)
    box = _box(wt, 16)
    allowed[box] &= ndi.distance_transform_edt(~wt[box]) > 15
    allowed = box_erode(allowed, 4)
    candidates = np.argwhere(allowed)
    if candidates.size == 0:
        candidates = np.argwhere(~wt)
    et = enhancing_label(labels)
    out = labels.copy()
    for _ in range(int(rng.integers(3, 9))):
        centre = candidates[int(rng.integers(len(candidates)))]
        radius = rng.uniform(4.0, 10.0)
        lo = np.maximum(centre - int(radius) - 1, 0)
        hi = np.minimum(centre + int(radius) + 2, labels.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        gx, gy, gz = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        d2 = (gx - centre[0]) ** 2 + (gy - centre[1]) ** 2 + (gz - centre[2]) ** 2
        blob = d2 <= radius**2
        sub = out[box]
        sub[blob & (sub == 0)] = EDEMA
        if rng.random() < 0.5:
            sub[(d2 <= (0.5 * radius) ** 2) & blob] = et
    return out


def _drop_enhancing(labels: np.ndarray, rng: np.random.Generator, brain: np.ndarray | None) -> np.ndarray:
    into = NECROSIS if rng.random() < 0.5 else EDEMA
    out = labels.copy()
    out[(labels == 3) | (labels == 4)] = into
    return out


def _swap(labels: np.ndarray, rng: np.random.Generator, brain: np.ndarray | None) -> np.ndarray:
    et = enhancing_label(labels)
    out = labels.copy()
    out[(labels == 3) | (labels == 4)] = NECROSIS
    out[labels == NECROSIS] = et
    return out


def _empty(labels: np.ndarray, rng: np.random.Generator, brain: np.ndarray | None) -> np.ndarray:
    return np.zeros_like(labels)


_MODES = {
    "spill": _spill,
    "all_voxels": _all_voxels,
    "shift": _shift,
    "flip_lr": _flip_lr,
    "erode": _erode,
    "dilate": _dilate,
    "false_positives": _false_positives,
    "drop_enhancing": _drop_enhancing,
    "swap_enhancing_necrosis": _swap,
    "empty": _empty,
}
