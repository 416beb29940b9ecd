"""One MR series (single-frame instances, or one Enhanced / Legacy-Converted multi-frame instance) -> a 3-D
volume with its geometry, through highdicom's volume API; and resampling onto another grid.

Before highdicom builds a volume, the slice stack is checked here so that the error names the series and what is
wrong: gantry tilt (slices not stacked along their normal), duplicate positions, missing slices (gaps that are
whole multiples of the spacing), irregular spacing, mixed orientations or sizes.

Orientation: every volume handed to the :class:`~dqe.models.case.Case` is rearranged (axis permutations and flips
only, never resampled) to the patient axes closest to L, P, S, the layout of the BraTS / SRI-24 NIfTI files the
model was trained on; its affine is then expressed in RAS as a NIfTI affine is (``diag(-1, -1, 1) @ LPS``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from dqe.models.dicom.errors import SeriesGeometryError
from dqe.models.nifti import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MODEL_ORIENTATION = "LPH"  # highdicom's letters: L(eft), P(osterior), H(ead) = LPS
TILT_TOL_DEG = 0.1
"""Largest angle (degrees) between the slice normal and the stacking direction before a series counts as tilted."""
SPACING_RTOL = 0.01
"""Relative tolerance on slice gaps (1 % of the median gap) before a stack counts as irregular."""
ORIENTATION_ATOL = 1e-4


@dataclass(frozen=True)
class SeriesPlanes:
    """The in-plane geometry and slice positions of one series (LPS, mm)."""

    name: str
    orientation: np.ndarray  # (6,) ImageOrientationPatient: row direction, then column direction
    positions: np.ndarray  # (n, 3) ImagePositionPatient of every frame, in stored order
    shape: tuple[int, int]  # (Rows, Columns)


def _frames_geometry(ds: Dataset, name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """ImageOrientationPatient and ImagePositionPatient of every frame of a multi-frame instance."""
    shared = ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    shared_iop = (
        shared.PlaneOrientationSequence[0].ImageOrientationPatient
        if "PlaneOrientationSequence" in shared
        else None
    )
    iops, ipps = [], []
    for i, frame in enumerate(ds.get("PerFrameFunctionalGroupsSequence", [])):
        if "PlanePositionSequence" not in frame:
            raise SeriesGeometryError(f"{name}: frame {i + 1} has no Plane Position", field=name)
        ipps.append(np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float))
        iop = (
            frame.PlaneOrientationSequence[0].ImageOrientationPatient
            if "PlaneOrientationSequence" in frame
            else shared_iop
        )
        if iop is None:
            raise SeriesGeometryError(f"{name}: frame {i + 1} has no Plane Orientation", field=name)
        iops.append(np.asarray(iop, dtype=float))
    return iops, ipps


def series_planes(datasets: Sequence[Dataset], name: str) -> SeriesPlanes:
    """Collect orientation, positions and sizes; raises :class:`SeriesGeometryError` on mixed values."""
    if len(datasets) == 1 and int(datasets[0].get("NumberOfFrames", 1) or 1) > 1:
        iops, ipps = _frames_geometry(datasets[0], name)
        shapes = {(int(datasets[0].Rows), int(datasets[0].Columns))}
    else:
        missing = [
            i
            for i, d in enumerate(datasets)
            if "ImagePositionPatient" not in d or "ImageOrientationPatient" not in d
        ]
        if missing:
            raise SeriesGeometryError(
                f"{name}: {len(missing)} instances have no ImagePositionPatient/ImageOrientationPatient",
                field=name,
            )
        iops = [np.asarray(d.ImageOrientationPatient, dtype=float) for d in datasets]
        ipps = [np.asarray(d.ImagePositionPatient, dtype=float) for d in datasets]
        shapes = {(int(d.Rows), int(d.Columns)) for d in datasets}
    if len(shapes) > 1:
        raise SeriesGeometryError(f"{name}: instances of different sizes {sorted(shapes)}", field=name)
    if len(ipps) < 2:
        raise SeriesGeometryError(f"{name}: {len(ipps)} slice; a 3-D volume needs at least 2", field=name)
    ref = iops[0]
    if any(not np.allclose(o, ref, atol=ORIENTATION_ATOL) for o in iops):
        raise SeriesGeometryError(
            f"{name}: slices have different orientations (ImageOrientationPatient)", field=name
        )
    return SeriesPlanes(name=name, orientation=ref, positions=np.stack(ipps), shape=shapes.pop())


def check_stack(planes: SeriesPlanes) -> float:
    """The slice spacing (mm) of a regular stack.

    Raises:
        SeriesGeometryError: gantry tilt, duplicate positions, missing slices or irregular spacing (the message
            names the series and gives the angle, the gaps or the spacings found).
    """
    name = planes.name
    row, col = planes.orientation[:3], planes.orientation[3:]
    normal = np.cross(row, col)
    depth = planes.positions @ normal
    order = np.argsort(depth)
    pos, depth = planes.positions[order], depth[order]
    gaps = np.diff(depth)
    if np.any(gaps < 1e-3):
        raise SeriesGeometryError(f"{name}: {int(np.sum(gaps < 1e-3))} duplicate slice positions", field=name)
    stack = pos[-1] - pos[0]
    cos = abs(float(stack @ normal)) / float(np.linalg.norm(stack))
    angle = float(np.degrees(np.arccos(min(1.0, cos))))
    if angle > TILT_TOL_DEG:
        raise SeriesGeometryError(
            f"{name}: slices are stacked {angle:.2f} degrees off their normal (gantry tilt or sheared stack); "
            "resample it to an orthogonal grid first",
            field=name,
        )
    step = float(np.median(gaps))
    ratio = gaps / step
    if np.all(np.abs(ratio - 1) <= SPACING_RTOL):
        return step
    whole = np.round(ratio)
    if np.all(np.abs(ratio - whole) <= SPACING_RTOL) and np.all(whole >= 1):
        where = [float(depth[i]) for i in np.nonzero(whole > 1)[0]]
        raise SeriesGeometryError(
            f"{name}: {int(np.sum(whole - 1))} missing slices (spacing {step:.3f} mm; gaps after slice positions "
            f"{', '.join(f'{d:.2f}' for d in where[:5])} mm along the normal)",
            field=name,
        )
    raise SeriesGeometryError(
        f"{name}: irregular slice spacing ({float(gaps.min()):.3f} to {float(gaps.max()):.3f} mm)", field=name
    )


def _stored_dtype(ds: Dataset) -> np.dtype | None:
    """The stored integer dtype when no rescale changes the values (so DICOM and NIfTI voxels compare exactly)."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    inter = float(ds.get("RescaleIntercept", 0) or 0)
    if slope != 1 or inter != 0 or int(ds.get("SamplesPerPixel", 1)) != 1:
        return None
    bits = int(ds.get("BitsAllocated", 16))
    if bits not in (8, 16, 32):
        return None
    kind = "i" if int(ds.get("PixelRepresentation", 0)) == 1 else "u"
    return np.dtype(f"{kind}{bits // 8}")


def series_volume(datasets: Sequence[Dataset], name: str) -> hd.Volume:
    """The series as a highdicom :class:`~highdicom.Volume` (axes slice, row, column; LPS affine), stored values
    with the modality rescale applied.

    Raises:
        SeriesGeometryError: see :func:`check_stack`; or highdicom cannot build a regular volume.
    """
    check_stack(series_planes(datasets, name))
    dtype = _stored_dtype(datasets[0]) or np.float64
    try:
        if len(datasets) == 1 and int(datasets[0].get("NumberOfFrames", 1) or 1) > 1:
            return hd.Image.from_dataset(datasets[0], copy=False).get_volume(dtype=dtype)
        return hd.get_volume_from_series(list(datasets), dtype=dtype)
    except (RuntimeError, ValueError) as exc:
        raise SeriesGeometryError(f"{name}: not one regular 3-D volume ({exc})", field=name) from None


def resample(volume: hd.Volume, target: hd.Volume, order: int) -> np.ndarray:
    """``volume``'s voxels on ``target``'s grid (same frame of reference): each target voxel centre is mapped
    through both affines into ``volume``'s index space and interpolated (``order`` 1 = trilinear for images,
    0 = nearest neighbour for labels); outside ``volume`` the value is 0."""
    matrix = volume.inverse_affine @ target.affine
    out = ndimage.affine_transform(
        np.asarray(volume.array, dtype=np.float32 if order else volume.array.dtype),
        matrix[:3, :3],
        offset=matrix[:3, 3],
        output_shape=target.spatial_shape,
        order=order,
        mode="constant",
        cval=0.0,
    )
    return out


def to_case_volume(volume: hd.Volume, name: str, source: str) -> Volume:
    """A :class:`~dqe.models.nifti.Volume` in the model's axis layout (closest to L, P, S) with a RAS affine."""
    oriented = volume.to_patient_orientation(MODEL_ORIENTATION)
    data = np.ascontiguousarray(oriented.array)
    return Volume(
        name=name,
        data=data,
        affine=LPS_TO_RAS @ oriented.affine,
        zooms=tuple(float(s) for s in oriented.spacing),
        source=source,
    )
