"""The gate with what a person looks at: per-region results carrying evidence slices and consensus Dice.

:func:`gate_with_evidence` runs :func:`~dqe.models.qc.gate.evaluate_case` and then fills, per region
(``wt``, ``tc``, ``et``), the slices where segmentation and images disagree most
(:mod:`dqe.models.qc.evidence`) and, in a batch, the Dice with the consensus of the other segmentations
(:mod:`dqe.models.qc.consensus`). Neither changes the verdict: the verdict is the gate's.

A region result the gate did not produce itself is built from the gate's checks of that region (verdict by
:func:`~dqe.models.qc.gate.verdict_of`; p-value Bonferroni ``min(1, k * min p)`` over its ``k`` checks with a
p-value, 1.0 when none has one).

Slices from the gate's own evidence (the plane of a flat cut, the slice with the most unlabelled enhancement,
the largest cross-section of a region whose border fit is in question) are kept: they point at what the
failed check measured. The disagreement map fills the regions the gate left without slices, and is computed
only then or when the full map is asked for (``--evidence DIR``), so a gated call pays for it only when needed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from dqe.models.qc.config import GateConfig
from dqe.models.qc.context import Context
from dqe.models.qc.evidence import EvidenceConfig, EvidenceMap, evidence_map, evidence_slices
from dqe.models.qc.gate import evaluate_case, verdict_of
from dqe.models.qc.types import REGIONS, EvidenceSlice, GateResult, RegionResult

if TYPE_CHECKING:
    from dqe.models.case import Case
    from dqe.models.result import ScoreResult


def _new_region(gate: GateResult, region: str) -> RegionResult:
    checks = [c for c in gate.checks if c.region == region]
    ps = [c.p_value for c in checks if c.p_value is not None]
    p = min(1.0, len(ps) * min(ps)) if ps else 1.0
    return RegionResult(region=region, verdict=verdict_of(checks), p_value=p, checks=checks)


def with_regions(
    gate: GateResult,
    consensus: Mapping[str, float] | None = None,
    slices: Mapping[str, Sequence[EvidenceSlice]] | None = None,
) -> GateResult:
    """``gate`` with one :class:`RegionResult` per region, carrying ``consensus`` and ``slices`` where given."""
    have = {r.region: r for r in gate.regions}
    regions = []
    for name in REGIONS:
        reg = have.get(name) or _new_region(gate, name)
        if consensus is not None and name in consensus:
            reg = dataclasses.replace(reg, consensus_dice=float(consensus[name]))
        if slices is not None and name in slices:
            reg = dataclasses.replace(reg, evidence_slices=list(slices[name]))
        regions.append(reg)
    regions += [r for r in gate.regions if r.region not in REGIONS]
    return dataclasses.replace(gate, regions=regions)


def add_evidence(
    gate: GateResult,
    case: Case,
    config: GateConfig | None = None,
    *,
    consensus: Mapping[str, float] | None = None,
    full_map: bool = False,
    evidence: EvidenceConfig | None = None,
    context: Context | None = None,
) -> tuple[GateResult, EvidenceMap | None]:
    """``gate`` with per-region evidence slices (and consensus Dice when given); see :func:`gate_with_evidence`.

    ``context``: the check context the gate already built for this case (its brain mask and normal-brain
    statistics are most of the cost, ~35-50 ms on a BraTS exam); a new one is built when ``None``.
    """
    cfg = config or GateConfig()
    t0 = time.perf_counter()
    have = {r.region for r in gate.regions if r.evidence_slices}
    missing = [name for name in REGIONS if name not in have]
    slices: dict[str, Sequence[EvidenceSlice]] = {}
    full = None
    if missing or full_map:
        ctx = context if context is not None and context.case is case else Context(case, cfg.step)
        if missing:
            found = evidence_slices(evidence_map(ctx, cfg=evidence), evidence)
            slices = {name: found[name] for name in missing if name in found}
        full = evidence_map(ctx, full_resolution=True, cfg=evidence) if full_map else None
    gate = with_regions(gate, consensus, slices)
    gate = dataclasses.replace(gate, elapsed_ms=gate.elapsed_ms + (time.perf_counter() - t0) * 1e3)
    return gate, full


def gate_with_evidence(
    case: Case,
    result: ScoreResult,
    config: GateConfig | None = None,
    *,
    consensus: Mapping[str, float] | None = None,
    full_map: bool = False,
    evidence: EvidenceConfig | None = None,
) -> tuple[GateResult, EvidenceMap | None]:
    """The gate's verdict with per-region evidence slices (and consensus Dice when given).

    Args:
        case, result, config: as :func:`~dqe.models.qc.gate.evaluate_case`.
        consensus: per region, Dice with the consensus of the other segmentations of the case.
        full_map: also compute the full-resolution disagreement map (for ``--evidence DIR``).
        evidence: thresholds of the map.

    Returns:
        The gate result (``elapsed_ms`` includes the evidence) and the full-resolution map when asked for
        (``None`` otherwise or when the exam has no normal-brain statistics).
    """
    ctx = Context(case, (config or GateConfig()).step)  # one brain mask and normal-brain statistics for both
    gate = evaluate_case(case, result, config, consensus=consensus, context=ctx)
    return add_evidence(
        gate, case, config, consensus=consensus, full_map=full_map, evidence=evidence, context=ctx
    )
