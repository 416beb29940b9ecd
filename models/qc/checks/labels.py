"""Label-logic checks: label convention, missing compartments, enclosed holes, core outside the lesion."""

from __future__ import annotations

import logging

import numpy as np

from dqe.models.qc.checks.common import REVIEW, graded
from dqe.models.qc.config import GateConfig
from dqe.models.qc.context import ENHANCING, NECROSIS, Context
from dqe.models.qc.morphology import fill_holes
from dqe.models.qc.types import Check

logger = logging.getLogger(__name__)


def label_convention(ctx: Context, cfg: GateConfig) -> Check:
    """Label set and convention: BraTS 2023 (1/2/3) or legacy (1/2/4), never both."""
    c = ctx.case.counts
    has3 = c.size > 3 and c[3] > 0
    has4 = c.size > 4 and c[4] > 0
    present = [int(i) for i in np.nonzero(c)[0] if i > 0]
    if has3 and has4:
        return Check(
            "label_convention",
            1.0,
            0.0,
            False,
            REVIEW,
            f"labels {present} mix the BraTS 2023 (3) and legacy (4) codes for enhancing tumour",
            "flag",
        )
    convention = "legacy BraTS (<= 2022, ET = 4)" if has4 else "BraTS 2023 (ET = 3)"
    return Check(
        "label_convention", 0.0, 0.0, True, REVIEW, f"labels {present}, {convention} convention", "flag"
    )


def missing_compartments(ctx: Context, cfg: GateConfig) -> Check:
    """Which of necrosis, edema and enhancing tumour are absent; a glioma without edema/FLAIR abnormality
    (label 2) needs a look, a missing core or ET alone does not (low-grade gliomas)."""
    ml = ctx.counts_ml
    missing = [
        name
        for name, key in (("necrosis", "ncr"), ("edema", "ed"), ("enhancing tumour", "et"))
        if ml[key] <= 0
    ]
    if "edema" in missing and ml["ncr"] + ml["et"] > 0:
        return Check(
            "missing_compartments",
            float(len(missing)),
            0.0,
            False,
            REVIEW,
            f"no edema / FLAIR abnormality (label 2) is labelled around the tumour core; missing: {', '.join(missing)}",
            "count",
        )
    text = f"missing: {', '.join(missing)}" if missing else "necrosis, edema and enhancing tumour all present"
    return Check("missing_compartments", float(len(missing)), 0.0, True, REVIEW, text, "count")


def enclosed_holes(ctx: Context, cfg: GateConfig) -> Check | None:
    """Unlabelled voxels completely enclosed by tumour, as a fraction of the whole tumour."""
    if ctx.wt_count == 0:
        return None
    filled = fill_holes(ctx.wt_crop)
    frac = np.count_nonzero(filled & ~ctx.wt_crop) / ctx.wt_count
    return graded(
        "enclosed_holes",
        frac,
        cfg.holes_review,
        None,
        "fraction",
        lambda v: f"unlabelled holes inside the tumour amount to {100 * v:.1f}% of its volume",
        "tumour tissue is missing from the inside of the lesion",
    )


def core_outside_lesion(ctx: Context, cfg: GateConfig) -> Check | None:
    """Fraction of tumour core (necrosis + enhancing) that is not part of the main lesion."""
    lab = ctx.labels[ctx.crop]
    core = (lab == NECROSIS) | (lab == ENHANCING)
    n_core = int(np.count_nonzero(core))
    if n_core == 0:
        return None
    frac = np.count_nonzero(core & ~ctx.main_lesion) / n_core
    return graded(
        "core_outside_lesion",
        frac,
        cfg.core_outside_review,
        None,
        "fraction",
        lambda v: f"{100 * v:.1f}% of the necrosis/enhancing tumour lies outside the main lesion",
        "tumour core labelled away from the lesion",
    )
