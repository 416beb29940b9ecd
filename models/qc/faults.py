"""Subtle pipeline faults made from a good segmentation (issue 18 families), randomised and seeded.

Each generator takes a label map (0/1/2 and 3 or 4 for enhancing tumour) and a seeded generator and returns
the corrupted map; direction and magnitude are drawn from the seed, so evaluations use instances no rule
was tuned on. Axis 0 is left-right, 1 anterior-posterior, 2 inferior-superior (BraTS storage).

``shift``          the whole map moved 1.5-3 mm along an axis or an oblique direction (header/resampling).
``erode``/``dilate`` every region (WT, TC, ET) eroded/dilated by 1-2 voxels (systematic under/over).
``upsample``       the map taken to a x2 or x3 coarser lattice (all axes, or the slice axis only, random
                   phase) and back with nearest neighbour: a staircase surface.
``slab``           the top or bottom 20-50 % of the tumour's axial extent lost (missing slab).
``fov_crop``       the tumour cut along a random axis and side, 15-50 % of its extent (cropped FOV).
``swap_et_ncr``    enhancing tumour and necrosis exchanged.
``swap_ncr_ed``    necrosis and edema exchanged.
``decathlon``      the map written in the Medical Segmentation Decathlon order (1 edema, 2 non-enhancing,
                   3 enhancing) and read as BraTS.
``drop_region``    one compartment (ET, necrosis or edema, >= 1000 voxels) written as background.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi

from dqe.models.qc.brain import bbox
from dqe.models.qc.regional import cross_dilate, cross_erode

NECROSIS, EDEMA = 1, 2
MIN_VOXELS = 1000

FAMILIES: tuple[str, ...] = (
    "shift",
    "erode",
    "dilate",
    "upsample",
    "slab",
    "fov_crop",
    "swap_et_ncr",
    "swap_ncr_ed",
    "decathlon",
    "drop_region",
)


def _et_label(labels: np.ndarray) -> int:
    return 4 if np.count_nonzero(labels == 4) > np.count_nonzero(labels == 3) else 3


def _shift(lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mm = rng.uniform(1.5, 3.0)
    if rng.random() < 0.5:
        vec = np.zeros(3)
        vec[rng.integers(3)] = 1.0
    else:
        vec = rng.normal(size=3)
    vec = vec / np.linalg.norm(vec) * mm * rng.choice([-1.0, 1.0])
    return ndi.shift(lab, vec, order=0, mode="constant", cval=0)


def _regions_op(lab: np.ndarray, rng: np.random.Generator, grow: bool) -> np.ndarray:
    k = int(rng.integers(1, 3))
    et_l = _et_label(lab)
    box = bbox(lab > 0, margin=k + 1)
    sub = lab[box]
    wt, tc, et = sub > 0, (sub == NECROSIS) | (sub == et_l), sub == et_l
    op = cross_dilate if grow else cross_erode
    for _ in range(k):
        wt, tc, et = op(wt), op(tc), op(et)
    tc &= wt
    et &= tc
    new = np.zeros_like(sub)
    new[wt] = EDEMA
    new[tc] = NECROSIS
    new[et] = et_l
    out = lab.copy()
    out[box] = new
    return out


def _upsample(lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    f = int(rng.choice([2, 3]))
    axes = (0, 1, 2) if rng.random() < 0.5 else (2,)
    out = lab
    for ax in axes:
        phase = int(rng.integers(f))
        a = np.moveaxis(out, ax, 0)
        idx = np.arange(a.shape[0])
        src = np.clip(((idx + phase) // f) * f - phase + f // 2, 0, a.shape[0] - 1)
        out = np.moveaxis(a[src], 0, ax)
    return np.ascontiguousarray(out)


def _cut(lab: np.ndarray, rng: np.random.Generator, axis: int, lo: float, hi: float) -> np.ndarray:
    idx = np.flatnonzero((lab > 0).any(axis=tuple(a for a in range(3) if a != axis)))
    extent = idx[-1] - idx[0] + 1
    n = max(1, int(round(extent * rng.uniform(lo, hi))))
    out = lab.copy()
    sl: list[slice] = [slice(None)] * 3
    if rng.random() < 0.5:
        sl[axis] = slice(idx[-1] + 1 - n, None)
    else:
        sl[axis] = slice(None, idx[0] + n)
    out[tuple(sl)] = 0
    return out


def _swap(lab: np.ndarray, a: int, b: int) -> np.ndarray:
    out = lab.copy()
    out[lab == a] = b
    out[lab == b] = a
    return out


def _decathlon(lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    et_l = _et_label(lab)
    msd = np.zeros_like(lab)
    msd[lab == EDEMA] = 1
    msd[lab == NECROSIS] = 2
    msd[lab == et_l] = 3
    return msd  # read as BraTS 1/2/3


def _drop(lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    et_l = _et_label(lab)
    options = [k for k in (et_l, NECROSIS, EDEMA) if np.count_nonzero(lab == k) >= MIN_VOXELS]
    out = lab.copy()
    if options:
        out[lab == int(rng.choice(options))] = 0
    return out


GENERATORS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "shift": _shift,
    "erode": lambda lab, rng: _regions_op(lab, rng, grow=False),
    "dilate": lambda lab, rng: _regions_op(lab, rng, grow=True),
    "upsample": _upsample,
    "slab": lambda lab, rng: _cut(lab, rng, 2, 0.2, 0.5),
    "fov_crop": lambda lab, rng: _cut(lab, rng, int(rng.integers(3)), 0.15, 0.5),
    "swap_et_ncr": lambda lab, rng: _swap(lab, _et_label(lab), NECROSIS),
    "swap_ncr_ed": lambda lab, rng: _swap(lab, NECROSIS, EDEMA),
    "decathlon": _decathlon,
    "drop_region": _drop,
}
DETERMINISTIC = frozenset({"swap_et_ncr", "swap_ncr_ed", "decathlon"})


def applicable(labels: np.ndarray) -> tuple[str, ...]:
    """Families that change ``labels`` materially (swaps need both compartments >= 1000 voxels)."""
    c = np.bincount(labels.ravel().astype(np.intp), minlength=5)
    et = max(int(c[3]), int(c[4]))
    out = []
    for name in FAMILIES:
        if name == "swap_et_ncr" and (et < MIN_VOXELS or c[NECROSIS] < MIN_VOXELS):
            continue
        if name in ("swap_ncr_ed", "decathlon") and (c[NECROSIS] < MIN_VOXELS or c[EDEMA] < MIN_VOXELS):
            continue
        out.append(name)
    return tuple(out)


def make_fault(labels: np.ndarray, family: str, seed: int) -> np.ndarray:
    """The fault ``family`` of ``labels`` drawn with ``seed`` (uint8)."""
    rng = np.random.default_rng(seed)
    lab = np.asarray(labels).astype(np.uint8, copy=False)
    return GENERATORS[family](lab, rng).astype(np.uint8, copy=False)
