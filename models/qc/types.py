"""Result types of the QC gate, shared by the library result, the gRPC response and the CLI."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class Verdict(str, Enum):
    """What a pipeline should do with a segmentation."""

    PASS = "pass"
    REVIEW = "review"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    """One plausibility check.

    Attributes:
        name: stable identifier, e.g. ``tumour_outside_brain``.
        value: the measured value (units in ``unit``).
        threshold: the threshold the value was compared with.
        passed: whether the check passed.
        severity: what a failed check implies: ``fail`` or ``review`` (``info`` never changes the verdict).
        message: one sentence a radiologist understands.
        unit: unit of ``value`` and ``threshold`` (``fraction``, ``ml``, ``count``, ``stars``, ...).
        region: ``wt``, ``tc`` or ``et`` for a per-region check (:data:`REGIONS`); ``""`` for the whole case.
        family: the fault family the check looks for (``boundary_fit``, ``label_semantics``, ``resampling``,
            ``flat_cut``, ``presence``, ``geometry``, ``intensity``, ``extent``, ``consensus``, ...).
        p_value: conformal p-value of the check's score against the calibration set of good segmentations
            (small = unlike any good one); ``None`` for checks outside the conformal rule.
    """

    name: str
    value: float
    threshold: float
    passed: bool
    severity: str
    message: str
    unit: str = ""
    region: str = ""
    family: str = ""
    p_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


REGIONS = ("wt", "tc", "et")
"""BraTS evaluation regions: whole tumour (1+2+3), tumour core (1+3), enhancing tumour (3)."""


@dataclass(frozen=True)
class PredictedDice:
    """A predicted Dice of one region against an (unknown) expert segmentation, with a conformal interval.

    ``low``/``high`` bound the true Dice with probability ``coverage`` (split-conformal, exchangeability with
    the calibration faults assumed).
    """

    region: str
    dice: float
    low: float
    high: float
    coverage: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvidenceSlice:
    """A slice where the evidence against a region is strongest: ``axis`` in ``axial|coronal|sagittal``,
    ``index`` the voxel index along that array axis (axial = axis 2, coronal = 1, sagittal = 0)."""

    axis: str
    index: int
    strength: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RegionResult:
    """The gate's view of one region (``wt``, ``tc``, ``et``).

    Attributes:
        region: one of :data:`REGIONS`.
        verdict: the region's own verdict (the case's verdict is the worst of them and the case-level checks).
        p_value: combined conformal p-value of the region's checks (1.0 when none ran).
        checks: the region's checks (each with ``region`` set).
        predicted_dice: predicted Dice with interval, when a predictor is configured.
        evidence_slices: where the evidence is strongest, strongest first.
        consensus_dice: Dice with the consensus of the *other* segmentations of the same case (batch only).
    """

    region: str
    verdict: Verdict
    p_value: float = 1.0
    checks: list[Check] = field(default_factory=list)
    predicted_dice: PredictedDice | None = None
    evidence_slices: list[EvidenceSlice] = field(default_factory=list)
    consensus_dice: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "verdict": self.verdict.value,
            "p_value": self.p_value,
            "checks": [c.to_dict() for c in self.checks],
            "predicted_dice": None if self.predicted_dice is None else self.predicted_dice.to_dict(),
            "evidence_slices": [e.to_dict() for e in self.evidence_slices],
            "consensus_dice": self.consensus_dice,
        }


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict, a continuous score for ranking (higher = more plausible) and its reasons."""

    verdict: Verdict
    gate_score: float
    reasons: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    star_threshold: float = 0.0
    elapsed_ms: float = 0.0
    alpha: float | None = None
    p_value: float | None = None
    combination: str = ""
    regions: list[RegionResult] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "gate_score": self.gate_score,
            "reasons": list(self.reasons),
            "checks": [c.to_dict() for c in self.checks],
            "star_threshold": self.star_threshold,
            "elapsed_ms": round(self.elapsed_ms, 3),
            "alpha": self.alpha,
            "p_value": self.p_value,
            "combination": self.combination,
            "regions": [r.to_dict() for r in self.regions],
            "calibration": dict(self.calibration),
        }
