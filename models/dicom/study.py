"""A DICOM study (four MR series + one SEG) -> the same :class:`~dqe.models.case.Case` the NIfTI path builds.

Steps: read the instances under a budget (count, bytes, voxels per series: refused before any pixel is decoded) ->
one study -> MR image series picked by :mod:`~dqe.models.dicom.rules` -> each a volume through highdicom
(:mod:`~dqe.models.dicom.geometry`) -> the SEG's segments mapped to labels (:mod:`~dqe.models.dicom.segments`)
and placed on its source series' grid with highdicom's ``match_geometry`` (permute, flip, pad, crop: no
interpolation) -> the four series on that grid. A series on another grid of the same frame of reference is
resampled trilinearly onto it (a SEG on another grid: nearest neighbour), each with a warning naming it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dqe.models.case import Case
from dqe.models.contract import MODALITIES
from dqe.models.dicom import is_dicom_file, is_part10
from dqe.models.dicom.errors import AmbiguousSeries, FrameOfReferenceMismatch, ModalityNotFound, StudyTooLarge
from dqe.models.dicom.geometry import resample, series_volume, to_case_volume
from dqe.models.dicom.rules import SeriesRules, describe, select_series
from dqe.models.dicom.segments import SegmentMap
from dqe.models.errors import InvalidInput, UnreadableFile
from dqe.models.nifti import DEFAULT_MAX_VOXELS

MR_IMAGE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
    }
)
SEG_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage (BINARY, FRACTIONAL, LABELMAP in older highdicom)
        "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
    }
)
SKULL_ZERO_FRACTION = 0.5
"""Skull-stripped BraTS images are about 85 % exact zeros; below half zeros the images do not look stripped."""
ATLAS_SPACING_TOL_MM = 0.05


@dataclass(frozen=True)
class StudyLimits:
    """Budgets for one study, checked before decoding.

    Attributes:
        max_instances: most instances (files) in the study; 0 = no limit.
        max_bytes: most bytes of all instances together; 0 = no limit.
        max_instance_bytes: largest single instance in bytes; 0 = no limit.
        max_series_voxels: most voxels one series may decode to (Rows x Columns x frames); 0 = no limit.
    """

    max_instances: int = 4096
    max_bytes: int = 2 * 1024**3
    max_instance_bytes: int = 1024**3
    max_series_voxels: int = DEFAULT_MAX_VOXELS


@dataclass
class StudyInfo:
    """What the SR and KOS need to reference: the study, the SEG and what was read."""

    study_uid: str
    seg: Dataset  # the SEG's header (pixel data dropped)
    segment_labels: dict[int, int]  # SEG segment number -> BraTS label
    segment_names: dict[int, str]  # SEG segment number -> Segment Label
    series: dict[str, str]  # case field -> series description ("#3 'T1 post'")
    source_series_uid: str
    warnings: list[str] = field(default_factory=list)


@dataclass
class Study:
    case: Case
    info: StudyInfo


class _Budget:
    def __init__(self, limits: StudyLimits) -> None:
        self.limits, self.count, self.bytes = limits, 0, 0

    def add(self, size: int, name: str) -> None:
        lim = self.limits
        self.count += 1
        self.bytes += size
        if lim.max_instance_bytes and size > lim.max_instance_bytes:
            raise StudyTooLarge(
                f"{name}: {size} bytes; at most {lim.max_instance_bytes} per instance", field=name
            )
        if lim.max_instances and self.count > lim.max_instances:
            raise StudyTooLarge(f"study has more than {lim.max_instances} instances", field="instances")
        if lim.max_bytes and self.bytes > lim.max_bytes:
            raise StudyTooLarge(f"study holds more than {lim.max_bytes} bytes", field="instances")


def _parse(raw: bytes, name: str) -> Dataset:
    if not is_part10(raw[:132]):
        raise UnreadableFile(
            f"{name}: not a DICOM Part-10 instance (no 'DICM' after the preamble)", field=name
        )
    try:
        return pydicom.dcmread(io.BytesIO(raw))
    except (InvalidDicomError, ValueError, EOFError, KeyError, OSError) as exc:
        raise UnreadableFile(f"{name}: unreadable DICOM ({exc})", field=name) from None


def study_files(folder: str | Path) -> list[Path]:
    """The Part-10 files under ``folder`` (recursively, sorted; other files are ignored)."""
    root = Path(folder)
    if not root.is_dir():
        raise InvalidInput(f"study folder {str(root)!r} does not exist", field="study_dir")
    return [p for p in sorted(root.rglob("*")) if p.is_file() and is_dicom_file(p)]


def read_files(paths: Iterable[str | Path], limits: StudyLimits = StudyLimits()) -> list[Dataset]:
    """Parse Part-10 files under ``limits`` (sizes checked from the file system before reading)."""
    budget = _Budget(limits)
    out = []
    for path in paths:
        budget.add(os.path.getsize(path), Path(path).name)
        out.append(_parse(Path(path).read_bytes(), Path(path).name))
    return out


def read_bytes(instances: Iterable[bytes], limits: StudyLimits = StudyLimits()) -> list[Dataset]:
    """Parse Part-10 instances given as bytes, under ``limits`` (each counted before it is parsed)."""
    budget = _Budget(limits)
    out = []
    for i, raw in enumerate(instances):
        budget.add(len(raw), f"instance {i + 1}")
        out.append(_parse(raw, f"instance {i + 1}"))
    return out


def _first_attributes(ds: Dataset) -> dict[str, object]:
    """Series attributes the rules may name; Enhanced MR keeps sequence parameters in functional groups."""
    attrs: dict[str, object] = {
        e.keyword: e.value for e in ds if e.keyword and e.VR != "SQ" and e.tag.group != 0x7FE0
    }
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        for seq in ("MRTimingAndRelatedParametersSequence", "MREchoSequence", "MRModifierSequence"):
            for item in shared[0].get(seq, []):
                for e in item:
                    if e.VR != "SQ":
                        attrs.setdefault(e.keyword, e.value)
        if "EffectiveEchoTime" in attrs:
            attrs.setdefault("EchoTime", attrs["EffectiveEchoTime"])
    return attrs


def _group(datasets: list[Dataset]) -> tuple[str, dict[str, list[Dataset]], list[Dataset]]:
    studies = {str(d.get("StudyInstanceUID", "")) for d in datasets}
    if len(studies) != 1 or "" in studies:
        raise InvalidInput(
            f"instances belong to {len(studies)} studies {sorted(studies)[:4]}; send one study", field="study"
        )
    series: dict[str, list[Dataset]] = {}
    segs = []
    for d in datasets:
        cls = str(d.get("SOPClassUID", ""))
        if cls in SEG_CLASSES:
            segs.append(d)
        elif cls in MR_IMAGE_CLASSES:
            uid = d.get("SeriesInstanceUID")
            if not uid:
                raise InvalidInput(
                    f"MR instance {d.get('SOPInstanceUID', '?')} has no SeriesInstanceUID", field="series"
                )
            series.setdefault(str(uid), []).append(d)
    return studies.pop(), series, segs


def _pick_seg(segs: list[Dataset], series_attrs: Mapping[str, Mapping[str, object]]) -> Dataset:
    if not segs:
        present = ", ".join(describe(a) for a in series_attrs.values()) or "none"
        raise ModalityNotFound(
            f"the study has no SEG instance; its MR series are: {present}", field="segmentation"
        )
    if len(segs) > 1:
        raise AmbiguousSeries(
            f"the study has {len(segs)} SEG instances ({', '.join(describe(_first_attributes(s)) for s in segs)}); "
            "send one",
            field="segmentation",
        )
    return segs[0]


def _check_voxels(datasets: list[Dataset], name: str, limits: StudyLimits) -> None:
    first = datasets[0]
    frames = int(first.get("NumberOfFrames", 1) or 1) if len(datasets) == 1 else len(datasets)
    voxels = int(first.get("Rows", 0)) * int(first.get("Columns", 0)) * frames
    if limits.max_series_voxels and voxels > limits.max_series_voxels:
        raise StudyTooLarge(
            f"{name}: {voxels} voxels; at most {limits.max_series_voxels} per series", field=name
        )


def _check_frames_of_reference(named: Mapping[str, Dataset]) -> str:
    uids = {name: str(d.get("FrameOfReferenceUID", "")) for name, d in named.items()}
    if len(set(uids.values())) != 1 or "" in uids.values():
        shown = "; ".join(f"{n}: {u or 'none'}" for n, u in uids.items())
        raise FrameOfReferenceMismatch(
            f"the series and the SEG must share one Frame of Reference UID; found {shown}",
            field="frame_of_reference",
        )
    return next(iter(uids.values()))


def _segment_labels(
    seg: hd.seg.Segmentation, segment_map: SegmentMap
) -> tuple[dict[int, int], dict[int, str]]:
    labels, names = {}, {}
    for number in seg.get_segment_numbers():
        desc = seg.get_segment_description(number)
        ptype = desc.segmented_property_type
        code = (str(ptype.value), str(ptype.scheme_designator)) if ptype is not None else None
        names[number] = str(desc.segment_label)
        labels[number] = segment_map.label_for(number, names[number], code)
    return labels, names


def _seg_on_grid(
    seg: hd.seg.Segmentation, labels: Mapping[int, int], ref: hd.Volume, warnings: list[str]
) -> hd.Volume:
    try:
        vol = seg.get_volume(combine_segments=True, relabel=False, dtype=np.uint8)
    except (RuntimeError, ValueError) as exc:
        raise InvalidInput(f"SEG frames are not one 3-D volume ({exc})", field="segmentation") from None
    lut = np.zeros(max(labels) + 1, dtype=np.uint8)
    for number, label in labels.items():
        lut[number] = label
    vol = vol.with_array(lut[vol.array])
    try:
        return vol.match_geometry(ref)
    except RuntimeError:
        warnings.append(
            "segmentation: SEG grid is not its source series' grid; resampled (nearest neighbour)"
        )
        return ref.with_array(resample(vol, ref, order=0).astype(np.uint8))


def load_study(
    datasets: list[Dataset],
    rules: SeriesRules | None = None,
    segment_map: SegmentMap | None = None,
    limits: StudyLimits = StudyLimits(),
    case_id: str | None = None,
) -> Study:
    """Build the :class:`Case` of one study (see the module docstring for the steps).

    Raises:
        ModalityNotFound, AmbiguousSeries: series selection failed (the message lists the series present).
        FrameOfReferenceMismatch: the four series and the SEG do not share one frame of reference.
        SeriesGeometryError: a series is not a regular stack (names it).
        UnmappedSegment: a SEG segment maps to no label.
        StudyTooLarge: a series over the voxel budget.
        InvalidInput, EmptySegmentation: what :class:`Case` refuses.
    """
    rules = rules or SeriesRules.load()
    segment_map = segment_map or SegmentMap.load()
    study_uid, series, segs = _group(datasets)
    attrs = {uid: _first_attributes(ds[0]) for uid, ds in series.items()}
    seg_ds = _pick_seg(segs, attrs)
    chosen = select_series(attrs, rules)
    names = {f: f"{f} (series {describe(attrs[uid])})" for f, uid in chosen.items()}
    _check_frames_of_reference(
        {**{names[f]: series[uid][0] for f, uid in chosen.items()}, "segmentation (SEG)": seg_ds}
    )
    for f, uid in chosen.items():
        _check_voxels(series[uid], names[f], limits)
    refs = seg_ds.get("ReferencedSeriesSequence", [])
    source_uid = str(refs[0].SeriesInstanceUID) if refs else chosen["t1c"]
    warnings: list[str] = []
    if source_uid not in series:
        warnings.append("segmentation: its source series is not in the study; placed on the t1c grid")
        source_uid = chosen["t1c"]
    volumes = {f: series_volume(series[uid], names[f]) for f, uid in chosen.items()}
    ref_field = next((f for f, uid in chosen.items() if uid == source_uid), None)
    if ref_field is None:
        _check_voxels(series[source_uid], describe(attrs[source_uid]), limits)
    ref = volumes[ref_field] if ref_field else series_volume(series[source_uid], describe(attrs[source_uid]))
    seg = hd.seg.Segmentation.from_dataset(seg_ds, copy=False)
    labels, seg_names = _segment_labels(seg, segment_map)
    seg_vol = _seg_on_grid(seg, labels, ref, warnings)
    for f in MODALITIES:
        vol = volumes[f]
        if not vol.geometry_equal(ref):
            volumes[f] = ref.with_array(resample(vol, ref, order=1))
            warnings.append(f"{names[f]}: not on the grid of the SEG's source series; resampled (trilinear)")
    case_vols = {f: to_case_volume(volumes[f], f, names[f]) for f in MODALITIES}
    case_vols["segmentation"] = to_case_volume(seg_vol, "segmentation", "SEG")
    warnings.extend(_ood_warnings(case_vols))
    case = Case.from_volumes(case_vols, case_id or study_uid)
    case.warnings = (*warnings, *case.warnings)
    # The SR and KOS reference only the SEG's header; the pixel data (already decoded into the labels) is
    # dropped from the dataset itself (a copy.copy would share its element dict anyway).
    header = seg_ds
    if "PixelData" in header:
        del header.PixelData
    info = StudyInfo(
        study_uid, header, labels, seg_names, {f: describe(attrs[u]) for f, u in chosen.items()}, source_uid
    )
    return Study(case=case, info=info)


def _ood_warnings(vols: Mapping[str, object]) -> list[str]:
    """Out of the model's training space (stars still reported): not a 1 mm grid, not skull-stripped."""
    out = []
    t1c = vols["t1c"]
    zooms = np.asarray(t1c.zooms)  # type: ignore[attr-defined]
    if np.any(np.abs(zooms - 1.0) > ATLAS_SPACING_TOL_MM):
        out.append(
            f"out of distribution: voxel spacing {tuple(round(float(z), 3) for z in zooms)} mm is not the 1 mm "
            "atlas grid the model was trained on; the stars are reported but may not be meaningful"
        )
    data = t1c.data  # type: ignore[attr-defined]
    zero = float(np.count_nonzero(data == 0)) / data.size
    if zero < SKULL_ZERO_FRACTION:
        out.append(
            f"out of distribution: only {zero:.0%} of t1c voxels are zero; the images do not look skull-stripped "
            "(the model was trained on skull-stripped images); the stars are reported but may not be meaningful"
        )
    return out
