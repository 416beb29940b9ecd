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
    """

    name: str
    value: float
    threshold: float
    passed: bool
    severity: str
    message: str
    unit: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict, a continuous score for ranking (higher = more plausible) and its reasons."""

    verdict: Verdict
    gate_score: float
    reasons: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    star_threshold: float = 0.0
    elapsed_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "gate_score": self.gate_score,
            "reasons": list(self.reasons),
            "checks": [c.to_dict() for c in self.checks],
            "star_threshold": self.star_threshold,
            "elapsed_ms": round(self.elapsed_ms, 3),
        }
