"""DICOM study fixtures made at test time from NIfTI-like arrays (the shared exams or phantoms); never committed.

Each MR series is written as legacy MR Image Storage, one instance per slice of the NIfTI k axis (pixel rows =
NIfTI j, columns = NIfTI i), with ImagePositionPatient / ImageOrientationPatient taken from the NIfTI affine
(RAS -> LPS). ``rotate_deg`` turns that geometry about the volume centre (an oblique acquisition of the same
voxels); ``enhanced`` writes one series as a Legacy Converted Enhanced MR multi-frame instance (highdicom). The
SEG is highdicom's ``Segmentation`` (BINARY or LABELMAP) on the t1c series, one segment per label present.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
DESCRIPTIONS = {"t1c": "T1 post-contrast", "t1": "T1 pre", "t2": "T2 TSE", "flair": "T2 FLAIR"}
SEGMENTS = {
    1: ("Necrosis", Code("6574001", "SCT", "Necrosis")),
    2: ("Edema", Code("79654002", "SCT", "Edema")),
    3: ("Enhancing tumor", Code("108369006", "SCT", "Neoplasm")),
}


@dataclass
class StudyFiles:
    folder: Path
    study_uid: str
    series: dict[str, list[Path]]  # field -> files (sorted by slice), "segmentation" -> [seg file]


def rotation(deg: float) -> np.ndarray:
    """A rotation about an oblique axis (x then z) by ``deg`` degrees each."""
    a = np.radians(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return rz @ rx


def oblique_affine(affine: np.ndarray, shape: tuple[int, ...], deg: float) -> np.ndarray:
    """The RAS affine ``affine`` turned by :func:`rotation` about the volume centre."""
    if not deg:
        return np.asarray(affine, float)
    r = np.eye(4)
    r[:3, :3] = rotation(deg)
    centre = affine @ np.array([(s - 1) / 2 for s in shape[:3]] + [1.0])
    t1, t2 = np.eye(4), np.eye(4)
    t1[:3, 3], t2[:3, 3] = -centre[:3], centre[:3]
    return t2 @ r @ t1 @ affine


def _patient(ds: Dataset, study_uid: str, for_uid: str) -> None:
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
        "Phantom^DQE",
        "DQE-TEST",
        "19700101",
        "O",
    )
    ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber = study_uid, "1", "A1"
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "20260101", "120000", ""
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = for_uid, ""


def _slice(
    pixels: np.ndarray,
    lps: np.ndarray,
    k: int,
    field: str,
    series_uid: str,
    number: int,
    study_uid: str,
    for_uid: str,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.Modality = MRImageStorage, "MR"
    _patient(ds, study_uid, for_uid)
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series_uid, number, k + 1
    ds.SeriesDescription = ds.ProtocolName = DESCRIPTIONS[field]
    ds.Manufacturer, ds.ImageType = "DQE fixtures", ["DERIVED", "PRIMARY"]
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "3D"
    ds.EchoTrainLength, ds.MagneticFieldStrength = 1, 3
    ds.RepetitionTime, ds.EchoTime = {"t1c": (8, 3), "t1": (8, 3), "t2": (5000, 100), "flair": (9000, 90)}[
        field
    ]
    ds.ImagingFrequency, ds.ImagedNucleus, ds.NumberOfAverages = 127.7, "1H", 1
    if field == "flair":
        ds.InversionTime = 2500
    if field == "t1c":
        ds.ContrastBolusAgent = "Gadobutrol"
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    row, col = lps[:3, 0], lps[:3, 1]
    ds.ImageOrientationPatient = [
        round(float(v), 8) for v in (*row / np.linalg.norm(row), *col / np.linalg.norm(col))
    ]
    ds.ImagePositionPatient = [round(float(v), 6) for v in (lps @ np.array([0, 0, k, 1.0]))[:3]]
    ds.PixelSpacing = [round(float(np.linalg.norm(col)), 6), round(float(np.linalg.norm(row)), 6)]
    ds.SliceThickness = ds.SpacingBetweenSlices = round(float(np.linalg.norm(lps[:3, 2])), 6)
    ds.SliceLocation = float(ds.ImagePositionPatient[2])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds


def write_series(
    folder: Path, data: np.ndarray, affine: np.ndarray, field: str, number: int, study_uid: str, for_uid: str
) -> list[Dataset]:
    """One NIfTI volume (integer values, RAS affine) -> one single-frame MR instance per k slice, written."""
    values = np.asarray(data)
    if not np.array_equal(values, np.round(values)) or values.min() < -32768 or values.max() > 32767:
        raise ValueError(f"{field}: fixtures hold int16 values only")
    lps = LPS_FROM_RAS @ affine
    series_uid = generate_uid()
    out = []
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(values.shape[2]):
        ds = _slice(values[:, :, k].T.astype(np.int16), lps, k, field, series_uid, number, study_uid, for_uid)
        ds.save_as(folder / f"{field}-{k:04d}.dcm", enforce_file_format=True)
        out.append(ds)
    return out


def segmentation(
    source: list[Dataset], labels: np.ndarray, seg_type: str, segments: dict | None = None
) -> Dataset:
    """A highdicom SEG of BraTS ``labels`` (NIfTI i, j, k layout; 4 read as 3) on ``source`` (sorted by k)."""
    segments = segments or SEGMENTS
    lab = np.where(np.asarray(labels) == 4, 3, np.asarray(labels)).astype(np.uint8)
    present = [v for v in sorted(segments) if np.any(lab == v)]
    frames = np.transpose(lab, (2, 1, 0))  # (k, j, i) = (frame, row, column)
    descriptions = []
    for number, value in enumerate(present, start=1):
        name, code = segments[value]
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=Code("49755003", "SCT", "Morphologically Abnormal Structure"),
                segmented_property_type=code,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=hd.AlgorithmIdentificationSequence(
                    name="fixture", version="1", family=Code("123109", "DCM", "Manual Processing")
                ),
            )
        )
    if seg_type == "LABELMAP":
        lut = np.zeros(max(segments) + 1, dtype=np.uint8)
        for number, value in enumerate(present, start=1):
            lut[value] = number
        pixels = lut[frames]
    else:
        pixels = np.stack([frames == v for v in present], axis=-1).astype(np.uint8)
    return hd.seg.Segmentation(
        source_images=source,
        pixel_array=pixels,
        segmentation_type=seg_type,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="DQE fixtures",
        manufacturer_model_name="fixture",
        software_versions="1",
        device_serial_number="1",
        series_description="Tumour segmentation",
        omit_empty_frames=False,
    )


def write_study(
    folder: Path,
    arrays: dict[str, np.ndarray],
    affine: np.ndarray,
    *,
    seg_type: str = "BINARY",
    rotate_deg: float = 0.0,
    enhanced: tuple[str, ...] = (),
    with_seg: bool = True,
) -> StudyFiles:
    """Write a study (four series + SEG) from NIfTI-like arrays keyed t1c, t1, t2, flair, segmentation."""
    study_uid, for_uid = generate_uid(), generate_uid()
    geometry = oblique_affine(affine, arrays["t1c"].shape, rotate_deg)
    files: dict[str, list[Path]] = {}
    source: list[Dataset] = []
    for number, field in enumerate(("t1c", "t1", "t2", "flair"), start=1):
        sub = folder / field
        datasets = write_series(sub, arrays[field], geometry, field, number, study_uid, for_uid)
        if field == "t1c":
            source = datasets
        if field in enhanced:
            for p in sub.iterdir():
                p.unlink()
            mf = hd.legacy.LegacyConvertedEnhancedMRImage(
                legacy_datasets=datasets, series_instance_uid=generate_uid(), series_number=number,
                sop_instance_uid=generate_uid(), instance_number=1,
            )  # fmt: skip
            mf.save_as(sub / f"{field}-mf.dcm", enforce_file_format=True)
        files[field] = sorted(sub.iterdir())
    if with_seg:
        seg = segmentation(source, arrays["segmentation"], seg_type)
        (folder / "seg").mkdir(parents=True, exist_ok=True)
        seg.save_as(folder / "seg" / "seg.dcm", enforce_file_format=True)
        files["segmentation"] = [folder / "seg" / "seg.dcm"]
    return StudyFiles(folder=folder, study_uid=study_uid, series=files)


def load_nifti_arrays(files: dict[str, Path]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The arrays (stored values) and the t1c affine of a NIfTI case."""
    import nibabel as nib

    arrays, affine = {}, None
    for field, path in files.items():
        img = nib.load(str(path))
        arrays[field] = np.asarray(img.dataobj)
        if field == "t1c":
            affine = img.affine
    assert affine is not None
    return arrays, affine
