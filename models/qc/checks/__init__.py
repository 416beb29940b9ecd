"""The plausibility checks, one module per family: each a small function of the shared :class:`~dqe.models.qc.context.Context`.

Every check returns a :class:`~dqe.models.qc.types.Check` (value, threshold, pass/fail, the severity a
failure implies, one sentence for a radiologist) or ``None`` when it cannot be evaluated on this case
(e.g. enhancement checks without enhancing tumour). Thresholds and the data behind them are in
:mod:`dqe.models.qc.config`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dqe.models.qc.checks.common import FAIL, REVIEW, graded
from dqe.models.qc.checks.extent import tumour_brain_fraction, tumour_outside_brain, tumour_volume
from dqe.models.qc.checks.fragments import fragmentation
from dqe.models.qc.checks.geometry import affines, boundary_alignment, grid, orientation
from dqe.models.qc.checks.intensity import enhancement, flair_hyperintensity, undersegmentation
from dqe.models.qc.checks.labels import (
    core_outside_lesion,
    enclosed_holes,
    label_convention,
    missing_compartments,
)
from dqe.models.qc.checks.scorer import stars, view_spread
from dqe.models.qc.config import GateConfig
from dqe.models.qc.context import Context
from dqe.models.qc.types import Check

# Gross, whole-lesion problems first: the gate lists reasons of one severity in this order.
CASE_CHECKS: tuple[Callable[[Context, GateConfig], Any], ...] = (
    tumour_outside_brain,
    tumour_brain_fraction,
    tumour_volume,
    orientation,
    boundary_alignment,
    flair_hyperintensity,
    undersegmentation,
    fragmentation,
    label_convention,
    missing_compartments,
    enclosed_holes,
    core_outside_lesion,
    enhancement,
    grid,
    affines,
)


def run_case_checks(ctx: Context, cfg: GateConfig) -> list[Check]:
    """Every image/label check, in a stable order (inapplicable ones omitted)."""
    out: list[Check] = []
    for fn in CASE_CHECKS:
        res = fn(ctx, cfg)
        if res is None:
            continue
        if isinstance(res, Check):
            out.append(res)
        else:
            out.extend(res)
    return out


__all__ = [
    "CASE_CHECKS",
    "FAIL",
    "REVIEW",
    "affines",
    "boundary_alignment",
    "core_outside_lesion",
    "enclosed_holes",
    "enhancement",
    "flair_hyperintensity",
    "fragmentation",
    "graded",
    "grid",
    "label_convention",
    "missing_compartments",
    "orientation",
    "run_case_checks",
    "stars",
    "tumour_brain_fraction",
    "tumour_outside_brain",
    "tumour_volume",
    "undersegmentation",
    "view_spread",
]
