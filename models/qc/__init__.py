"""The QC gate: explainable plausibility checks plus the stars, combined into a verdict."""

from dqe.models.qc.types import Check, GateResult, Verdict

__all__ = ["Check", "GateResult", "Verdict"]
