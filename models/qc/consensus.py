"""Agreement of each segmentation of one case with the consensus of the *other* segmentations of that case.

When several pipelines (teams) segment the same exam, the one that disagrees with the rest is the likely
failure. In the one failure-detection benchmark on BraTS (Zenk et al., "Comparative benchmarking of failure
detection methods in medical image segmentation: Unveiling the role of confidence aggregation", Medical Image
Analysis 2025), pairwise agreement between segmentations ranked failures best (AURC 10.5 against 11.0-11.5
for learned quality regressors).

Rule (stated, not tuned): per BraTS region -- whole tumour (labels 1, 2, 3/4), tumour core (1, 3/4),
enhancing tumour (3/4) -- the consensus of the others is their **region-wise majority vote**: a voxel is in
the consensus region when *more than half* of the other segmentations have it in that region (with two
others that is their intersection, with three any two of them). This is STAPLE with equal, fixed
sensitivities and specificities and a 0.5 prior; no weights are estimated, so one bad team cannot pull the
consensus its way by being confident. Each segmentation's value is the Dice of its region with that
consensus: 1.0 when both are empty, 0.0 when exactly one is. Defined only when at least
:data:`MIN_OTHERS` = 2 other segmentations exist (with one other it is just pairwise Dice, and a tie
cannot be broken).

Everything is computed inside the bounding box of the union of all segmentations' labels (exact: voxels
outside are background in every volume).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from dqe.models.qc.types import REGIONS

MIN_OTHERS = 2
REGION_LABELS: dict[str, tuple[int, ...]] = {"wt": (1, 2, 3, 4), "tc": (1, 3, 4), "et": (3, 4)}
RULE = "region-wise majority vote of the other segmentations (> half of them), Dice with it"


def _union_box(labels: Sequence[np.ndarray]) -> tuple[slice, ...]:
    any_label = np.array(labels[0], dtype=np.uint8, copy=True)
    for lab in labels[1:]:  # in place, no boolean temporaries: one pass per volume
        np.maximum(any_label, lab, out=any_label)
    box = []
    for axis in range(any_label.ndim):
        others = tuple(a for a in range(any_label.ndim) if a != axis)
        nz = np.flatnonzero(any_label.any(axis=others))
        if nz.size == 0:
            return tuple(slice(0, 1) for _ in range(any_label.ndim))
        box.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(box)


def _dice_with_majority(mine: np.ndarray, votes: np.ndarray, hist_all: np.ndarray, n_others: int) -> float:
    """Dice of ``mine`` with "more than half of the others", from vote counts (``votes`` includes ``mine``).

    A voxel of ``mine`` has ``v - 1`` other votes, any other voxel ``v``; so both the overlap and the
    consensus size follow from two histograms of ``votes`` without building the consensus mask.
    """
    h = np.bincount(votes[mine], minlength=hist_all.size)
    v = np.arange(hist_all.size)
    overlap = int(h[2 * (v - 1) > n_others].sum())
    consensus = overlap + int((hist_all - h)[2 * v > n_others].sum())
    size = int(h.sum())
    if size == 0 and consensus == 0:
        return 1.0
    return 2.0 * overlap / (size + consensus)


def consensus_dice(
    labels: Sequence[np.ndarray | None],
    region_labels: Mapping[str, Sequence[int]] | None = None,
) -> list[dict[str, float] | None]:
    """Per segmentation, the Dice of each region with the majority vote of the other segmentations.

    Args:
        labels: label volumes (uint8, 0-4) of one case on one grid, one per team; ``None`` for a team
            without a usable segmentation (it neither gets a value nor votes).
        region_labels: labels of each region (default BraTS WT/TC/ET, keys ``wt``, ``tc``, ``et``).

    Returns:
        One entry per input: ``{"wt": dice, "tc": dice, "et": dice}`` (fractions in [0, 1]), or ``None``
        when the entry is ``None`` or fewer than :data:`MIN_OTHERS` other usable segmentations exist.

    Raises:
        ValueError: the usable volumes do not share one shape.
    """
    regions = dict(region_labels or REGION_LABELS)
    usable = [i for i, lab in enumerate(labels) if lab is not None]
    out: list[dict[str, float] | None] = [None] * len(labels)
    if len(usable) < MIN_OTHERS + 1:
        return out
    vols = [np.asarray(labels[i]) for i in usable]
    shapes = {v.shape for v in vols}
    if len(shapes) != 1:
        raise ValueError(f"segmentations of one case have different shapes {sorted(shapes)}")
    box = _union_box(vols)
    crops = [v[box] for v in vols]
    n_others = len(crops) - 1
    values: list[dict[str, float]] = [{} for _ in crops]
    for region in REGIONS:
        lut = np.zeros(256, dtype=bool)
        lut[list(regions[region])] = True
        masks = [lut[c] for c in crops]
        votes = np.zeros(crops[0].shape, dtype=np.int16)
        for m in masks:
            votes += m
        hist_all = np.bincount(votes.ravel(), minlength=len(masks) + 1)
        for k, m in enumerate(masks):
            values[k][region] = _dice_with_majority(m, votes, hist_all, n_others)
    for k, i in enumerate(usable):
        out[i] = values[k]
    return out
