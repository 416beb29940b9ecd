"""Score a DICOM study and answer in DICOM: the one code path behind ``dqe score|gate STUDY_DIR``, ``dqe batch``
over studies, the ``ScoreStudy`` RPC and the DICOM node.

Pure functions over an :class:`~dqe.service.engine.Engine`-like scorer: instances (paths or Part-10 bytes) under a
:class:`~dqe.models.dicom.study.StudyLimits` budget -> :class:`StudyOutcome` (the ``ScoreResult`` with its gate
verdict, the SR bytes and, when the verdict is not pass, the KOS bytes). Bad input raises typed
:class:`~dqe.models.errors.DQEError`\\ s; without the ``dicom`` extra, :class:`DicomUnavailable`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dqe.models.dicom import require_dicom
from dqe.models.dicom.errors import StudyTooLarge
from dqe.models.errors import DQEError
from dqe.models.qc.config import GateConfig
from dqe.models.result import ScoreResult

if TYPE_CHECKING:
    from dqe.models.case import Case
    from dqe.models.dicom.study import Study, StudyLimits

logger = logging.getLogger(__name__)


class Scorer(Protocol):
    def score_case(self, case: Case) -> ScoreResult: ...


@dataclass(frozen=True)
class DicomOptions:
    """Series rules and segment map files (``None``: the packaged defaults)."""

    series_rules: str | None = None
    segment_map: str | None = None


@dataclass
class StudyOutcome:
    """One scored study: the result (``result.gate`` holds the verdict), the SR and the KOS (not pass only)."""

    result: ScoreResult
    sr: bytes
    kos: bytes | None
    study_uid: str

    def to_dict(self) -> dict[str, Any]:
        out = self.result.to_dict()
        out["study_instance_uid"] = self.study_uid
        return out


def _load(datasets: list[Any], options: DicomOptions, limits: StudyLimits, case_id: str | None) -> Study:
    from dqe.models.dicom.rules import SeriesRules  # lazy: pydicom and highdicom are the dicom extra
    from dqe.models.dicom.segments import SegmentMap  # lazy: pydicom and highdicom are the dicom extra
    from dqe.models.dicom.study import load_study  # lazy: pydicom and highdicom are the dicom extra

    rules = SeriesRules.load(options.series_rules)
    segment_map = SegmentMap.load(options.segment_map)
    return load_study(datasets, rules, segment_map, limits, case_id=case_id)


def default_limits() -> StudyLimits:
    require_dicom()
    from dqe.models.dicom.study import StudyLimits  # lazy: pydicom and highdicom are the dicom extra

    return StudyLimits()


def load_study_dir(
    folder: str | Path, options: DicomOptions = DicomOptions(), limits: StudyLimits | None = None
) -> Study:
    """The study in ``folder`` (Part-10 files, recursively), named after the folder."""
    require_dicom()
    from dqe.models.dicom.study import study_files  # lazy: pydicom and highdicom are the dicom extra

    return load_study_paths(study_files(folder), options, limits, Path(folder).name)


def load_study_paths(
    paths: Iterable[str | Path],
    options: DicomOptions = DicomOptions(),
    limits: StudyLimits | None = None,
    case_id: str | None = None,
) -> Study:
    """The study made of the Part-10 files ``paths``."""
    require_dicom()
    from dqe.models.dicom.study import read_files  # lazy: pydicom and highdicom are the dicom extra

    limits = limits or default_limits()
    return _load(read_files(paths, limits), options, limits, case_id)


def load_study_bytes(
    instances: Iterable[bytes], options: DicomOptions = DicomOptions(), limits: StudyLimits | None = None
) -> Study:
    """The study made of Part-10 instances given as bytes (the budget is checked as each arrives)."""
    require_dicom()
    from dqe.models.dicom.study import read_bytes  # lazy: pydicom and highdicom are the dicom extra

    limits = limits or default_limits()
    return _load(read_bytes(instances, limits), options, limits, None)


def score_study(study: Study, scorer: Scorer, gate_config: GateConfig | None = None) -> StudyOutcome:
    """Stars + gate verdict for a loaded study, and its SR (and KOS when the verdict is not pass)."""
    from dqe.models.dicom.report import build_reports  # lazy: pydicom and highdicom are the dicom extra
    from dqe.models.qc.explain import (  # lazy: scipy loads only when a case is gated
        gate_with_evidence,
    )

    result = scorer.score_case(study.case)
    result.gate, _ = gate_with_evidence(study.case, result, gate_config)  # as the NIfTI paths: with slices
    docs = build_reports(result, result.gate, study.info)
    return StudyOutcome(
        result=result, sr=docs.sr_bytes(), kos=docs.kos_bytes(), study_uid=study.info.study_uid
    )


def budgeted(instances: Iterable[bytes], max_instances: int, max_bytes: int) -> Iterable[bytes]:
    """``instances`` as they arrive, refused with :class:`StudyTooLarge` the moment a budget is passed (so a
    stream is not read further); 0 = no limit."""
    total = 0
    for count, raw in enumerate(instances, start=1):
        total += len(raw)
        if max_instances and count > max_instances:
            raise StudyTooLarge(f"study has more than {max_instances} instances", field="instances")
        if max_bytes and total > max_bytes:
            raise StudyTooLarge(f"study holds more than {max_bytes} bytes", field="instances")
        yield raw


def score_instances(
    instances: Iterable[bytes],
    scorer: Scorer,
    *,
    limits: StudyLimits | None = None,
    options: DicomOptions = DicomOptions(),
    gate_config: GateConfig | None = None,
    check: Callable[[], None] | None = None,
    reserve: Callable[[int], None] | None = None,
) -> StudyOutcome:
    """The RPC's pure core: Part-10 instances -> outcome. ``check`` runs between instances (deadline/cancel);
    ``reserve`` is called with each instance's size before it is kept (a server's memory budget: it raises to
    refuse, e.g. :class:`~dqe.models.errors.Overloaded`)."""
    limits = limits or default_limits()

    def watched() -> Iterable[bytes]:
        for raw in budgeted(instances, limits.max_instances, limits.max_bytes):
            if check is not None:
                check()
            if reserve is not None:
                reserve(len(raw))
            yield raw

    study = load_study_bytes(watched(), options, limits)
    return score_study(study, scorer, gate_config)


def write_reports(
    outcome: StudyOutcome, sr_path: str | Path | None, kos_path: str | Path | None = None
) -> None:
    """Write the SR to ``sr_path`` and the KOS to ``kos_path`` (default: beside the SR, ``*-kos.dcm``)."""
    if sr_path is None:
        return
    sr_path = Path(sr_path)
    sr_path.parent.mkdir(parents=True, exist_ok=True)
    sr_path.write_bytes(outcome.sr)
    if outcome.kos is not None:
        kos = Path(kos_path) if kos_path else sr_path.with_name(sr_path.stem + "-kos.dcm")
        kos.write_bytes(outcome.kos)


def run_study_batch(
    studies_dir: str | Path,
    out_dir: str | Path,
    scorer: Scorer,
    options: DicomOptions = DicomOptions(),
    gate_config: GateConfig | None = None,
) -> dict[str, Any]:
    """Score every study folder of ``studies_dir``: ``OUT/sr/<study>.dcm`` (+ ``-kos.dcm``) and one JSON line per
    study in ``OUT/results.jsonl``, also the journal: a study already there is skipped on a re-run."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    journal = out / "results.jsonl"
    done = set()
    if journal.exists():
        done = {json.loads(line)["study"] for line in journal.read_text().splitlines() if line.strip()}
    folders = sorted(p for p in Path(studies_dir).iterdir() if p.is_dir())
    counts = {"scored": 0, "failed": 0, "skipped": 0}
    verdicts: dict[str, int] = {}
    with journal.open("a") as fh:
        for folder in folders:
            if folder.name in done:
                counts["skipped"] += 1
                continue
            row: dict[str, Any] = {"study": folder.name}
            try:
                outcome = score_study(load_study_dir(folder, options), scorer, gate_config)
                write_reports(outcome, out / "sr" / f"{folder.name}.dcm")
                row.update(outcome.to_dict())
                verdict = outcome.result.gate.verdict.value if outcome.result.gate else "none"
                verdicts[verdict] = verdicts.get(verdict, 0) + 1
                counts["scored"] += 1
            except DQEError as exc:
                row["error"] = {"code": exc.code, "kind": exc.kind, "message": exc.message}
                counts["failed"] += 1
                logger.warning("study %s: %s", folder.name, exc.message)
            fh.write(json.dumps(row, default=str) + "\n")
            fh.flush()
    return {"studies": len(folders), **counts, "verdicts": verdicts, "out": str(out)}
