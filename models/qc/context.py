"""What the checks share: the case on a coarse lattice, a brain mask and normal-brain intensity statistics.

Everything is computed once per case, lazily, on every ``step``-th voxel (2 mm for BraTS data), and the
label-geometry work is done inside the bounding box of the tumour, so the checks stay within a few tens of
milliseconds. Sampling every ``step``-th voxel keeps voxel values exact (no interpolation); fractions and
medians computed on the lattice are unbiased estimates of the full-resolution ones.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
from scipy import ndimage as ndi

from dqe.models.case import Case
from dqe.models.qc.brain import bbox, clean_mask, signal_mask, subsample
from dqe.models.qc.morphology import box_dilate

NECROSIS, EDEMA, ENHANCING = 1, 2, 3
MAX_CROP_SAMPLES = 400_000  # coarser lattice when the tumour's box would hold more lattice points
NAB_MARGIN = 2  # lattice voxels between tumour and normal-appearing brain
FULL26 = np.ones((3, 3, 3), dtype=bool)


def _adaptive_step(labels: np.ndarray, base: int) -> int:
    """``base``, or coarser when the tumour's bounding box is huge (every voxel labelled, spills)."""
    probe = labels[::4, ::4, ::4]
    box = bbox(probe > 0)
    n = 1
    for sl, size in zip(box, probe.shape, strict=True):
        start, stop, _ = sl.indices(size)
        n *= max(stop - start, 1) * 4
    step = base
    while n / step**3 > MAX_CROP_SAMPLES and step < 4:
        step += 1
    return step


def _upsample2(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour 2x upsampling of a lattice mask back to ``shape``."""
    up = mask.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    return up[: shape[0], : shape[1], : shape[2]]


class Context:
    """Lazily computed shared state of the checks for one case.

    Attributes:
        case: the validated case.
        step: lattice spacing in voxels.
        voxel_ml: volume of one full-resolution voxel in ml (from the segmentation's zooms).
        sample_ml: volume represented by one lattice point in ml.
    """

    def __init__(self, case: Case, step: int = 2) -> None:
        self.case = case
        self.step = _adaptive_step(case.labels, step)
        zooms = tuple(float(z) for z in case.segmentation.zooms[:3])
        self.zooms = zooms if all(np.isfinite(z) and z > 0 for z in zooms) else (1.0, 1.0, 1.0)
        self.voxel_ml = float(np.prod(self.zooms)) / 1000.0
        self.sample_ml = self.voxel_ml * self.step**3
        self.spacing_mm = np.asarray(self.zooms) * self.step

    # ------------------------------------------------------------------ lattice volumes
    @cached_property
    def images(self) -> dict[str, np.ndarray]:
        """The four images on the lattice as float32; NaN/Inf read as 0 (no signal)."""
        out = {}
        for vol in self.case.images:
            img = subsample(vol, self.step)
            if vol.data.dtype.kind == "f" and not np.isfinite(img).all():
                np.nan_to_num(img, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            out[vol.name] = img
        return out

    @cached_property
    def labels(self) -> np.ndarray:
        s = slice(None, None, self.step)
        lab = np.ascontiguousarray(self.case.labels[s, s, s])
        lab[lab == 4] = ENHANCING
        return lab

    @cached_property
    def brain(self) -> np.ndarray:
        """Brain mask on the lattice: signal on any modality, cleaned on a 2x coarser lattice."""
        sig = signal_mask(list(self.images.values()))
        coarse = sig[::2, ::2, ::2]
        cleaned = clean_mask(coarse)
        if np.array_equal(cleaned, coarse):
            return sig
        out = sig & _upsample2(box_dilate(cleaned, 1), sig.shape)
        holes = cleaned & ~coarse
        if holes.any():
            out |= _upsample2(holes, sig.shape)
        return out

    @cached_property
    def wt(self) -> np.ndarray:
        return self.labels > 0

    @cached_property
    def wt_count(self) -> int:
        return int(np.count_nonzero(self.wt))

    # ------------------------------------------------------------------ volumes from exact counts
    @cached_property
    def counts_ml(self) -> dict[str, float]:
        c = self.case.counts

        def get(i: int) -> float:
            return float(c[i]) if i < c.size else 0.0

        return {
            "wt": float(c[1:].sum()) * self.voxel_ml,
            "ncr": get(1) * self.voxel_ml,
            "ed": get(2) * self.voxel_ml,
            "et": (get(3) + get(4)) * self.voxel_ml,
        }

    @cached_property
    def brain_ml(self) -> float:
        return float(np.count_nonzero(self.brain)) * self.sample_ml

    # ------------------------------------------------------------------ tumour crop
    @cached_property
    def crop(self) -> tuple[slice, slice, slice]:
        """Bounding box of the tumour on the lattice, grown by one voxel more than the ring around it."""
        return bbox(self.wt, margin=NAB_MARGIN + 1)

    @cached_property
    def wt_crop(self) -> np.ndarray:
        return self.wt[self.crop]

    @cached_property
    def brain_crop(self) -> np.ndarray:
        return self.brain[self.crop]

    @cached_property
    def grown_crop(self) -> np.ndarray:
        """The tumour grown by ``NAB_MARGIN`` lattice voxels (inside the crop)."""
        return box_dilate(self.wt_crop, NAB_MARGIN)

    @cached_property
    def ring_crop(self) -> np.ndarray:
        """Brain within ``NAB_MARGIN`` lattice voxels outside the tumour."""
        return self.grown_crop & ~self.wt_crop & self.brain_crop

    # ------------------------------------------------------------------ normal-appearing brain
    @cached_property
    def nab(self) -> np.ndarray:
        nab = self.brain.copy()
        view = nab[self.crop]
        view &= ~self.grown_crop
        return nab

    @cached_property
    def nab_count(self) -> int:
        return int(np.count_nonzero(self.nab))

    @cached_property
    def stats(self) -> dict[str, tuple[float, float]] | None:
        """Per modality (median, robust SD) over normal-appearing brain; ``None`` when too little is left."""
        nab = self.nab[::2, ::2, ::2]
        if np.count_nonzero(nab) < 200:
            return None
        out = {}
        for name, img in self.images.items():
            vals = img[::2, ::2, ::2][nab]
            p25, p50, p75 = np.percentile(vals, [25.0, 50.0, 75.0])
            scale = (p75 - p25) / 1.349
            if not np.isfinite(scale) or scale <= 0:
                scale = float(np.std(vals)) or 1.0
            out[name] = (float(p50), float(scale))
        return out

    def z(self, name: str, where: np.ndarray | tuple[np.ndarray, ...]) -> np.ndarray:
        """Robust z-scores of modality ``name`` at lattice points ``where`` (mask or index tuple)."""
        assert self.stats is not None
        med, scale = self.stats[name]
        return (self.images[name][where] - med) / scale

    def z_crop(self, name: str, mask: np.ndarray) -> np.ndarray:
        """Robust z-scores of ``name`` at the points of a crop-shaped ``mask``."""
        assert self.stats is not None
        med, scale = self.stats[name]
        return (self.images[name][self.crop][mask] - med) / scale

    def hyper(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        """FLAIR/T2 hyperintensity ``min(z_flair, z_t2)`` clipped to [-3, 6] in a lattice box."""
        assert self.stats is not None
        out = []
        for name in ("flair", "t2"):
            med, scale = self.stats[name]
            out.append((self.images[name][box] - med) / scale)
        return np.clip(np.minimum(out[0], out[1]), -3.0, 6.0)

    @cached_property
    def hyper_crop(self) -> np.ndarray | None:
        """:meth:`hyper` over the tumour crop, ``None`` without normal-brain statistics."""
        return None if self.stats is None else self.hyper(self.crop)

    # ------------------------------------------------------------------ connected components
    @cached_property
    def components(self) -> tuple[np.ndarray, int, np.ndarray, int]:
        """26-connected tumour components in the crop: (labels, count, sizes, index of the largest)."""
        cc, n = ndi.label(self.wt_crop, structure=FULL26)
        sizes = np.bincount(cc.ravel(), minlength=n + 1)
        sizes[0] = 0
        main = int(np.argmax(sizes)) if n else 0
        return cc, int(n), sizes, main

    @cached_property
    def main_lesion(self) -> np.ndarray:
        cc, n, _, main = self.components
        return cc == main if n else np.zeros_like(self.wt_crop)
