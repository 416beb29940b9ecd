"""``ScoreResult`` + ``GateResult`` -> a Comprehensive 3D SR holding a TID 1500 Measurement Report, and (when the
verdict is not pass) a Key Object Selection titled Quality Issue (DCM 113010) referencing the SEG.

The report has one TID 1411 Volumetric ROI group per SEG segment, each referencing its segment and carrying the
stars (mean and per view) and the gate score as measurements in the private ``99DQE`` scheme
(:mod:`dqe.models.dicom.codes`), and the verdict as Quality Assessment (DCM 111050) with a CID 6044 value:
pass -> meets the quality control standard, review -> usable but does not meet it, fail -> unusable. A group
carries its region's own verdict when the gate gives one (enhancing -> et, necrosis -> tc, edema -> wt), else the
case's. The gate's reasons are TEXT items (DQE0020) in the report's Qualitative Evaluations container.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dqe.models.dicom import codes as dqe_codes
from dqe.models.dicom.study import StudyInfo
from dqe.models.qc.types import GateResult
from dqe.models.result import ScoreResult

MANUFACTURER = "dqe-service"
SR_SERIES_NUMBER = 9001
KOS_SERIES_NUMBER = 9002
REGION_OF_LABEL = {1: "tc", 2: "wt", 3: "et"}


@dataclass(frozen=True)
class Reports:
    """The documents made for one study: the SR always, the KOS when the verdict is not pass."""

    sr: Dataset
    kos: Dataset | None

    def sr_bytes(self) -> bytes:
        return to_bytes(self.sr)

    def kos_bytes(self) -> bytes | None:
        return to_bytes(self.kos) if self.kos is not None else None


def to_bytes(ds: Dataset) -> bytes:
    """A Part-10 file's bytes."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _coding_scheme() -> hd.coding_schemes.CodingSchemeIdentificationItem:
    return hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=dqe_codes.SCHEME,
        name=dqe_codes.SCHEME_NAME,
        version=dqe_codes.SCHEME_VERSION,
        responsible_organization=dqe_codes.SCHEME_ORGANIZATION,
    )


def _observer(result: ScoreResult) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[result.model_id, result.model_sha256]),
        name="DQE",
        manufacturer_name=MANUFACTURER,
        model_name=result.model_id[:64],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _verdict_for(gate: GateResult, label: int) -> str:
    region = REGION_OF_LABEL.get(label)
    for r in gate.regions:
        if r.region == region:
            return r.verdict.value
    return gate.verdict.value


def _group(
    result: ScoreResult, gate: GateResult, info: StudyInfo, number: int
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    label = info.segment_labels[number]
    measurements = [
        hd.sr.Measurement(name=dqe_codes.MEAN_STARS, value=result.mean_stars, unit=dqe_codes.STAR_UNIT)
    ]
    for view, code in dqe_codes.VIEW_STARS.items():
        if view in result.views:
            measurements.append(
                hd.sr.Measurement(name=code, value=result.views[view], unit=dqe_codes.STAR_UNIT)
            )
    measurements.append(
        hd.sr.Measurement(name=dqe_codes.GATE_SCORE, value=gate.gate_score, unit=dqe_codes.NO_UNIT)
    )
    verdict = dqe_codes.VERDICT_CODES[_verdict_for(gate, label)]
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=f"segment {number} {info.segment_names[number]}"[:64]
        ),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=info.seg.SOPClassUID,
            sop_instance_uid=info.seg.SOPInstanceUID,
            segment_number=number,
            source_series=hd.sr.SourceSeriesForSegmentation(info.source_series_uid),
        ),
        measurements=measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=dqe_codes.QUALITY_ASSESSMENT, value=verdict)
        ],
    )


def _reasons(gate: GateResult) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(
        name=hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations"),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    items: list[hd.sr.CodeContentItem | hd.sr.TextContentItem] = [
        hd.sr.CodeContentItem(
            name=dqe_codes.QUALITY_ASSESSMENT,
            value=dqe_codes.VERDICT_CODES[gate.verdict.value],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    ]
    for reason in gate.reasons:
        items.append(
            hd.sr.TextContentItem(
                name=dqe_codes.GATE_REASON,
                value=reason[:1024],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    container.ContentSequence = hd.sr.ContentSequence(items, is_root=False)
    return container


def build_sr(result: ScoreResult, gate: GateResult, info: StudyInfo) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of one scored study (see the module docstring for its content)."""
    groups = [_group(result, gate, info, n) for n in sorted(info.segment_labels)]
    report = hd.sr.MeasurementReport(
        observation_context=_observer(result),
        procedure_reported=dqe_codes.MR_PROCEDURE,
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    root = report[0]
    root.ContentSequence.append(_reasons(gate))
    return hd.sr.Comprehensive3DSR(
        content=root,
        is_complete=True,
        coding_schemes=[_coding_scheme()],
        **_document(info, SR_SERIES_NUMBER, "DQE quality report"),
    )


def _document(info: StudyInfo, series_number: int, description: str) -> dict[str, Any]:
    """What every document we write shares: evidence (the SEG), new UIDs, series number and description."""
    return {
        "evidence": [info.seg],
        "series_instance_uid": generate_uid(),
        "series_number": series_number,
        "sop_instance_uid": generate_uid(),
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "series_description": description,
    }


def build_kos(gate: GateResult, info: StudyInfo) -> hd.ko.KeyObjectSelectionDocument:
    """A Key Object Selection titled Quality Issue (DCM 113010) that flags the SEG for a human look."""
    text = f"DQE QC gate verdict {gate.verdict.value}: " + "; ".join(gate.reasons)
    content = hd.ko.KeyObjectSelection(
        document_title=dqe_codes.QUALITY_ISSUE, referenced_objects=[info.seg], description=text[:1024]
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        content=content, **_document(info, KOS_SERIES_NUMBER, "DQE quality issue")
    )
    # TID 2010's reference rows are anonymous; highdicom names them (SCT 260753009 "Source"), which PixelMed's
    # DicomSRValidator reports as an error ("Purpose of Reference ... forbidden"): drop the name.
    for item in kos.ContentSequence:
        if item.ValueType in ("IMAGE", "COMPOSITE") and "ConceptNameCodeSequence" in item:
            del item.ConceptNameCodeSequence
    return kos


def build_reports(result: ScoreResult, gate: GateResult, info: StudyInfo) -> Reports:
    """The SR, and the KOS when ``gate.verdict`` is not pass."""
    kos = build_kos(gate, info) if gate.verdict.value != "pass" else None
    return Reports(sr=build_sr(result, gate, info), kos=kos)
