"""The QC gate: stars plus explainable plausibility checks, combined into one verdict.

Verdict rules (thresholds in :class:`GateConfig`, data behind them in :mod:`dqe.models.qc.config`):

* ``fail``: any check whose failure implies ``fail`` failed (tumour outside the brain, implausible extent,
  not FLAIR-hyperintense, misplaced or flipped labels, ET/necrosis inverted, distant islands that look
  like normal brain), or the segmentation is empty.
* ``review``: otherwise, any ``review`` check failed (including stars below ``star_threshold`` and views
  that disagree).
* ``pass``: nothing failed.

``gate_score`` ranks cases, higher = more plausible, and is consistent with the verdict: fail cases score
in [0, 1/3), review cases in [1/3, 2/3), pass cases in [2/3, 1). Within a band, half the position comes
from the stars (1-6 mapped to 0-1) and half from how many checks failed (none = top of the band).

The gate only reads the :class:`~dqe.service.engine.ScoreResult`; it never changes the stars.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dqe.models.qc.checks import FAIL, REVIEW, run_case_checks, stars, view_spread
from dqe.models.qc.checks.evidence import Evidence
from dqe.models.qc.config import GateConfig
from dqe.models.qc.context import Context
from dqe.models.qc.decision import COMBINATION, Calibration, Decision, decide, load_calibration
from dqe.models.qc.dicepred import predict_dice
from dqe.models.qc.regions import (
    CASE_FAMILIES,
    LATTICE_SCORES,
    SUPERSEDED,
    lattice_scores,
    region_evidence,
)
from dqe.models.qc.types import REGIONS, Check, GateResult, RegionResult, Verdict

if TYPE_CHECKING:
    from dqe.models.case import Case
    from dqe.models.result import ScoreResult

logger = logging.getLogger(__name__)

__all__ = [
    "GateConfig",
    "case_checks",
    "case_evidence",
    "consensus_evidence",
    "empty_segmentation_result",
    "evaluate_case",
    "verdict_of",
]

BAND = {Verdict.FAIL: 0.0, Verdict.REVIEW: 1.0 / 3.0, Verdict.PASS: 2.0 / 3.0}
EXIT_CODES = {Verdict.PASS: 0, Verdict.FAIL: 1, Verdict.REVIEW: 3}


def case_checks(case: Case, config: GateConfig | None = None) -> list[Check]:
    """The image/label plausibility checks of one case (no stars needed; no conformal rule)."""
    cfg = config or GateConfig()
    return run_case_checks(Context(case, cfg.step), cfg)


def case_evidence(case: Case, config: GateConfig | None = None) -> list[Evidence]:
    """Every conformal score of one case (what the calibration artifact stores per good case)."""
    cfg = config or GateConfig()
    ctx = Context(case, cfg.step)
    return region_evidence(ctx) + lattice_scores(run_case_checks(ctx, cfg))


def verdict_of(checks: list[Check]) -> Verdict:
    """``fail`` if a fail-severity check failed, else ``review`` if any review check failed, else ``pass``."""
    failed = [c for c in checks if not c.passed]
    if any(c.severity == FAIL for c in failed):
        return Verdict.FAIL
    if any(c.severity == REVIEW for c in failed):
        return Verdict.REVIEW
    return Verdict.PASS


def gate_score(verdict: Verdict, checks: list[Check], mean_stars: float | None) -> float:
    """Continuous plausibility in [0, 1), higher = more plausible, banded by verdict (see module doc)."""
    failed = [c for c in checks if not c.passed and c.severity in (FAIL, REVIEW)]
    weight = sum(2.0 if c.severity == FAIL else 1.0 for c in failed)
    clean = 1.0 / (1.0 + weight)  # 1 with nothing failed, -> 0 with many
    stars_norm = 0.0 if mean_stars is None else min(max((mean_stars - 1.0) / 5.0, 0.0), 1.0)
    within = 0.5 * stars_norm + 0.5 * clean
    return BAND[verdict] + min(within, 0.999) / 3.0


def _reasons(checks: list[Check]) -> list[str]:
    failed = [c for c in checks if not c.passed and c.severity in (FAIL, REVIEW)]
    failed.sort(key=lambda c: 0 if c.severity == FAIL else 1)
    return [f"{c.severity}: {c.name}: {c.message}" for c in failed]


def calibration_for(cfg: GateConfig) -> Calibration | None:
    """The calibration set ``cfg`` selects (shipped file or ``calibration_path``, minus excluded sites/cases)."""
    cal = load_calibration(cfg.calibration_path or None)
    if cal is not None and (cfg.calibration_exclude_sites or cfg.calibration_exclude_cases):
        cal = cal.without(cfg.calibration_exclude_sites, cfg.calibration_exclude_cases)
    return cal


def consensus_evidence(consensus: Mapping[str, float]) -> list[Evidence]:
    """Per region, disagreement with the consensus of the other segmentations of the case (1 - Dice)."""
    out = []
    for region, dice in consensus.items():
        if region not in REGIONS or not math.isfinite(float(dice)):
            continue
        out.append(
            Evidence(
                "consensus",
                region,
                "consensus",
                1.0 - float(dice),
                "1 - Dice",
                f"{region.upper()} Dice with the consensus of the other segmentations of this case: {float(dice):.2f}",
                "this segmentation disagrees with the others of the same case",
                floor=0.01,
            )
        )
    return out


def _judged(
    checks: list[Check], ev: list[Evidence], decision: Decision | None, alpha: float, flagged: bool
) -> list[Check]:
    """Checks with region/family/p-value filled; the review thresholds of the conformal scores are
    replaced by the conformal rule (their fail thresholds stay). A conformal check counts as failed only
    when the combined rule flagged the case and it carries the evidence: its own p-value <= ``alpha``, or
    it has the largest z of the case."""
    p = {} if decision is None else decision.check_p
    z = {} if decision is None else decision.z
    top = max(z, key=lambda k: z[k]) if z else ""
    carries = {k for k, v in p.items() if v <= alpha} | ({top} if top else set())
    out = []
    for c in checks:
        spec = LATTICE_SCORES.get(c.name)
        if c.name in SUPERSEDED and decision is not None and c.severity == REVIEW and not c.passed:
            note = f"{c.message} (judged by {SUPERSEDED[c.name]})"
            out.append(replace(c, passed=True, message=note, region="et", family="presence"))
            continue
        if spec is None:
            out.append(replace(c, family=c.family or CASE_FAMILIES.get(c.name, "")))
            continue
        region, family, _ = spec
        key = f"{region}.{c.name}"
        judged = decision is not None and key in p
        # a review-level lattice check is decided by the conformal rule; fail thresholds still apply
        passed = not (flagged and key in carries) if judged and c.severity == REVIEW else c.passed
        out.append(replace(c, passed=passed, region=region, family=family, p_value=p.get(key)))
    for e in ev:
        pv = p.get(e.key)
        thr = math.inf if decision is None else decision.thresholds.get(e.key, math.inf)
        ok = not (flagged and e.key in carries)
        zk = z.get(e.key)
        ztext = "" if zk is None or not math.isfinite(zk) else f" (z {zk:+.1f} against good segmentations)"
        text = e.text + ztext if ok else f"{e.text}{ztext}; {e.problem}"
        out.append(
            Check(e.name, float(e.value), float(thr), ok, REVIEW, text, e.unit, e.region, e.family, pv)
        )
    return out


def _regions(
    checks: list[Check],
    ev: list[Evidence],
    decision: Decision | None,
    flagged: bool,
    alpha: float,
    consensus: Mapping[str, float] | None,
    predicted: dict[str, Any],
) -> list[RegionResult]:
    rp = {} if decision is None else decision.region_p
    marked = {r for r in REGIONS if rp.get(r, 1.0) <= alpha}
    if flagged and not marked and rp:
        marked = {min(rp, key=lambda r: rp[r])}
    out = []
    for region in REGIONS:
        own = [c for c in checks if c.region == region]
        if any(not c.passed and c.severity == FAIL for c in own):
            verdict = Verdict.FAIL
        elif flagged and region in marked:
            verdict = Verdict.REVIEW
        else:
            verdict = Verdict.PASS
        # the slices of the region's most anomalous score first (largest z against good segmentations)
        zs = {} if decision is None else decision.z
        mine = sorted((e for e in ev if e.region == region), key=lambda e: -zs.get(e.key, -math.inf))
        slices = [s for e in mine for s in e.slices]
        out.append(
            RegionResult(
                region=region,
                verdict=verdict,
                p_value=float(rp.get(region, 1.0)),
                checks=own,
                predicted_dice=predicted.get(region),
                evidence_slices=list(slices[:3]),
                consensus_dice=None if consensus is None else consensus.get(region),
            )
        )
    return out


def evaluate_case(
    case: Case,
    result: ScoreResult,
    config: GateConfig | None = None,
    *,
    consensus: Mapping[str, float] | None = None,
    context: Context | None = None,
) -> GateResult:
    """The gate's verdict for a scored case.

    Args:
        case: the validated case that was scored.
        result: its :class:`~dqe.service.engine.ScoreResult` (read only; the stars are never changed).
        config: thresholds, ``alpha`` and the calibration set; defaults in :mod:`dqe.models.qc.config`.
        consensus: per region (``wt``/``tc``/``et``), Dice with the consensus of the *other* segmentations
            of the same case (batch scoring); a gate input judged like every other score.
        context: the case's check context (brain mask, normal-brain statistics) when the caller already built
            one with ``config.step`` for this case, so that the evidence map reuses it; built here otherwise.

    Returns:
        A :class:`GateResult`: verdict (``fail`` from the gross-failure rules, ``review`` from the other
        rules or when the combined conformal p-value is <= ``alpha``), ``gate_score``, reasons, every
        check (with region, family and p-value where conformal), per-region results with predicted Dice,
        ``alpha``, the combined ``p_value``, the ``combination`` rule and the calibration summary.
    """
    cfg = config or GateConfig()
    t0 = time.perf_counter()
    ctx = context if context is not None and context.case is case else Context(case, cfg.step)
    base = run_case_checks(ctx, cfg)
    ev = region_evidence(ctx) + lattice_scores(base)
    if consensus:
        ev += consensus_evidence(consensus)
    cal = calibration_for(cfg)
    decision = decide(ev, cal, cfg.alpha) if cal is not None and cal.n else None
    p_value = None if decision is None else decision.p_value
    flagged = p_value is not None and p_value <= cfg.alpha
    own = [e for e in ev if e.name not in LATTICE_SCORES]
    checks = _judged(base, own, decision, cfg.alpha, flagged)
    spread = view_spread(dict(result.views), cfg)
    if spread is not None:
        checks.append(replace(spread, family="scorer"))
    checks.append(replace(stars(float(result.mean_stars), cfg), family="scorer"))
    verdict = verdict_of(checks)
    if flagged and verdict == Verdict.PASS:
        verdict = Verdict.REVIEW
    predicted = predict_dice(ev, float(result.mean_stars), cal) if cal is not None else {}
    regions = _regions(checks, ev, decision, flagged, cfg.alpha, consensus, predicted)
    reasons = _reasons(checks)
    if flagged:
        reasons.append(
            f"review: conformal: combined p = {p_value:.3f} <= alpha {cfg.alpha:g} "
            f"(regions: {', '.join(f'{r.region} p={r.p_value:.3f}' for r in regions)})"
        )
    elapsed = (time.perf_counter() - t0) * 1e3
    logger.debug("gate %s: %s in %.1f ms", case.case_id, verdict.value, elapsed)
    calib: dict[str, Any] = {} if cal is None else cal.summary()
    if cal is None:
        calib["warning"] = (
            "no gate calibration found (the package's gate_calibration.json is missing): the conformal rule "
            "did not run; only the threshold rules decided"
        )
        logger.warning("gate %s: %s", case.case_id, calib["warning"])
    if cal is not None and cfg.alpha < cal.smallest_alpha:
        calib["warning"] = (
            f"alpha {cfg.alpha:g} is below the smallest level this calibration supports "
            f"({cal.smallest_alpha:.3f} = 1/(n+1)); the conformal rule can never flag"
        )
    return GateResult(
        verdict=verdict,
        gate_score=gate_score(verdict, checks, float(result.mean_stars)),
        reasons=reasons,
        checks=checks,
        star_threshold=cfg.star_threshold,
        elapsed_ms=elapsed,
        alpha=cfg.alpha,
        p_value=p_value,
        combination=COMBINATION if decision is not None else "",
        regions=regions,
        calibration=calib,
    )


def empty_segmentation_result(message: str, config: GateConfig | None = None) -> GateResult:
    """The verdict for a segmentation without any tumour label (which cannot be scored): ``fail``."""
    cfg = config or GateConfig()
    check = Check(
        "tumour_volume", 0.0, cfg.volume_min_ml, False, FAIL, f"empty segmentation: {message}", "ml"
    )
    return GateResult(
        verdict=Verdict.FAIL,
        gate_score=0.0,
        reasons=[f"fail: tumour_volume: {check.message}"],
        checks=[check],
        star_threshold=cfg.star_threshold,
        elapsed_ms=0.0,
    )
