"""DICOM in (a study: four MR series + a SEG -> :class:`~dqe.models.case.Case`) and out (a TID 1500
Structured Report and a Key Object Selection, from ``ScoreResult`` + ``GateResult``).

The libraries (pydicom, highdicom) are the ``dicom`` extra. This package's ``__init__`` and
:mod:`dqe.models.dicom.errors` import none of them, so the serving-only install can recognise a DICOM input and
answer :class:`~dqe.models.dicom.errors.DicomUnavailable` naming ``pip install dqe-service[dicom]``; the other
modules import them at top and are only imported after :func:`require_dicom`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from dqe.models.dicom.errors import DicomUnavailable

EXTRA_HINT = "pip install dqe-service[dicom]"
_PREAMBLE = 128  # Part 10: a 128-byte preamble, then the four bytes "DICM"
_MAGIC = b"DICM"


def dicom_available() -> bool:
    """Whether pydicom and highdicom are importable (the ``dicom`` extra is installed)."""
    return all(importlib.util.find_spec(name) is not None for name in ("pydicom", "highdicom"))


def require_dicom(what: str = "DICOM input") -> None:
    """Raises :class:`DicomUnavailable` (FAILED_PRECONDITION) when the ``dicom`` extra is missing."""
    if not dicom_available():
        raise DicomUnavailable(f"{what} needs the dicom extra (pydicom, highdicom): {EXTRA_HINT}")


def is_part10(head: bytes) -> bool:
    """Whether bytes start like a DICOM Part-10 file (128-byte preamble, then ``DICM``)."""
    return len(head) >= _PREAMBLE + 4 and head[_PREAMBLE : _PREAMBLE + 4] == _MAGIC


def is_dicom_file(path: str | Path) -> bool:
    """Whether ``path`` is a regular file holding a DICOM Part-10 header (reads 132 bytes)."""
    try:
        with open(path, "rb") as fh:
            return is_part10(fh.read(_PREAMBLE + 4))
    except OSError:
        return False


def is_dicom_study_dir(folder: str | Path) -> bool:
    """Whether ``folder`` holds DICOM files and no NIfTI file (searched recursively, stops at the first hit)."""
    root = Path(folder)
    if not root.is_dir():
        return False
    found = False
    for path in root.rglob("*"):
        name = path.name.lower()
        if name.endswith((".nii", ".nii.gz")):
            return False
        if not found and path.is_file() and is_dicom_file(path):
            found = True
    return found
