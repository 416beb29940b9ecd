"""Failure *mechanisms*: seeded corruptions of a good segmentation, each from a cause that happens in real
pipelines and none built as the inverse of a QC check.

:mod:`dqe.models.qc.failures` holds the failure *modes* the gate was calibrated on (spill, shift, flip, ...);
several of them are exactly what one check measures, so a gate evaluation on them is circular. The
mechanisms here are for an independent evaluation (``benchmarks/build_gate_eval_list.py``,
``dqe gate-eval``); no gate threshold was set on them. Each draws its severity from the seed, so the same
mechanism yields mild and gross failures (the report bands them by whole-tumour Dice to the source).

Resampling
    ``interp_linear``: the label map taken to a coarser grid (1.5-3.5 mm) and back with *linear*
    interpolation of the label values, then rounded -- what a registration tool does when labels are
    resampled like images: blocky borders and spurious intermediate labels (an edema/background border
    becomes a necrosis rim). ``nearest_wrong_spacing``: resampled with nearest neighbour but with a wrong
    voxel size on one axis or all (scale 0.8-0.95 or 1.05-1.25 about the voxel origin, as when a header's
    spacing is lost or the map was written at the spacing of another image).
Geometry
    ``missing_slab``: 10-60 % of the tumour's axial extent zeroed as a slab of consecutive slices (a lost
    chunk in slice-wise inference or a DICOM series with missing slices). ``fov_cropped``: the
    segmentation ran on a cropped field of view (15-60 % of the tumour's extent cut along one axis, the
    cut side chosen by the seed). ``other_registration``: the segmentation was made on a differently
    preprocessed copy of the images (another skull-strip/registration): a rigid rotation of 2-10 degrees
    about a random axis through the brain's centre, a 0-4 voxel translation and a 0.9-1.1 scale.
    ``flip_ap``: one axis of an RAS<->LPS conversion forgotten for the labels (anterior-posterior reversed;
    the left-right mirror is what the orientation check measures, so it is not used here).
Label conventions
    ``labels_124_as_123``: a 1/2/4 map read by a tool that knows 1/2/3 only: the unknown enhancing label is
    written as background. ``labels_123_as_124``: a 1/2/3 map read with the BraTS 2012-2016 meaning of
    label 3 (non-enhancing tumour, merged into label 1 since 2017): enhancing tumour becomes necrosis.
    ``labels_msd_order``: a map in the Medical Segmentation Decathlon order (1 edema, 2 non-enhancing
    tumour, 3 enhancing) read as BraTS: necrosis and edema exchanged. ``class_dropped``: one output class
    lost (a model's channel that never fires): edema or necrosis written as background.

Axis 0 is taken as left-right, 1 as anterior-posterior, 2 as inferior-superior (BraTS/SRI-24 storage).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from dqe.models.qc.brain import bbox
from dqe.models.qc.failures import MIN_COMPARTMENT_VOXELS
from dqe.models.stats import REGION_LABELS, region_dice

NECROSIS, EDEMA = 1, 2

MECHANISMS: tuple[str, ...] = (
    "interp_linear",
    "nearest_wrong_spacing",
    "missing_slab",
    "fov_cropped",
    "other_registration",
    "flip_ap",
    "labels_124_as_123",
    "labels_123_as_124",
    "labels_msd_order",
    "class_dropped",
)
# Mechanisms whose output does not depend on the seed (one instance per source is enough).
DETERMINISTIC: frozenset[str] = frozenset(
    {"flip_ap", "labels_124_as_123", "labels_123_as_124", "labels_msd_order"}
)
REGIONS = REGION_LABELS  # from the preprocessing contract (dqe.models.stats)


def applicable_mechanisms(labels: np.ndarray, min_voxels: int = MIN_COMPARTMENT_VOXELS) -> tuple[str, ...]:
    """The mechanisms that change ``labels`` materially: the label-convention ones need >= ``min_voxels`` of
    the labels they touch (and the 1/2/4 reading an ET of 4, the 1/2/3 reading an ET of 3); the MSD order
    and ``class_dropped`` need necrosis or edema."""
    counts = np.bincount(np.asarray(labels).ravel().astype(np.intp, copy=False), minlength=5)
    big = {k: int(counts[k]) >= min_voxels for k in range(5)}
    out = []
    for name in MECHANISMS:
        if name == "labels_124_as_123" and not big[4]:
            continue
        if name == "labels_123_as_124" and not big[3]:
            continue
        if name == "labels_msd_order" and not (big[NECROSIS] or big[EDEMA]):
            continue
        if name == "class_dropped" and not (big[NECROSIS] or big[EDEMA]):
            continue
        out.append(name)
    return tuple(out)


def generate(
    labels: np.ndarray, mechanism: str, seed: int, brain_mask: np.ndarray | None = None
) -> np.ndarray:
    """A failed copy of a good segmentation; same inputs and seed, same output.

    Args:
        labels: 3-D integer label volume (0 background, 1 necrosis, 2 edema, 3 or 4 enhancing tumour).
        mechanism: one of :data:`MECHANISMS`.
        seed: random seed (severity, direction, position).
        brain_mask: optional boolean brain mask on the same grid; its centre is the pivot of
            ``other_registration`` (the grid centre without it).

    Returns:
        A new label volume with the dtype and shape of ``labels``.

    Raises:
        ValueError: unknown mechanism, not 3-D, an empty input, a mask of another shape, or a mechanism that
            does not apply to these labels (see :func:`applicable_mechanisms`).
    """
    labels = np.asarray(labels)
    if mechanism not in MECHANISMS:
        raise ValueError(f"mechanism {mechanism!r} is not one of {MECHANISMS}")
    if labels.ndim != 3:
        raise ValueError(f"labels have shape {labels.shape}; expected a 3-D volume")
    if brain_mask is not None and brain_mask.shape != labels.shape:
        raise ValueError(f"brain_mask has shape {brain_mask.shape}; labels have shape {labels.shape}")
    if not (labels > 0).any():
        raise ValueError("labels have no tumour voxel; a failure needs a segmentation to start from")
    if mechanism not in applicable_mechanisms(labels):
        raise ValueError(
            f"mechanism {mechanism!r} does not apply to these labels (see applicable_mechanisms)"
        )
    rng = np.random.default_rng(seed)
    out = _MECHANISMS[mechanism](labels, rng, brain_mask)
    return out.astype(labels.dtype, copy=False)


# ----------------------------------------------------------------------------------------- resampling
def _box(labels: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    return bbox(labels > 0, margin=margin)


def _interp_linear(labels: np.ndarray, rng: np.random.Generator, brain: np.ndarray | None) -> np.ndarray:
    factor = float(rng.uniform(1.5, 3.5))
    box = _box(labels, margin=8)
    crop = labels[box].astype(np.float32)
    coarse_axes = [np.arange(0.0, n - 1 + 1e-6, factor) for n in crop.shape]
    coarse = ndi.map_coordinates(crop, np.meshgrid(*coarse_axes, indexing="ij"), order=1, mode="nearest")
    fine_axes = [np.arange(n) / factor for n in crop.shape]
    back = ndi.map_coordinates(coarse, np.meshgrid(*fine_axes, indexing="ij"), order=1, mode="nearest")
    out = labels.copy()
    out[box] = np.clip(np.rint(back), 0, int(labels.max())).astype(labels.dtype)
    return out


def _nearest_wrong_spacing(
    labels: np.ndarray, rng: np.random.Generator, brain: np.ndarray | None
) -> np.ndarray:
    scale = float(rng.uniform(1.05, 1.25))
    scale = scale if rng.random() < 0.5 else 1.0 / scale
    scales = (
        np.full(3, scale) if rng.random() < 0.5 else np.where(np.arange(3) == rng.integers(3), scale, 1.0)
    )
    # output voxel i reads input voxel i / s: the map written at spacing s relative to the images' grid
    return _affine_nearest(labels, np.diag(1.0 / scales), np.zeros(3))


def _affine_nearest(labels: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Nearest-neighbour ``out[o] = labels[matrix @ o + offset]`` (zero outside the grid)."""
    out = ndi.affine_transform(labels, matrix, offset=offset, order=0, mode="constant", cval=0)
    return np.asarray(out, dtype=labels.dtype)


# ----------------------------------------------------------------------------------------- geometry
def _extent(labels: np.ndarray, axis: int) -> tuple[int, int]:
    other = tuple(a for a in range(3) if a != axis)
    idx = np.flatnonzero((labels > 0).any(axis=other))
    return int(idx[0]), int(idx[-1]) + 1


def _missing_slab(labels: np.ndarray, rng: np.random.Generator, brain: np.ndarray | None) -> np.ndarray:
    lo, hi = _extent(labels, 2)
    width = max(1, round(float(rng.uniform(0.1, 0.6)) * (hi - lo)))
    start = int(rng.integers(lo, max(lo + 1, hi - width + 1)))
    out = labels.copy()
    out[:, :, start : start + width] = 0
    return out


def _fov_cropped(labels: np.ndarray, rng: np.random.Generator, brain: np.ndarray | None) -> np.ndarray:
    axis = int(rng.integers(3))
    lo, hi = _extent(labels, axis)
    cut = max(1, round(float(rng.uniform(0.15, 0.6)) * (hi - lo)))
    out = labels.copy()
    index: list[slice] = [slice(None)] * 3
    index[axis] = slice(lo, lo + cut) if rng.random() < 0.5 else slice(hi - cut, hi)
    out[tuple(index)] = 0
    return out


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation matrix about a unit ``axis`` by ``angle`` radians."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def _other_registration(labels: np.ndarray, rng: np.random.Generator, brain: np.ndarray | None) -> np.ndarray:
    direction = rng.normal(size=3)
    rot = _rotation(direction / np.linalg.norm(direction), math.radians(float(rng.uniform(2.0, 10.0))))
    rot = rot * (1.0 if rng.random() < 0.5 else float(rng.uniform(0.9, 1.1)))
    shift = rng.normal(size=3)
    shift *= float(rng.uniform(0.0, 4.0)) / max(float(np.linalg.norm(shift)), 1e-9)
    if brain is not None and brain.any():
        pivot = np.array([(s.start + s.stop - 1) / 2.0 for s in bbox(brain)])
    else:
        pivot = (np.array(labels.shape) - 1) / 2.0
    inverse = np.linalg.inv(rot)  # affine_transform maps output coordinates to input coordinates
    offset = pivot - inverse @ (pivot + shift)
    out = _affine_nearest(labels, inverse, offset)
    if not (out > 0).any():  # rotated off the grid: keep the original (never happens near the brain)
        return labels.copy()
    return out


def _flip_ap(labels: np.ndarray, rng: np.random.Generator, brain: np.ndarray | None) -> np.ndarray:
    return labels[:, ::-1, :].copy()


# ----------------------------------------------------------------------------------------- labels
def _labels_124_as_123(labels: np.ndarray, rng: np.random.Generator, brain: np.ndarray | None) -> np.ndarray:
    out = labels.copy()
    out[labels == 4] = 0
    return out


def _labels_123_as_124(labels: np.ndarray, rng: np.random.Generator, brain: np.ndarray | None) -> np.ndarray:
    out = labels.copy()
    out[labels == 3] = NECROSIS
    return out


def _labels_msd_order(labels: np.ndarray, rng: np.random.Generator, brain: np.ndarray | None) -> np.ndarray:
    out = labels.copy()
    out[labels == NECROSIS] = EDEMA
    out[labels == EDEMA] = NECROSIS
    return out


def _class_dropped(labels: np.ndarray, rng: np.random.Generator, brain: np.ndarray | None) -> np.ndarray:
    counts = np.bincount(labels.ravel().astype(np.intp, copy=False), minlength=5)
    candidates = [k for k in (NECROSIS, EDEMA) if counts[k] >= MIN_COMPARTMENT_VOXELS]
    drop = candidates[int(rng.integers(len(candidates)))]
    out = labels.copy()
    out[labels == drop] = 0
    return out


_MECHANISMS = {
    "interp_linear": _interp_linear,
    "nearest_wrong_spacing": _nearest_wrong_spacing,
    "missing_slab": _missing_slab,
    "fov_cropped": _fov_cropped,
    "other_registration": _other_registration,
    "flip_ap": _flip_ap,
    "labels_124_as_123": _labels_124_as_123,
    "labels_123_as_124": _labels_123_as_124,
    "labels_msd_order": _labels_msd_order,
    "class_dropped": _class_dropped,
}

__all__ = [
    "DETERMINISTIC",
    "MECHANISMS",
    "REGIONS",
    "applicable_mechanisms",
    "generate",
    "region_dice",
]
