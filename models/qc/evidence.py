"""Where a segmentation and its images disagree: a per-voxel map, and the slices where it is strongest.

Intensities are robust z-scores against the exam's own normal-appearing brain (median and IQR/1.349 per
modality, :class:`~dqe.models.qc.context.Context`), so the map means the same on every scanner. Two derived
contrasts carry the BraTS annotation protocol:

* hyperintensity ``h = min(z_FLAIR, z_T2)`` clipped to [-3, 6]: the whole tumour is the FLAIR/T2 abnormality;
* enhancement ``e = z_T1c - z_T1`` clipped to [-6, 6]: enhancing tumour is brighter on T1c than on T1.

Per region the map is non-negative, in z units, and marks two kinds of disagreement:

* **wt** -- labelled edema (WT minus core) that is not hyperintense: ``max(0, wt_atypical_z - h)``;
  unlabelled brain within ``band_mm`` of the WT that is hyperintense: ``max(0, h - wt_typical_z)``;
* **tc** -- labelled core that is neither hyperintense nor enhancing: ``max(0, tc_atypical_z - max(h, e))``;
  edema-labelled tissue that enhances like core: ``max(0, e - et_typical_z)``;
* **et** -- labelled ET that does not enhance: ``max(0, et_atypical_z - e)``; unlabelled-as-ET tissue
  inside the WT or within the band that enhances: ``max(0, e - et_typical_z)``.

The combined map is the maximum over the regions. It is a visual aid for a reviewer (where to look), not a
check: vessels and choroid plexus also enhance, and that is why the "missed" terms stay inside the tumour
and a band around it. Outside the tumour's box grown by ``band_mm`` the map is 0.

Evidence slices: per region and per view, the slice whose summed map (z x ml) is largest; the three
slices of a region (axial = array axis 2, coronal = 1, sagittal = 0) are listed strongest first. They are
found on the checks' lattice (every ``step``-th voxel) and reported as full-resolution indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dqe.models.case import Case
from dqe.models.qc.brain import bbox
from dqe.models.qc.context import Context
from dqe.models.qc.morphology import box_dilate
from dqe.models.qc.types import REGIONS, EvidenceSlice

AXES = (("sagittal", 0), ("coronal", 1), ("axial", 2))


@dataclass(frozen=True)
class EvidenceConfig:
    """Thresholds of the evidence map, in robust z units of normal-appearing brain; ``band_mm`` in mm.

    Defaults follow the gate's own intensity rules (:mod:`dqe.models.qc.config`: the WT is judged
    FLAIR-hyperintense at z >= 1.5, enhancement counts at z >= 2); they are not fitted to any case.
    ``min_strength`` (z x ml) drops slices whose evidence is noise (a few voxels just past a threshold).
    """

    wt_atypical_z: float = 1.0
    wt_typical_z: float = 2.0
    tc_atypical_z: float = 1.0
    et_atypical_z: float = 0.5
    et_typical_z: float = 2.0
    band_mm: float = 10.0
    slices_per_region: int = 3
    min_strength: float = 0.05


@dataclass(frozen=True)
class EvidenceMap:
    """Per-region disagreement maps (float32, z units) inside ``box`` of a grid sampled every ``step`` voxels.

    Attributes:
        maps: region -> map of the box's shape.
        box: the box on the sampled grid.
        step: sampling step in voxels (1 = full resolution).
        shape: full-resolution grid shape.
        sample_ml: volume of one sampled voxel in ml.
    """

    maps: dict[str, np.ndarray]
    box: tuple[slice, slice, slice]
    step: int
    shape: tuple[int, int, int]
    sample_ml: float

    def combined(self) -> np.ndarray:
        """The maximum over regions, on the full-resolution grid (requires ``step == 1``), zero outside."""
        if self.step != 1:
            raise ValueError("the combined full-grid map needs a map computed at step 1")
        out = np.zeros(self.shape, dtype=np.float32)
        out[self.box] = np.maximum.reduce([self.maps[r] for r in REGIONS])
        return out

    def slices(self, region: str, k: int = 3, min_strength: float = 0.0) -> list[EvidenceSlice]:
        """The strongest slice of ``region`` per view (full-resolution indices), strongest first, at most ``k``.

        ``strength`` is the map summed over the slice (one voxel thick), in z x ml; views whose strongest slice
        is at or below
        ``min_strength`` are left out.
        """
        m = self.maps[region]
        out = []
        for name, axis in AXES:
            others = tuple(a for a in range(3) if a != axis)
            profile = m.sum(axis=others, dtype=np.float64)
            if profile.size == 0 or profile.max() <= 0:
                continue
            j = int(np.argmax(profile))
            start = self.box[axis].start or 0
            index = min((start + j) * self.step, self.shape[axis] - 1)
            strength = float(profile[j]) * self.sample_ml / self.step  # one voxel thick at any step
            if strength > min_strength:
                out.append(EvidenceSlice(name, index, strength))
        out.sort(key=lambda s: -s.strength)
        return out[:k]


def _contrasts(
    images: dict[str, np.ndarray], stats: dict[str, tuple[float, float]]
) -> tuple[np.ndarray, np.ndarray]:
    def z(name: str) -> np.ndarray:
        med, scale = stats[name]
        return (images[name].astype(np.float32) - np.float32(med)) / np.float32(scale)

    hyper = np.clip(np.minimum(z("flair"), z("t2")), -3.0, 6.0)
    enh = np.clip(z("t1c") - z("t1"), -6.0, 6.0)
    return hyper, enh


def region_maps(
    images: dict[str, np.ndarray],
    labels: np.ndarray,
    brain: np.ndarray,
    band: np.ndarray,
    stats: dict[str, tuple[float, float]],
    cfg: EvidenceConfig | None = None,
) -> dict[str, np.ndarray]:
    """The per-region maps (see the module docstring) on arrays of one shape.

    Args:
        images: ``t1c``, ``t1``, ``t2``, ``flair`` intensities (scanner units).
        labels: labels 0-4 (3 and 4 both enhancing tumour).
        brain: brain mask.
        band: brain voxels outside the WT within ``band_mm`` of it.
        stats: per modality (median, robust SD) of normal-appearing brain.
    """
    c = cfg or EvidenceConfig()
    hyper, enh = _contrasts(images, stats)
    wt = labels > 0
    et = labels >= 3
    tc = et | (labels == 1)
    edema = wt & ~tc
    zero = np.float32(0.0)
    near = band & brain
    wt_map = np.where(edema, np.maximum(zero, c.wt_atypical_z - hyper), zero)
    wt_map = np.maximum(wt_map, np.where(near, np.maximum(zero, hyper - c.wt_typical_z), zero))
    tc_map = np.where(tc, np.maximum(zero, c.tc_atypical_z - np.maximum(hyper, enh)), zero)
    tc_map = np.maximum(tc_map, np.where(edema, np.maximum(zero, enh - c.et_typical_z), zero))
    et_map = np.where(et, np.maximum(zero, c.et_atypical_z - enh), zero)
    et_map = np.maximum(et_map, np.where((wt | near) & ~et, np.maximum(zero, enh - c.et_typical_z), zero))
    return {"wt": wt_map.astype(np.float32), "tc": tc_map.astype(np.float32), "et": et_map.astype(np.float32)}


def _crop_images(case: Case, box: tuple[slice, slice, slice]) -> dict[str, np.ndarray]:
    out = {}
    for vol in case.images:
        raw = np.asarray(vol.data[box])
        img = (raw.astype(np.float64) * vol.slope + vol.inter) if vol.scaled else raw
        img = np.asarray(img, dtype=np.float32)
        if not np.isfinite(img).all():
            img = np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0)
        out[vol.name] = img
    return out


def _band(wt: np.ndarray, radius: int) -> np.ndarray:
    return box_dilate(wt, max(radius, 1)) & ~wt


def evidence_map(
    ctx: Context, full_resolution: bool = False, cfg: EvidenceConfig | None = None
) -> EvidenceMap | None:
    """The disagreement maps of a case, on the checks' lattice or at full resolution.

    Args:
        ctx: the case's check context (its normal-brain statistics and brain mask are reused).
        full_resolution: compute at every voxel (for writing the NIfTI map) instead of the lattice.

    Returns:
        The maps, or ``None`` when the exam has too little normal-appearing brain for statistics or no tumour.
    """
    c = cfg or EvidenceConfig()
    stats = ctx.stats
    if stats is None or ctx.wt_count == 0:
        return None
    shape = tuple(int(s) for s in ctx.case.shape)
    if not full_resolution:
        radius = int(round(c.band_mm / float(min(ctx.spacing_mm))))
        box = bbox(ctx.wt, margin=radius + 1)
        labels = ctx.labels[box]
        band = _band(labels > 0, radius)
        images = {k: v[box] for k, v in ctx.images.items()}
        maps = region_maps(images, labels, ctx.brain[box], band, stats, c)
        return EvidenceMap(maps, box, ctx.step, shape, ctx.sample_ml)  # type: ignore[arg-type]
    radius = int(round(c.band_mm / float(min(ctx.zooms))))
    full_labels = ctx.case.labels
    box = bbox(full_labels > 0, margin=radius + 1)
    labels = full_labels[box]
    # the lattice brain mask, read back at every voxel (nearest lattice point at or before it)
    s = ctx.step
    idx = [np.minimum(np.arange(b.start, b.stop) // s, ctx.brain.shape[a] - 1) for a, b in enumerate(box)]
    brain = ctx.brain[np.ix_(*idx)]
    band = _band(labels > 0, radius)
    maps = region_maps(_crop_images(ctx.case, box), labels, brain, band, stats, c)
    return EvidenceMap(maps, box, 1, shape, ctx.voxel_ml)  # type: ignore[arg-type]


def evidence_slices(
    emap: EvidenceMap | None, cfg: EvidenceConfig | None = None
) -> dict[str, list[EvidenceSlice]]:
    """Per region, its strongest slices (empty lists when there is no map)."""
    c = cfg or EvidenceConfig()
    if emap is None:
        return {r: [] for r in REGIONS}
    return {r: emap.slices(r, c.slices_per_region, c.min_strength) for r in REGIONS}
