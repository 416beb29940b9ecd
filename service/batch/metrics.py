"""Reference metrics against ground truth: Dice, HD95 and normalised surface Dice per BraTS region.

Library choice: **MONAI metrics** (``monai.metrics.compute_dice``, ``compute_hausdorff_distance`` with
``percentile=95`` and ``compute_surface_dice``). MONAI is a maintained, widely used library whose surface
distances follow DeepMind's surface-distance definitions; it is already a dependency of the export/training
extras (the reference package itself builds on it), so it adds nothing to install. The official BraTS
evaluation package and panoptica would add a second stack (SimpleITK / their own distance code) for the same
numbers. MONAI needs torch: fine for the batch tool, which is not the server; it is imported lazily.

Regions follow the preprocessing contract's label map: WT = {1, 2, 3, 4}, TC = {1, 3, 4}, ET = {3, 4}
(so BraTS 2023 label 3 and legacy label 4 are both enhancing tumour).

Units: Dice and NSD are fractions in [0, 1]; HD95 is in millimetres (the segmentation's voxel spacing from its
header). NSD uses a tolerance of ``nsd_tolerance_mm`` (default 1 mm) on both boundaries.

Edge cases, defined here rather than left to library warnings:

* both masks empty (e.g. no enhancing tumour in either): Dice = 1, NSD = 1, HD95 = NaN (no surface to
  measure; excluded from means and correlations);
* exactly one mask empty: Dice = 0, NSD = 0, HD95 = NaN (undefined; MONAI would return inf/NaN);
* the ground truth's grid differs from the segmentation's: :class:`~dqe.models.errors.InvalidInput`.

Both volumes are cropped to the bounding box of their union plus a two-voxel margin before the library
calls: every metric here is invariant to that crop and it makes them ~10x faster on a BraTS grid.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from dqe.models.errors import InvalidInput
from dqe.models.stats import REGION_LABELS, REGIONS

DEFAULT_REGION_LABELS = REGION_LABELS  # from the preprocessing contract (dqe.models.stats)
METRICS = ("dice", "hd95", "nsd")
MARGIN = 2


def metric_columns(regions: Sequence[str] = REGIONS) -> list[str]:
    """Column names: ``dice_WT``, ..., ``nsd_ET``, then the region means ``dice_mean`` and ``nsd_mean``."""
    return [f"{m}_{r}" for m in METRICS for r in regions] + ["dice_mean", "nsd_mean"]


def _masks(
    labels: np.ndarray, region_labels: Mapping[str, Sequence[int]], regions: Sequence[str]
) -> np.ndarray:
    lut = np.zeros((len(regions), 256), dtype=bool)
    for i, region in enumerate(regions):
        lut[i, list(region_labels[region])] = True
    return lut[:, labels]


def _crop(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    union = (pred > 0) | (ref > 0)
    if not union.any():
        return pred[:1, :1, :1], ref[:1, :1, :1]
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        nz = np.flatnonzero(union.any(axis=others))
        box.append(slice(max(int(nz[0]) - MARGIN, 0), int(nz[-1]) + MARGIN + 1))
    return pred[tuple(box)], ref[tuple(box)]


def segmentation_metrics(
    pred_labels: np.ndarray,
    ref_labels: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    nsd_tolerance_mm: float = 1.0,
    region_labels: Mapping[str, Sequence[int]] | None = None,
    regions: Sequence[str] = REGIONS,
) -> dict[str, float]:
    """Dice, HD95 (mm) and NSD per region of a label volume against a reference label volume.

    Args:
        pred_labels, ref_labels: uint8 label volumes on the same voxel grid.
        spacing: voxel size in mm along the three array axes.
        nsd_tolerance_mm: boundary tolerance of the normalised surface Dice.
        region_labels: labels of each region (default WT/TC/ET as in BraTS).

    Returns:
        ``{column: value}`` for :func:`metric_columns` (NaN where undefined, see the module docstring).

    Raises:
        InvalidInput: the two volumes have different shapes.
    """
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    # MONAI 1.5+ warns about its own internal use of a deprecated argument on every call.
    warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)

    if pred_labels.shape != ref_labels.shape:
        raise InvalidInput(
            f"ground truth has shape {tuple(ref_labels.shape)} but the segmentation has {tuple(pred_labels.shape)}",
            field="labels",
        )
    region_labels = region_labels or DEFAULT_REGION_LABELS
    pred, ref = _crop(np.asarray(pred_labels, dtype=np.uint8), np.asarray(ref_labels, dtype=np.uint8))
    pm, rm = _masks(pred, region_labels, regions), _masks(ref, region_labels, regions)
    out: dict[str, float] = {}
    spacing_t = [float(s) for s in spacing]
    with torch.inference_mode():
        for i, region in enumerate(regions):
            p_any, r_any = bool(pm[i].any()), bool(rm[i].any())
            if not p_any and not r_any:
                out[f"dice_{region}"], out[f"hd95_{region}"], out[f"nsd_{region}"] = 1.0, float("nan"), 1.0
                continue
            if p_any != r_any:
                out[f"dice_{region}"], out[f"hd95_{region}"], out[f"nsd_{region}"] = 0.0, float("nan"), 0.0
                continue
            yp = torch.from_numpy(pm[i][None, None].astype(np.float32))
            yt = torch.from_numpy(rm[i][None, None].astype(np.float32))
            out[f"dice_{region}"] = float(
                compute_dice(yp, yt, include_background=True, ignore_empty=False)[0, 0]
            )
            out[f"hd95_{region}"] = float(
                compute_hausdorff_distance(yp, yt, include_background=True, percentile=95, spacing=spacing_t)[
                    0, 0
                ]
            )
            out[f"nsd_{region}"] = float(
                compute_surface_dice(
                    yp, yt, [float(nsd_tolerance_mm)], include_background=True, spacing=spacing_t
                )[0, 0]
            )
    out["dice_mean"] = float(np.mean([out[f"dice_{r}"] for r in regions]))
    out["nsd_mean"] = float(np.mean([out[f"nsd_{r}"] for r in regions]))
    return {k: out[k] for k in metric_columns(regions)}
