"""Stage 2 of the pipeline: one ``engine.run`` for all views of a case (:func:`infer_case`), then consensus
agreement, gate verdicts and records (:func:`finish_case`, which the local pipeline overlaps with the next
case's inference).

Consensus (:mod:`dqe.models.qc.consensus`, Zenk et al., Medical Image Analysis 2025): once every team of a
case is scored, each segmentation's per-region Dice with the majority vote of the *other* teams' regions
(at least two others) is computed, written to the record (``consensus_dice_wt/tc/et``) and passed to the
gate (``consensus=``). It needs all teams of a case at once, which is why the runner re-scores a case in
full when any of its segmentations is pending, and journals a case only after this step.

The views of every team's segmentation of a case go through the network in one batch (chunks of
:data:`MAX_VIEWS_PER_RUN` views when a case has more than 16 teams). Identical views
(two teams submitting the same file, or fusions that coincide) are run once: the network is deterministic,
so their stars are the same numbers either way.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dqe.models.errors import DQEError
from dqe.models.qc.config import GateConfig
from dqe.models.qc.consensus import consensus_dice
from dqe.models.qc.explain import add_evidence
from dqe.models.qc.gate import evaluate_case
from dqe.models.qc.types import REGIONS
from dqe.service.batch.mosaic import render_evidence
from dqe.service.batch.prepare import PreparedCase, PreparedSeg, error_fields
from dqe.service.batch.writer import safe_name
from dqe.service.evidence_io import write_evidence_map

if TYPE_CHECKING:
    from dqe.models.result import ScoreResult
    from dqe.service.engine import Engine

logger = logging.getLogger(__name__)

GateFn = Callable[..., Any]

# ONNX Runtime's CPU arena grows by ~12.5 MB per 240x240 view in a batch; a case with many teams is run in
# chunks of this many views (16 segmentations) to bound memory. Per-view results do not depend on the batch.
MAX_VIEWS_PER_RUN = 48


class BatchGate:
    """The QC gate as the batch runs it: ``evaluate_case``, per-region evidence slices, consensus Dice, and
    (with ``evidence_dir``) the disagreement map written as ``<case>__<team>_evidence.nii.gz``.

    Called as ``gate(case, result, consensus=None, name="")``; returns the
    :class:`~dqe.models.qc.types.GateResult`.
    """

    def __init__(self, config: GateConfig | None = None, evidence_dir: str | Path | None = None) -> None:
        self.config = config or GateConfig()
        self.evidence_dir = Path(evidence_dir) if evidence_dir is not None else None

    def __call__(
        self, case: Any, result: Any, consensus: Mapping[str, float] | None = None, name: str = ""
    ) -> Any:
        gate = evaluate_case(case, result, self.config, consensus=consensus)
        gate, full = add_evidence(
            gate, case, self.config, consensus=consensus, full_map=self.evidence_dir is not None
        )
        if full is not None and self.evidence_dir is not None:
            write_evidence_map(case, full, self.evidence_dir, name or case.case_id)
        return gate


def load_gate(config: GateConfig | None = None, evidence_dir: str | Path | None = None) -> GateFn:
    """The QC gate (part of the domain core, so always present) as :class:`BatchGate`."""
    return BatchGate(config, evidence_dir)


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


def _gate(
    gate: GateFn, seg: PreparedSeg, result: ScoreResult, consensus: Mapping[str, float] | None
) -> tuple[Any, str | None]:
    try:
        name = safe_name(seg.job.case_id, seg.job.team)
        return gate(seg.case, result, consensus=consensus, name=name), None
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
    consensus = case_consensus(segs, results)
    verdicts: dict[int, tuple[Any, str | None]] = {}
    if gate is not None:
        todo = [i for i in results if segs[i].case is not None]
        if pool is not None:
            done = list(pool.map(lambda i: _gate(gate, segs[i], results[i], consensus.get(i)), todo))
        else:
            done = [_gate(gate, segs[i], results[i], consensus.get(i)) for i in todo]
        verdicts = dict(zip(todo, done, strict=True))
    records = []
    for i, seg in enumerate(segs):
        error = seg.error or (inferred.run_error if i not in results else None)
        gate_result, gate_note = verdicts.get(i, (None, None))
        rec = make_record(engine, seg, results.get(i), gate_result, gate_note, error, extra)
        rec.update(consensus_fields(consensus.get(i)))
        if seg.png is not None and gate_result is not None and seg.case is not None:  # images are on
            rec["_evidence_png"] = _evidence_png(seg, gate_result)
        records.append(rec)
        seg.case = None  # release the label volume as soon as possible
    return records


def _evidence_png(seg: PreparedSeg, gate_result: Any) -> bytes | None:
    """The report's evidence panels of a gated segmentation (``None`` without evidence slices)."""
    assert seg.case is not None
    try:
        images = {v.name: v for v in seg.case.images}
        return render_evidence(images, seg.case.labels, getattr(gate_result, "regions", []))
    except Exception:  # a picture must never cost a record
        logger.exception("evidence panels failed for %s / %s", seg.job.case_id, seg.job.team)
        return None


def case_consensus(segs: list[PreparedSeg], results: Mapping[int, Any]) -> dict[int, dict[str, float]]:
    """Per scored segmentation (index into ``segs``), Dice with the consensus of the other scored ones.

    Empty when fewer than three segmentations of the case were scored (or their labels were not kept).
    """
    labels: list[np.ndarray | None] = []
    for i, seg in enumerate(segs):
        labels.append(seg.case.labels if i in results and seg.case is not None else None)
    try:
        values = consensus_dice(labels)
    except ValueError as exc:  # teams on different grids: no consensus, the records say nothing about it
        logger.warning("no consensus for case %s: %s", segs[0].job.case_id if segs else "?", exc)
        return {}
    return {i: v for i, v in enumerate(values) if v is not None}


def consensus_fields(values: Mapping[str, float] | None) -> dict[str, float | None]:
    """The record's ``consensus_dice_<region>`` columns (``None`` without a consensus)."""
    return {f"consensus_dice_{r}": (None if values is None else float(values[r])) for r in REGIONS}


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
        rec.update(gate_fields(gate_result))
    if seg.metrics is not None:
        rec.update(seg.metrics)
    rec.update(extra or {})
    return rec


def _slices_text(slices: Any) -> str:
    return ", ".join(f"{s.axis} {s.index}" for s in slices)


def gate_fields(gate: Any) -> dict[str, Any]:
    """The per-region and conformal columns of a record from a gate result (``None``/"" where absent).

    ``gate_alpha``, ``gate_p_value``, ``gate_combination``; per region ``r``: ``verdict_r``, ``p_value_r``,
    ``predicted_dice_r`` with ``predicted_dice_r_low``/``_high``, ``evidence_r`` (``"axial 60, ..."``) and the
    structured ``evidence_slices`` (region -> list of ``{axis, index, strength}``; journal/JSON only).
    """
    out: dict[str, Any] = {
        "gate_alpha": getattr(gate, "alpha", None),
        "gate_p_value": getattr(gate, "p_value", None),
        "gate_combination": str(getattr(gate, "combination", "") or ""),
    }
    regions = {r.region: r for r in getattr(gate, "regions", [])}
    slices: dict[str, list[dict[str, Any]]] = {}
    for name in REGIONS:
        reg = regions.get(name)
        pd_ = getattr(reg, "predicted_dice", None)
        out[f"verdict_{name}"] = "" if reg is None else str(getattr(reg.verdict, "value", reg.verdict))
        out[f"p_value_{name}"] = None if reg is None else float(reg.p_value)
        out[f"predicted_dice_{name}"] = None if pd_ is None else float(pd_.dice)
        out[f"predicted_dice_{name}_low"] = None if pd_ is None else float(pd_.low)
        out[f"predicted_dice_{name}_high"] = None if pd_ is None else float(pd_.high)
        out[f"evidence_{name}"] = "" if reg is None else _slices_text(reg.evidence_slices)
        slices[name] = [] if reg is None else [s.to_dict() for s in reg.evidence_slices]
    out["evidence_slices"] = slices
    return out
