"""Typed errors of the DICOM path; each names the series (description and number) it is about.

They subclass the domain errors of :mod:`dqe.models.errors`, so every entry point (CLI exit codes, gRPC status,
the DICOM node's log) handles them as it handles the NIfTI path's errors.
"""

from __future__ import annotations

from dqe.models.errors import InvalidInput, NotFound, Overloaded, UnsupportedMode


class DicomUnavailable(UnsupportedMode):
    """A DICOM input reached an install without the ``dicom`` extra (FAILED_PRECONDITION)."""


class SeriesGeometryError(InvalidInput):
    """A series is not one regular 3-D grid: gantry tilt, irregular spacing, missing or duplicate slices,
    mixed orientations or sizes."""


class FrameOfReferenceMismatch(InvalidInput):
    """The selected series and the SEG do not share one Frame of Reference UID, so they cannot be aligned."""


class UnmappedSegment(InvalidInput):
    """A SEG segment maps to none of necrosis / edema / enhancing under the segment map in use."""


class ModalityNotFound(NotFound):
    """No series matched a modality's rules (the message lists the series that were there), or no SEG."""


class AmbiguousSeries(InvalidInput):
    """Several series match one modality's rules (the message lists them and how to override the rules)."""


class StudyTooLarge(Overloaded):
    """A study over its instance, byte or voxel budget (RESOURCE_EXHAUSTED, answered before decoding)."""
