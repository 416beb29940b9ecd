"""Discovery of a BraTS-style challenge dataset: case folders, submission folders, ground truth.

Layout::

    CASES_DIR/<case id>/<BraTS 2021/2023/Toolkit named images>   four MR images per case
    SUBMISSION_DIR/<case id>.nii.gz                               one segmentation per case; folder name = team
    GT_DIR/<case id>.nii.gz                                       optional reference segmentations

Every (case, team) pair becomes one :class:`SegJob`, including pairs whose file is missing or whose case
folder is broken: such a job carries the typed error and ends up as a row with ``error`` set, so the
output always has one row per case x team.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dqe.models import errors
from dqe.models.case import MODALITIES, NIFTI_SUFFIXES, discover_files
from dqe.models.errors import DQEError, InvalidInput, NotFound
from dqe.models.labels import detect_track, get_convention

logger = logging.getLogger(__name__)


def file_stat(path: Path | None) -> str:
    """``"<size>:<mtime_ns>"`` of a file (symlinks followed), or ``"missing"``."""
    if path is None:
        return "missing"
    try:
        st = path.stat()
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def find_nifti(folder: Path, stem: str) -> Path | None:
    """``folder/<stem>.nii.gz`` or ``folder/<stem>.nii``, whichever exists first."""
    for suffix in NIFTI_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def nifti_stem(name: str) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


@dataclass(frozen=True)
class SegJob:
    """One segmentation of one case by one team.

    Attributes:
        case_id, team: the row's identity.
        segmentation: the submitted file, ``None`` when the team has no file for this case.
        error: a typed error known before decoding (missing file, broken case folder), else ``None``.
        input_key: digest of everything the result depends on (segmentation, images and ground-truth file
            size + mtime, model, precision, options); a journal record with the same key is not redone.
    """

    case_id: str
    team: str
    segmentation: Path | None
    error: DQEError | None = None
    input_key: str = ""


@dataclass(frozen=True)
class CaseSpec:
    """A case folder, its four image files, its optional ground truth and its jobs (one per team)."""

    case_id: str
    folder: Path
    images: dict[str, Path]
    ground_truth: Path | None
    jobs: tuple[SegJob, ...]
    error: DQEError | None = None
    labels_expected: bool = False
    label_convention: str = "auto"

    def to_json(self) -> str:
        """A JSON form for shipping to other processes (Ray workers); paths as strings."""
        return json.dumps(
            {
                "case_id": self.case_id,
                "folder": str(self.folder),
                "images": {k: str(v) for k, v in self.images.items()},
                "ground_truth": str(self.ground_truth) if self.ground_truth else None,
                "error": _error_json(self.error),
                "labels_expected": self.labels_expected,
                "label_convention": self.label_convention,
                "jobs": [
                    {
                        "case_id": j.case_id,
                        "team": j.team,
                        "segmentation": str(j.segmentation) if j.segmentation else None,
                        "error": _error_json(j.error),
                        "input_key": j.input_key,
                    }
                    for j in self.jobs
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> CaseSpec:
        data = json.loads(text)
        jobs = tuple(
            SegJob(
                case_id=j["case_id"],
                team=j["team"],
                segmentation=Path(j["segmentation"]) if j["segmentation"] else None,
                error=_error_from_json(j["error"]),
                input_key=j["input_key"],
            )
            for j in data["jobs"]
        )
        return cls(
            case_id=data["case_id"],
            folder=Path(data["folder"]),
            images={k: Path(v) for k, v in data["images"].items()},
            ground_truth=Path(data["ground_truth"]) if data["ground_truth"] else None,
            jobs=jobs,
            error=_error_from_json(data["error"]),
            labels_expected=bool(data.get("labels_expected", False)),
            label_convention=str(data.get("label_convention", "auto")),
        )

    def with_jobs(self, jobs: Sequence[SegJob]) -> CaseSpec:
        return CaseSpec(
            self.case_id,
            self.folder,
            self.images,
            self.ground_truth,
            tuple(jobs),
            self.error,
            self.labels_expected,
            self.label_convention,
        )


def _error_json(exc: DQEError | None) -> dict[str, Any] | None:
    if exc is None:
        return None
    return {"kind": exc.kind, "message": exc.message, "field": exc.field}


def _error_from_json(data: dict[str, Any] | None) -> DQEError | None:
    if data is None:
        return None

    cls = getattr(errors, data["kind"], DQEError)
    if not (isinstance(cls, type) and issubclass(cls, DQEError)):
        cls = DQEError
    return cls(data["message"], field=data.get("field"))


@dataclass
class Dataset:
    """Cases x teams, in sorted order, plus what did not match."""

    cases: list[CaseSpec]
    teams: list[str]
    labels_dir: Path | None = None
    unmatched: dict[str, list[str]] = field(default_factory=dict)

    @property
    def jobs(self) -> list[SegJob]:
        return [job for case in self.cases for job in case.jobs]


def discover_dataset(
    cases_dir: str | Path,
    submission_dirs: Sequence[str | Path],
    labels_dir: str | Path | None = None,
    key_extra: dict[str, Any] | None = None,
    label_convention: str = "auto",
) -> Dataset:
    """Find the cases, the submissions of each team and the ground truth.

    Args:
        cases_dir: folder of case folders (each named by its case id).
        submission_dirs: one folder per team; the folder name is the team name (must be unique).
        labels_dir: optional folder of ``<case id>.nii[.gz]`` reference segmentations.
        key_extra: settings the results depend on (model sha256, precision, ...), mixed into each job's
            ``input_key``.
        label_convention: how the segmentations' labels are read (:mod:`dqe.models.labels`); part of the
            ``input_key`` (re-running with another convention rescores). Cases named as a BraTS track other
            than adult glioma are logged here and get an out-of-distribution warning in every record.

    Raises:
        NotFound: ``cases_dir``, a submission folder or ``labels_dir`` does not exist.
        InvalidInput: no case folder, two submission folders with the same name, or an unknown
            ``label_convention``.
    """

    get_convention(label_convention)  # refuse an unknown name before any work
    root = Path(cases_dir)
    if not root.is_dir():
        raise NotFound(f"cases folder {str(root)!r} does not exist", field="cases_dir")
    teams: list[tuple[str, Path]] = []
    for sub in submission_dirs:
        path = Path(sub)
        if not path.is_dir():
            raise NotFound(f"submission folder {str(path)!r} does not exist", field="submission_dir")
        teams.append((path.resolve().name if path.name in ("", ".", "..") else path.name, path))
    names = [t for t, _ in teams]
    dupes = sorted({t for t in names if names.count(t) > 1})
    if dupes:
        raise InvalidInput(
            f"submission folders share the team names {dupes}; rename one of them", field="submission_dir"
        )
    gt_root = Path(labels_dir) if labels_dir is not None else None
    if gt_root is not None and not gt_root.is_dir():
        raise NotFound(f"ground-truth folder {str(gt_root)!r} does not exist", field="labels")
    case_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not case_dirs:
        raise InvalidInput(f"cases folder {str(root)!r} has no case folder", field="cases_dir")
    # "auto" is left out of the key so journals written before conventions existed stay valid
    conv = {} if label_convention == "auto" else {"label_convention": label_convention}
    extra = json.dumps({**(key_extra or {}), **conv}, sort_keys=True)
    cases = [_case_spec(folder, teams, gt_root, extra, label_convention) for folder in case_dirs]
    _log_tracks(cases)
    case_ids = {c.case_id for c in cases}
    unmatched: dict[str, list[str]] = {}
    for team, path in teams + ([("ground_truth", gt_root)] if gt_root else []):
        stray = sorted(
            p.name
            for p in path.iterdir()
            if (stem := nifti_stem(p.name)) is not None and stem not in case_ids
        )
        if stray:
            unmatched[team] = stray
            logger.warning("%s: %d files match no case folder: %s", team, len(stray), stray[:5])
    return Dataset(cases=cases, teams=names, labels_dir=gt_root, unmatched=unmatched)


def _log_tracks(cases: Sequence[CaseSpec]) -> None:
    """Log how many cases are named as BraTS tracks outside the model's training distribution."""

    ood: dict[str, int] = {}
    for case in cases:
        track = detect_track([case.case_id])
        if track is not None and not track.in_distribution:
            ood[track.code] = ood.get(track.code, 0) + 1
    if ood:
        logger.warning(
            "cases named as BraTS tracks outside the model's training distribution (adult glioma): %s; "
            "their records carry a warning",
            ", ".join(f"{n} {code}" for code, n in sorted(ood.items())),
        )


def _case_spec(
    folder: Path,
    teams: list[tuple[str, Path]],
    gt_root: Path | None,
    extra: str,
    label_convention: str = "auto",
) -> CaseSpec:
    case_id = folder.name
    error: DQEError | None = None
    images: dict[str, Path] = {}
    try:
        found = discover_files(folder, require_segmentation=False)
        images = {k: found[k] for k in MODALITIES}
    except DQEError as exc:
        error = exc
    gt = find_nifti(gt_root, case_id) if gt_root is not None else None
    base = [file_stat(images.get(m)) for m in MODALITIES] + [file_stat(gt) if gt_root else "no-labels", extra]
    jobs = []
    for team, sub in teams:
        seg = find_nifti(sub, case_id)
        job_error = error
        if job_error is None and seg is None:
            job_error = NotFound(
                f"team {team!r} has no segmentation {case_id}.nii.gz in {str(sub)!r}", field="segmentation"
            )
        digest = hashlib.sha256(json.dumps([file_stat(seg), *base]).encode()).hexdigest()[:32]
        jobs.append(SegJob(case_id, team, seg, job_error, digest))
    return CaseSpec(
        case_id,
        folder,
        images,
        gt,
        tuple(jobs),
        error,
        labels_expected=gt_root is not None,
        label_convention=label_convention,
    )
