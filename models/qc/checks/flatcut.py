"""Flat cuts per region: a planar face where the image evidence continues past it.

A missing slab or a cropped field of view ends a region on a plane: between two adjacent slices a large
part of the region's cross-section stops at once, and the image abnormality the region is delineated on
goes on beyond it. For every axis and direction, the labelled cross-section of slice ``i`` that is not
labelled in slice ``i+1`` (``i-1``) *and* whose next two slices are still abnormal like the region
(image model above half the region's median, on brain) is counted; the score is the largest such area as
a fraction of the region's largest cross-section along that axis (``flat_cut``). A natural border tapers
and the abnormality ends with it: a few percent. A cut: tens of percent.
"""

from __future__ import annotations

import numpy as np

from dqe.models.qc.checks.evidence import AXES, Evidence
from dqe.models.qc.regional import Regional
from dqe.models.qc.types import EvidenceSlice

MIN_VOXELS = 200
MIN_MEDIAN_Z = 1.0  # the region must stand out on its image for "continues" to mean anything


def flat_cut(reg: Regional, region: str) -> list[Evidence]:
    m = reg.mask(region)
    if np.count_nonzero(m) < MIN_VOXELS:
        return []
    box = reg.sub(region, 3)
    start = [int(sl.start or 0) for sl in box]
    m, h = m[box], reg.model(region)[box]
    med = float(np.median(h[m]))
    if med < MIN_MEDIAN_Z:
        return []
    abnormal = (h > 0.5 * med) & reg.brain[box]
    best, where = 0.0, (0, 0, 1)
    for axis in range(3):
        a = np.moveaxis(m, axis, 0)
        b = np.moveaxis(abnormal, axis, 0)
        area = a.sum(axis=(1, 2))
        top = float(area.max())
        if top <= 0 or a.shape[0] < 4:
            continue
        cont = b[1:-1] & b[2:]  # abnormal in the next two slices (direction +)
        up = (a[:-2] & ~a[1:-1] & cont).sum(axis=(1, 2)) / top
        cont_dn = b[1:-1] & b[:-2]
        dn = (a[2:] & ~a[1:-1] & cont_dn).sum(axis=(1, 2)) / top
        for arr, sign, shift in ((up, 1, 0), (dn, -1, 2)):
            if arr.size and float(arr.max()) > best:
                best = float(arr.max())
                where = (axis, int(np.argmax(arr)) + shift + int(reg.offset[axis]) + start[axis], sign)
    axis, index, sign = where
    side = ("left", "right", "anterior", "posterior", "inferior", "superior")[2 * axis + (sign < 0)]
    return [
        Evidence(
            "flat_cut",
            region,
            "flat_cut",
            best,
            "fraction",
            f"{region.upper()} ends on a plane ({AXES[axis]} slice {index}) over {100 * best:.0f}% of its "
            "largest cross-section while the images stay abnormal beyond it",
            f"the labels are cut off (missing slab or cropped field of view, {side} side by array order)",
            floor=0.01,
            slices=(EvidenceSlice(AXES[axis], index, best),),
        )
    ]
