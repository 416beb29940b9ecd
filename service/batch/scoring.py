"""Stage 2 of the pipeline: one ``engine.run`` for all views of a case (:func:`infer_case`), then gate
verdicts and records (:func:`finish_case`, which the local pipeline overlaps with the next case's inference).

The views of every team's segmentation of a case go through the network in one batch (chunks of
:data:`MAX_VIEWS_PER_RUN` views when a case has more than 16 teams). Identical views
(two teams submitting the same file, or fusions that coincide) are run once: the network is deterministic,
so their stars are the same numbers either way.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dqe.models.errors import DQEError
from dqe.models.qc.gate import evaluate_case
from dqe.service.batch.prepare import PreparedCase, PreparedSeg, error_fields

if TYPE_CHECKING:
    from dqe.models.result import ScoreResult
    from dqe.service.engine import Engine

logger = logging.getLogger(__name__)

GateFn = Callable[[Any, Any], Any]

# ONNX Runtime's CPU arena grows by ~12.5 MB per 240x240 view in a batch; a case with many teams is run in
# chunks of this many views (16 segmentations) to bound memory. Per-view results do not depend on the batch.
MAX_VIEWS_PER_RUN = 48


def load_gate() -> GateFn:
    """The QC gate's ``evaluate_case`` (part of the domain core, so always present)."""
    return evaluate_case


def _digest(view: np.ndarray) -> bytes:
    data = np.ascontiguousarray(view).data
    return hashlib.blake2b(data, digest_size=16).digest() + str(view.shape).encode()


def run_unique(engine: Engine, segs: list[PreparedSeg]) -> dict[int, np.ndarray]:
    """Stars per prepared segmentation (index into ``segs``), running each distinct view once."""
    slots: dict[bytes, int] = {}
    unique: list[np.ndarray] = []
    index: dict[int, list[int]] = {}
    for i, seg in enumerate(segs):
        if seg.error is not None or seg.views is None:
            continue
        idx = []
        for view in seg.views:
            key = _digest(view)
            if key not in slots:
                slots[key] = len(unique)
                unique.append(view)
            idx.append(slots[key])
        index[i] = idx
    if not unique:
        return {}
    stars = np.concatenate(
        [
            engine.run_views(unique[i : i + MAX_VIEWS_PER_RUN])
            for i in range(0, len(unique), MAX_VIEWS_PER_RUN)
        ]
    )
    return {i: stars[idx] for i, idx in index.items()}


def _gate(gate: GateFn, seg: PreparedSeg, result: ScoreResult) -> tuple[Any, str | None]:
    try:
        return gate(seg.case, result), None
    except DQEError as exc:
        return None, f"gate failed: {exc.kind}: {exc.message}"
    except Exception as exc:
        logger.exception("gate failed on %s / %s", seg.job.case_id, seg.job.team)
        return None, f"gate failed: {type(exc).__name__}: {exc}"


@dataclass
class InferredCase:
    """A prepared case with its stars: ``results`` maps the index of each scored segmentation to its result."""

    prepared: PreparedCase
    results: dict[int, ScoreResult]
    run_error: BaseException | None = None


def infer_case(engine: Engine, prepared: PreparedCase) -> InferredCase:
    """Run all views of the case through the network (one call); an inference failure is kept, not raised."""
    t0 = time.perf_counter()
    segs = prepared.segs
    run_error: BaseException | None = None
    try:
        stars = run_unique(engine, segs)
    except Exception as exc:
        logger.exception("inference failed for case %s", prepared.spec.case_id)
        stars, run_error = {}, exc
    infer_ms = (time.perf_counter() - t0) * 1e3
    n_ok = max(len(stars), 1)
    results: dict[int, ScoreResult] = {}
    for i, s in stars.items():
        seg = segs[i]
        timings = {
            "decode_case": prepared.decode_ms,
            "prepare": seg.prepare_ms,
            "inference_share": infer_ms / n_ok,
        }
        results[i] = engine.result_from_stars(s, seg.com, seg.warnings, timings, seg.job.case_id)
    return InferredCase(prepared, results, run_error)


def finish_case(
    engine: Engine,
    inferred: InferredCase,
    gate: GateFn | None = None,
    pool: Executor | None = None,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Gate verdicts (in ``pool`` when given; never call it from one of ``pool``'s own threads) and records."""
    segs, results = inferred.prepared.segs, inferred.results
    verdicts: dict[int, tuple[Any, str | None]] = {}
    if gate is not None:
        todo = [i for i in results if segs[i].case is not None]
        if pool is not None:
            done = list(pool.map(lambda i: _gate(gate, segs[i], results[i]), todo))
        else:
            done = [_gate(gate, segs[i], results[i]) for i in todo]
        verdicts = dict(zip(todo, done, strict=True))
    records = []
    for i, seg in enumerate(segs):
        error = seg.error or (inferred.run_error if i not in results else None)
        gate_result, gate_note = verdicts.get(i, (None, None))
        records.append(make_record(engine, seg, results.get(i), gate_result, gate_note, error, extra))
        seg.case = None  # release the label volume as soon as possible
    return records


def score_prepared(
    engine: Engine,
    prepared: PreparedCase,
    gate: GateFn | None = None,
    pool: Executor | None = None,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Records (one per job of the case) from a prepared case; never raises for data errors.

    ``extra`` fields are copied into every record. The PNG mosaic travels in the transient ``_png`` field
    (bytes), which the writer stores and replaces with a file name.
    """
    return finish_case(engine, infer_case(engine, prepared), gate, pool, extra)


def make_record(
    engine: Engine,
    seg: PreparedSeg,
    result: ScoreResult | None,
    gate_result: Any,
    gate_note: str | None,
    error: BaseException | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The flat, JSON-safe record of one segmentation (stars ``None`` when it failed)."""
    job = seg.job
    views = engine.contract.views
    warnings = list(result.warnings if result is not None else seg.warnings)
    if gate_note:
        warnings.append(gate_note)
    rec: dict[str, Any] = {
        "case": job.case_id,
        "team": job.team,
        "mean_stars": result.mean_stars if result is not None else None,
        **{v: (result.views[v] if result is not None else None) for v in views},
        "verdict": "",
        "gate_score": None,
        "gate_reasons": [],
        **error_fields(error),
        "com": list(seg.com) if seg.com is not None and result is not None else None,
        "warnings": warnings,
        "segmentation": str(job.segmentation) if job.segmentation else "",
        "input_key": job.input_key,
        "model_id": engine.model_id,
        "model_sha256": engine.model_sha256,
        "precision": engine.config.precision,
        "elapsed_ms": round(
            seg.prepare_ms + (result.timings_ms.get("inference_share", 0.0) if result else 0.0), 3
        ),
        "_png": seg.png if result is not None else None,
    }
    if gate_result is not None:
        verdict = getattr(gate_result, "verdict", "")
        rec["verdict"] = str(getattr(verdict, "value", verdict))
        rec["gate_score"] = float(gate_result.gate_score)
        rec["gate_reasons"] = [str(r) for r in getattr(gate_result, "reasons", [])]
    if seg.metrics is not None:
        rec.update(seg.metrics)
    rec.update(extra or {})
    return rec
