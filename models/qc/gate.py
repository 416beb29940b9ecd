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

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from dqe.models.qc.checks import FAIL, REVIEW, run_case_checks, stars, view_spread
from dqe.models.qc.config import GateConfig
from dqe.models.qc.context import Context
from dqe.models.qc.types import Check, GateResult, Verdict

if TYPE_CHECKING:
    from dqe.models.case import Case
    from dqe.models.result import ScoreResult

logger = logging.getLogger(__name__)

__all__ = ["GateConfig", "case_checks", "empty_segmentation_result", "evaluate_case", "verdict_of"]

BAND = {Verdict.FAIL: 0.0, Verdict.REVIEW: 1.0 / 3.0, Verdict.PASS: 2.0 / 3.0}
EXIT_CODES = {Verdict.PASS: 0, Verdict.FAIL: 1, Verdict.REVIEW: 3}


def case_checks(case: Case, config: GateConfig | None = None) -> list[Check]:
    """The image/label plausibility checks of one case (no stars needed)."""
    cfg = config or GateConfig()
    return run_case_checks(Context(case, cfg.step), cfg)


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


def evaluate_case(
    case: Case,
    result: ScoreResult,
    config: GateConfig | None = None,
    *,
    consensus: Mapping[str, float] | None = None,
) -> GateResult:
    """The gate's verdict for a scored case.

    Args:
        case: the validated case that was scored.
        result: its :class:`~dqe.service.engine.ScoreResult` (read only; the stars are never changed).
        config: thresholds; defaults documented in :mod:`dqe.models.qc.config`.
        consensus: per region (``wt``/``tc``/``et``), Dice with the consensus of the other segmentations of
            the same case (:mod:`dqe.models.qc.consensus`; batch only), attached to the region results.

    Returns:
        A :class:`GateResult` with verdict, ``gate_score`` (higher = more plausible), the reasons (failed
        checks, fail first) and every evaluated check.
    """
    cfg = config or GateConfig()
    t0 = time.perf_counter()
    checks = case_checks(case, cfg)
    spread = view_spread(dict(result.views), cfg)
    if spread is not None:
        checks.append(spread)
    checks.append(stars(float(result.mean_stars), cfg))
    verdict = verdict_of(checks)
    elapsed = (time.perf_counter() - t0) * 1e3
    logger.debug("gate %s: %s in %.1f ms", case.case_id, verdict.value, elapsed)
    gate = GateResult(
        verdict=verdict,
        gate_score=gate_score(verdict, checks, float(result.mean_stars)),
        reasons=_reasons(checks),
        checks=checks,
        star_threshold=cfg.star_threshold,
        elapsed_ms=elapsed,
    )
    if consensus and gate.regions:
        regions = [dataclasses.replace(r, consensus_dice=consensus.get(r.region)) for r in gate.regions]
        gate = dataclasses.replace(gate, regions=regions)
    return gate


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
