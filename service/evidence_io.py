"""Writing the gate's disagreement map (:mod:`dqe.models.qc.evidence`) as NIfTI for ``--evidence DIR``.

The map is float32 on the segmentation's own grid with the segmentation's affine, so any viewer overlays it
on the exam: 0 where segmentation and images agree, larger (robust z units of normal brain) where a
labelled voxel looks unlike its region or an unlabelled one looks like it. The file is written atomically
(temporary file beside it, then rename), so a reader never sees half a map.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from dqe.models.errors import InvalidInput
from dqe.models.nifti import affine_usable

if TYPE_CHECKING:
    from dqe.models.case import Case
    from dqe.models.qc.evidence import EvidenceMap

SUFFIX = "_evidence.nii.gz"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def evidence_path(folder: str | Path, name: str) -> Path:
    """``folder/<name>_evidence.nii.gz`` with ``name`` made file-system safe."""
    return Path(folder) / ((_UNSAFE.sub("_", name).strip(".") or "case") + SUFFIX)


def write_evidence_map(case: Case, emap: EvidenceMap, folder: str | Path, name: str) -> Path:
    """Write the combined map of ``emap`` (computed at full resolution) next to the others in ``folder``.

    Args:
        case: the case the map belongs to (its segmentation's affine and grid are used).
        emap: a full-resolution map (:func:`~dqe.models.qc.evidence.evidence_map` with ``full_resolution``).
        folder: output folder (created).
        name: file stem, e.g. the case id or ``case__team``.

    Returns:
        The written path.

    Raises:
        InvalidInput: the output folder exists but is not a folder.
    """
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"evidence folder {str(out)!r} is not a folder", field="evidence")
    data = emap.combined()
    affine = np.asarray(case.segmentation.affine, dtype=np.float64)
    if not affine_usable(affine):  # keep the voxel grid; a viewer then shows it in voxel coordinates
        affine = np.diag([*(float(z) for z in case.segmentation.zooms[:3]), 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(np.float32)
    img.header["descrip"] = b"dqe evidence: seg/image disagreement, z"
    path = evidence_path(out, name)
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(gzip.compress(img.to_bytes(), compresslevel=1))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
