"""Stage 1 of the pipeline: decode a case once and turn each team's segmentation into network views.

Runs off the inference thread (a producer thread with a worker pool locally, inside the actor on Ray): the
case's four images are decoded once, in parallel, and every team's :class:`~dqe.models.case.Case` reuses them
(``Case.from_files(..., images=...)``). Per segmentation it also computes the reference metrics (when ground
truth exists) and the report mosaic. Failures are captured per segmentation, never raised.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dqe.models.case import MODALITIES, Case
from dqe.models.errors import DQEError, EmptySegmentation
from dqe.models.nifti import Volume, load_nifti
from dqe.service.batch.dataset import CaseSpec, SegJob
from dqe.service.batch.metrics import segmentation_metrics
from dqe.service.batch.mosaic import render_mosaic

if TYPE_CHECKING:
    from dqe.service.engine import Engine

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareOptions:
    """What stage 1 computes besides the views.

    Attributes:
        keep_case: keep the validated :class:`Case` for the QC gate (costs its label volume in memory).
        mosaic: render the report PNG.
        nsd_tolerance_mm: tolerance of the normalised surface Dice (mm).
    """

    keep_case: bool = False
    mosaic: bool = True
    nsd_tolerance_mm: float = 1.0


@dataclass
class PreparedSeg:
    """One segmentation ready for inference, or its error."""

    job: SegJob
    views: list[np.ndarray] | None = None
    com: tuple[int, int, int] | None = None
    warnings: list[str] = field(default_factory=list)
    case: Case | None = None
    metrics: dict[str, float] | None = None
    png: bytes | None = None
    error: BaseException | None = None
    prepare_ms: float = 0.0


@dataclass
class PreparedCase:
    """All pending segmentations of one case, with the case's image decoding time."""

    spec: CaseSpec
    segs: list[PreparedSeg]
    decode_ms: float = 0.0


def _decode_images(spec: CaseSpec, pool: Executor) -> dict[str, Volume]:
    futures = {m: pool.submit(load_nifti, spec.images[m], m) for m in MODALITIES}
    return {m: f.result() for m, f in futures.items()}


def _reference_labels(spec: CaseSpec, images: dict[str, Volume]) -> tuple[np.ndarray | None, str | None]:
    """The ground-truth label volume validated like a segmentation (an empty one is allowed)."""
    if spec.ground_truth is None:
        note = (
            f"no ground truth {spec.case_id}.nii.gz in the labels folder: no metrics"
            if spec.labels_expected
            else None
        )
        return None, note
    try:
        gt = load_nifti(spec.ground_truth, "labels")
        try:
            case = Case(**images, segmentation=gt, case_id=spec.case_id)  # type: ignore[arg-type]
            return case.labels, None
        except EmptySegmentation:
            return np.zeros(gt.shape, dtype=np.uint8), None
    except DQEError as exc:
        return None, f"ground truth unusable, no metrics: {exc.kind}: {exc.message}"


def prepare_seg(
    job: SegJob,
    spec: CaseSpec,
    images: dict[str, Volume],
    engine: Engine,
    reference: np.ndarray | None,
    reference_note: str | None,
    options: PrepareOptions,
) -> PreparedSeg:
    """Decode, validate and preprocess one segmentation; compute its metrics and mosaic. Never raises."""
    t0 = time.perf_counter()
    out = PreparedSeg(job=job)
    if job.error is not None:
        out.error = job.error
        return out
    try:
        files = {**spec.images, "segmentation": job.segmentation}
        case = Case.from_files(
            **files,  # type: ignore[arg-type]
            case_id=job.case_id,
            images=images,
            label_convention=spec.label_convention,
        )
        out.views, out.com = engine.preprocess(case)
        out.warnings = list(case.warnings)
        if reference_note:
            out.warnings.append(reference_note)
        if reference is not None:
            out.metrics = _metrics(case, reference, options, out.warnings)
        if options.mosaic:
            out.png = render_mosaic(case.images, case.labels, out.com, engine.contract.views, reference)
        if options.keep_case:
            out.case = case
    except DQEError as exc:
        out.error = exc
    except Exception as exc:  # a bug or resource problem: record it, keep going, retry on the next run
        logger.exception("unexpected error preparing %s / %s", job.case_id, job.team)
        out.error = exc
    out.prepare_ms = (time.perf_counter() - t0) * 1e3
    return out


def _metrics(
    case: Case, reference: np.ndarray, options: PrepareOptions, warnings: list[str]
) -> dict[str, float] | None:

    try:
        return segmentation_metrics(
            case.labels,
            reference,
            spacing=case.segmentation.zooms,
            nsd_tolerance_mm=options.nsd_tolerance_mm,
            region_labels=case.contract.label_map,
        )
    except DQEError as exc:
        warnings.append(f"no metrics: {exc.kind}: {exc.message}")
        return None


def prepare_case(spec: CaseSpec, engine: Engine, pool: Executor, options: PrepareOptions) -> PreparedCase:
    """Decode the case's images once and prepare every job of ``spec`` in ``pool``. Never raises for data."""
    t0 = time.perf_counter()
    images: dict[str, Volume] = {}
    case_error: BaseException | None = spec.error
    if case_error is None and any(j.error is None for j in spec.jobs):
        try:
            images = _decode_images(spec, pool)
        except DQEError as exc:
            case_error = exc
        except Exception as exc:
            logger.exception("unexpected error decoding the images of %s", spec.case_id)
            case_error = exc
    reference: np.ndarray | None = None
    note: str | None = None
    if case_error is None and images:
        reference, note = _reference_labels(spec, images)
    decode_ms = (time.perf_counter() - t0) * 1e3
    if case_error is not None:
        return PreparedCase(
            spec, [PreparedSeg(job=j, error=j.error or case_error) for j in spec.jobs], decode_ms
        )
    futures = [pool.submit(prepare_seg, j, spec, images, engine, reference, note, options) for j in spec.jobs]
    return PreparedCase(spec, [f.result() for f in futures], decode_ms)


def error_fields(exc: BaseException | None) -> dict[str, Any]:
    """``error`` ("Kind: message"), ``error_code`` and ``error_typed`` (a DQEError: deterministic) of a record."""
    if exc is None:
        return {"error": "", "error_code": "", "error_typed": False}
    if isinstance(exc, DQEError):
        return {"error": f"{exc.kind}: {exc.message}", "error_code": exc.code, "error_typed": True}
    return {"error": f"{type(exc).__name__}: {exc}", "error_code": "INTERNAL", "error_typed": False}
