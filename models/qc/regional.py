"""Full-resolution state of the per-region evidence checks: the tumour's box at 1 voxel, its regions and
images as robust z-scores against the exam's own normal-appearing brain.

The lattice :class:`~dqe.models.qc.context.Context` is too coarse for faults of 1-3 voxels (a 2 mm shift,
a 1-voxel erosion, a x2 staircase). Here the tumour's bounding box (from the lattice crop, grown by
``MARGIN`` voxels so that shifted and dilated copies stay inside) is read at full resolution once; every
per-region check works inside it. Intensities are ``(v - median) / robust SD`` of normal-appearing brain per
modality (the lattice statistics of :class:`Context`): the same number means the same contrast at every
site and scanner, whatever the units.

Regions (BraTS): ``wt`` = labels 1, 2, 3; ``tc`` = 1, 3; ``et`` = 3 (legacy 4 read as 3).
Image model per region (what the annotation protocol delineates it on): ``wt`` the FLAIR abnormality,
``tc`` and ``et`` the T1c appearance (the enhancing rim and what it encloses).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from dqe.models.qc.brain import bbox
from dqe.models.qc.context import EDEMA, ENHANCING, NECROSIS, Context

MARGIN = 8  # full-resolution voxels around the lattice crop (shift 3 + shells 4 + 1)
Z_CLIP = (-4.0, 8.0)  # robust z range kept: beyond it a voxel is "very" dark/bright either way
REGION_LABELS = {"wt": (NECROSIS, EDEMA, ENHANCING), "tc": (NECROSIS, ENHANCING), "et": (ENHANCING,)}
REGION_MODALITY = {"wt": "flair", "tc": "t1c", "et": "t1c"}


class Regional:
    """Lazily computed full-resolution crop of one case (built on a lattice :class:`Context`)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        shape = ctx.case.shape
        box = []
        for sl, n in zip(ctx.crop, shape, strict=True):
            start, stop, _ = sl.indices(-(-n // ctx.step))
            lo = max(0, start * ctx.step - MARGIN)
            hi = min(n, stop * ctx.step + MARGIN)
            box.append(slice(lo, hi))
        self.box: tuple[slice, slice, slice] = (box[0], box[1], box[2])
        self.offset = np.array([s.start for s in self.box])

    @cached_property
    def labels(self) -> np.ndarray:
        lab = np.array(self.ctx.case.labels[self.box], dtype=np.uint8)
        lab[lab == 4] = ENHANCING
        return lab

    def mask(self, region: str) -> np.ndarray:
        return self._masks[region]

    @cached_property
    def _masks(self) -> dict[str, np.ndarray]:
        lab = self.labels
        et = lab == ENHANCING
        tc = et | (lab == NECROSIS)
        return {"wt": lab > 0, "tc": tc, "et": et}

    def z(self, name: str) -> np.ndarray:
        """Robust z of modality ``name`` over the box, clipped to :data:`Z_CLIP` (float32; computed once)."""
        if name not in self._z:
            self._z[name] = self._robust_z(name)
        return self._z[name]

    @cached_property
    def _z(self) -> dict[str, np.ndarray]:
        return {}

    def _robust_z(self, name: str) -> np.ndarray:
        stats = self.ctx.stats
        assert stats is not None
        vol = next(v for v in self.ctx.case.images if v.name == name)
        raw = np.asarray(vol.data[self.box])
        img = raw.astype(np.float32)
        if vol.scaled:
            img = (raw.astype(np.float64) * vol.slope + vol.inter).astype(np.float32)
        if not np.isfinite(img).all():
            np.nan_to_num(img, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        med, scale = stats[name]
        img -= med
        img /= scale
        np.clip(img, *Z_CLIP, out=img)
        return img

    @cached_property
    def brain(self) -> np.ndarray:
        """Brain at full resolution in the box: the lattice brain mask, nearest-neighbour upsampled."""
        step = self.ctx.step
        idx = [np.arange(s.start, s.stop) // step for s in self.box]
        lat = self.ctx.brain
        idx = [np.minimum(i, n - 1) for i, n in zip(idx, lat.shape, strict=True)]
        return lat[np.ix_(idx[0], idx[1], idx[2])]

    def sub(self, region: str, margin: int = MARGIN) -> tuple[slice, slice, slice]:
        """The region's own bounding box inside :attr:`box`, grown by ``margin`` voxels."""
        return bbox(self.mask(region), margin=margin)

    def model(self, region: str) -> np.ndarray:
        """The image a region is delineated on (:data:`REGION_MODALITY`), as robust z."""
        return self.z(REGION_MODALITY[region])

    @property
    def voxel_ml(self) -> float:
        return self.ctx.voxel_ml

    @property
    def zooms(self) -> tuple[float, ...]:
        return self.ctx.zooms


def cross_erode(mask: np.ndarray) -> np.ndarray:
    """Erosion by the 6-neighbour cross (voxels outside the array count as background)."""
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    out[:, :, 1:] &= mask[:, :, :-1]
    out[:, :, :-1] &= mask[:, :, 1:]
    out[0] = out[-1] = False
    out[:, 0] = out[:, -1] = False
    out[:, :, 0] = out[:, :, -1] = False
    return out


def cross_dilate(mask: np.ndarray) -> np.ndarray:
    """Dilation by the 6-neighbour cross."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    out[:, :, 1:] |= mask[:, :, :-1]
    out[:, :, :-1] |= mask[:, :, 1:]
    return out


def shells(mask: np.ndarray, depth: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Layers of ``mask`` by 6-neighbour (city-block) distance to its border: ``inside[k]`` is the layer
    ``k+1`` voxels deep (``inside[0]`` = the border voxels), ``outside[k]`` the layer ``k+1`` voxels out."""
    inside, outside = [], []
    cur = mask
    for _ in range(depth):
        nxt = cross_erode(cur)
        inside.append(cur & ~nxt)
        cur = nxt
    cur = mask
    for _ in range(depth):
        nxt = cross_dilate(cur)
        outside.append(nxt & ~cur)
        cur = nxt
    return inside, outside
