"""A generated challenge dataset for the batch tests: 3 phantom cases x 3 teams (+ ground truth).

* cases use the three naming schemes (BraTS 2023, BraTS 2021, BraTS Toolkit);
* ``alpha`` submits the ground truth itself (uint8), ``beta`` the ground truth shifted by 4 voxels (int16),
  ``gamma`` the ground truth without enhancing tumour (float32) and a truncated gzip for ``CASE-001``.

Built once per test session into the session's base temp folder (a marker file makes it idempotent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CASES = ("CASE-000", "CASE-001", "CASE-002")
TEAMS = ("alpha", "beta", "gamma")
NAMINGS = ("brats2023", "brats2021", "toolkit")
BROKEN = ("CASE-001", "gamma")


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    nib.save(img, str(path))


def build_dataset(root: Path) -> dict[str, Path]:
    """Write (once) and return ``{"cases": ..., "alpha": ..., "beta": ..., "gamma": ..., "gt": ...}``."""
    from dqe.models.phantom import make_phantom, write_case

    dirs = {"cases": root / "cases", **{t: root / t for t in TEAMS}, "gt": root / "gt"}
    marker = root / ".complete"
    if marker.exists():
        return dirs
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for i, (case, naming) in enumerate(zip(CASES, NAMINGS, strict=True)):
        ph = make_phantom(seed=10 + i, lesion=("sphere", "lobulated", "ellipsoid")[i])
        write_case(ph, dirs["cases"] / case, case, naming=naming, include_segmentation=False)
        gt = ph.segmentation
        _save(gt, ph.affine, dirs["gt"] / f"{case}.nii.gz")
        _save(gt.astype(np.uint8), ph.affine, dirs["alpha"] / f"{case}.nii.gz")
        _save(np.roll(gt, 4, axis=0).astype(np.int16), ph.affine, dirs["beta"] / f"{case}.nii.gz")
        _save(np.where(gt == 3, 1, gt).astype(np.float32), ph.affine, dirs["gamma"] / f"{case}.nii.gz")
    broken = dirs[BROKEN[1]] / f"{BROKEN[0]}.nii.gz"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    marker.touch()
    return dirs
