"""A synthetic ratings table: phantom exams, degraded segmentations and simulated raters.

For smoke runs and tests only: the "raters" score each segmentation by its whole-tumour Dice with the
phantom's own labels (``1 + 5 * Dice``) plus Gaussian rater noise, rounded to whole stars. That gives a
learnable signal on a few small exams; it says nothing about human ratings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from dqe.models.phantom import SHAPES, make_phantom, write_case
from dqe.models.stats import dice

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)


def _erode(seg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    keep = ndimage.binary_erosion(seg > 0, iterations=int(rng.integers(1, 3)))
    return np.where(keep, seg, 0).astype(seg.dtype)


def _dilate(seg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    grown = ndimage.grey_dilation(seg, size=(3, 3, 3))
    for _ in range(int(rng.integers(1, 3))):
        grown = ndimage.grey_dilation(grown, size=(3, 3, 3))
    return np.where((seg == 0) & (grown > 0), 2, seg).astype(seg.dtype)


def _shift(seg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    offset = tuple(int(v) for v in rng.integers(-6, 7, size=3))
    return ndimage.shift(seg, offset, order=0, mode="constant", cval=0).astype(seg.dtype)


def _core_only(seg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.where(seg == 2, 0, seg).astype(seg.dtype)


def _edema_as_core(seg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.where(seg > 0, 1, 0).astype(seg.dtype)


DEGRADATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "erode": _erode,
    "dilate": _dilate,
    "shift": _shift,
    "core_only": _core_only,
    "edema_as_core": _edema_as_core,
}


def synthetic_ratings(
    folder: str | Path,
    exams: int = 6,
    grid: tuple[int, int, int] = (64, 64, 48),
    raters: int = 2,
    seed: int = 0,
    variants: int = 2,
) -> pd.DataFrame:
    """Write ``exams`` phantom exams (original + ``variants`` degraded segmentations each) under ``folder``
    and return their ratings table (also written to ``folder/ratings.csv``), one rating per rater and view.
    """
    import nibabel as nib
    import pandas as pd

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    rows = []
    names = sorted(DEGRADATIONS)
    for i in range(exams):
        exam_id = f"SYN-{i:05d}"
        ph = make_phantom(seed=seed * 1000 + i, shape=grid, lesion=SHAPES[i % len(SHAPES)])
        paths = write_case(ph, folder / exam_id, case_id=exam_id)
        truth = ph.segmentation > 0
        segs = {"orig": (paths["segmentation"], ph.segmentation)}
        for j in range(variants):
            name = names[(i + j) % len(names)]
            degraded = DEGRADATIONS[name](ph.segmentation, rng)
            if not (degraded > 0).any():
                continue
            path = folder / exam_id / f"{exam_id}-seg-{name}.nii.gz"
            img = nib.Nifti1Image(degraded, ph.affine)
            img.header.set_data_dtype(np.uint8)
            nib.save(img, str(path))
            segs[name] = (path, degraded)
        for seg_path, labels in segs.values():
            quality = dice(truth, labels > 0)
            for r in range(raters):
                for view in ("axial", "coronal", "sagittal"):
                    stars = float(np.clip(np.rint(1.0 + 5.0 * quality + rng.normal(0.0, 0.3)), 1, 6))
                    rows.append(
                        {
                            "exam_id": exam_id,
                            "t1c": str(paths["t1c"]),
                            "t1": str(paths["t1"]),
                            "t2": str(paths["t2"]),
                            "flair": str(paths["flair"]),
                            "segmentation": str(seg_path),
                            "view": view,
                            "rater": f"R{r}",
                            "stars": stars,
                        }
                    )
    df = pd.DataFrame(rows)
    df.to_csv(folder / "ratings.csv", index=False)
    logger.info("synthetic ratings: %d exams, %d ratings in %s", exams, len(df), folder)
    return df
