"""Re-deriving the gate's thresholds from good segmentations only, for leave-one-exam-out evaluation.

The defaults in :mod:`dqe.models.qc.config` were placed by hand with all 18 shared good segmentations (4
exams) in view. A leave-one-exam-out (LOEO) evaluation must not let the held-out exam decide its own
thresholds, so each fold re-derives them from the *good* segmentations of the other exams with one rule
(failures are never used, so no failure mechanism can leak into the thresholds):

``loosen`` (the default)
    a threshold stays at its frozen default unless a training-good segmentation would cross it; then it
    moves just beyond the worst training-good value by a margin of 10 % of the threshold's scale (the gap
    between its review and fail thresholds, or the review threshold's magnitude when it has no fail
    threshold; 0.05 units at least), and the fail threshold moves by the same amount. Thresholds only
    ever loosen: with so few good cases, tightening to them would fit noise.
``data``
    the defaults' *positions* are ignored: the review threshold is the worst training-good value plus the
    same margin, the fail threshold keeps the default's distance from the review threshold. This shows
    what a purely data-derived gate would do (and how much the hand-placed margins matter).

Checks that are rules rather than thresholds (label convention, missing compartments, grid, affines, the
count of distant islands) keep their defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace

from dqe.models.qc.config import GateConfig
from dqe.models.qc.types import Check

logger = logging.getLogger(__name__)

RULES = ("loosen", "data")
MARGIN = 0.10
MIN_MARGIN = 0.05


@dataclass(frozen=True)
class Threshold:
    """How one check's value is compared with its :class:`GateConfig` fields."""

    check: str
    review: str
    fail: str | None
    higher_is_worse: bool


THRESHOLDS: tuple[Threshold, ...] = (
    Threshold("tumour_outside_brain", "outside_brain_review", "outside_brain_fail", True),
    Threshold("tumour_brain_fraction", "brain_fraction_review", "brain_fraction_fail", True),
    Threshold("tumour_volume", "volume_review_ml", "volume_fail_ml", True),
    Threshold("distant_fragment_share", "fragment_share_review", None, True),
    Threshold("distant_fragments_flair", "fragment_flair_fail", None, False),
    Threshold("enclosed_holes", "holes_review", None, True),
    Threshold("core_outside_lesion", "core_outside_review", None, True),
    Threshold("flair_hyperintensity", "flair_review", "flair_fail", False),
    Threshold("undersegmentation", "undersegmentation_review", "undersegmentation_fail", True),
    Threshold("et_enhancement", "et_enhancement_review", None, False),
    Threshold("et_vs_necrosis", "et_vs_necrosis_review", "et_vs_necrosis_fail", False),
    Threshold("unlabelled_enhancement", "unlabelled_enhancement_review_ml", None, True),
    Threshold("boundary_alignment", "alignment_review", "alignment_fail", False),
    Threshold("orientation", "orientation_fail", None, True),
    Threshold("view_disagreement", "view_spread_review", None, True),
    Threshold("stars", "star_threshold", None, False),
)


def _margin(spec: Threshold, base: GateConfig) -> float:
    review = float(getattr(base, spec.review))
    scale = abs(float(getattr(base, spec.fail)) - review) if spec.fail else abs(review)
    return max(MARGIN * scale, MIN_MARGIN)


def derive_config(
    good_checks: Iterable[Sequence[Check]], rule: str = "loosen", base: GateConfig | None = None
) -> tuple[GateConfig, dict[str, dict[str, float]]]:
    """Thresholds from the checks of good segmentations.

    Args:
        good_checks: for each good segmentation, the checks the gate evaluated on it (any thresholds; only
            ``name`` and ``value`` are read).
        rule: ``loosen`` or ``data`` (module docstring).
        base: the frozen defaults (``GateConfig()``).

    Returns:
        The derived config and, for each threshold field that changed, ``{"default": d, "derived": v}``.

    Raises:
        ValueError: unknown rule.
    """
    if rule not in RULES:
        raise ValueError(f"calibration rule {rule!r} is not one of {RULES}")
    cfg = base or GateConfig()
    values: dict[str, list[float]] = {}
    for checks in good_checks:
        for c in checks:
            values.setdefault(c.name, []).append(float(c.value))
    updates: dict[str, float] = {}
    for spec in THRESHOLDS:
        seen = values.get(spec.check)
        if not seen:
            continue
        worst = max(seen) if spec.higher_is_worse else min(seen)
        sign = 1.0 if spec.higher_is_worse else -1.0
        default = float(getattr(cfg, spec.review))
        candidate = worst + sign * _margin(spec, cfg)
        if rule == "loosen":
            crosses = worst > default if spec.higher_is_worse else worst < default
            if not crosses:
                continue
        if candidate == default:
            continue
        updates[spec.review] = candidate
        if spec.fail:
            updates[spec.fail] = float(getattr(cfg, spec.fail)) + (candidate - default)
    changed = {
        name: {"default": float(getattr(cfg, name)), "derived": value}
        for name, value in updates.items()
        if value != float(getattr(cfg, name))
    }
    derived: GateConfig = replace(cfg, **updates)  # type: ignore[arg-type]  # every key is a float field
    return derived, changed


def fold_configs(
    good_checks_by_exam: Mapping[str, Sequence[Sequence[Check]]],
    rule: str = "loosen",
    base: GateConfig | None = None,
) -> dict[str, tuple[GateConfig, dict[str, dict[str, float]]]]:
    """For each exam, the config derived from the good segmentations of every *other* exam."""
    out = {}
    for exam in good_checks_by_exam:
        train = [c for other, lists in good_checks_by_exam.items() if other != exam for c in lists]
        out[exam] = derive_config(train, rule, base)
        if out[exam][1]:
            logger.info("fold %s: thresholds changed %s", exam, out[exam][1])
    return out


def threshold_fields() -> tuple[str, ...]:
    """The :class:`GateConfig` fields a rule may change (for reports)."""
    names = {f.name for f in fields(GateConfig)}
    out: list[str] = []
    for spec in THRESHOLDS:
        out.extend(n for n in (spec.review, spec.fail) if n and n in names)
    return tuple(out)
