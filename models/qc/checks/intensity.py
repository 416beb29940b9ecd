"""Intensity checks: FLAIR hyperintensity, under-segmentation, enhancement of the enhancing tumour."""

from __future__ import annotations

import logging

import numpy as np

from dqe.models.qc.checks.common import graded
from dqe.models.qc.config import GateConfig
from dqe.models.qc.context import ENHANCING, NAB_MARGIN, NECROSIS, Context
from dqe.models.qc.types import Check

logger = logging.getLogger(__name__)


def flair_hyperintensity(ctx: Context, cfg: GateConfig) -> Check | None:
    """T2/FLAIR hyperintensity of the whole tumour vs normal-appearing brain (robust z, median).

    The BraTS protocol delineates the whole tumour as the abnormality on T2 *and* FLAIR; the value is the
    larger of the two medians. Some sites' FLAIR barely shows it: 2D FLAIR with thick slices and weak fluid
    suppression (the 2013 cohort: ``Brats18_2013_11_1``, whole tumour +0.6 SD on FLAIR, +1.4 SD on T2)
    -- the abnormality is still plainly there on T2, so one weak sequence is not evidence of misplaced
    labels; labels on normal brain are normal on both.
    """
    sel = ctx.wt_crop & ctx.brain_crop
    if ctx.stats is None or np.count_nonzero(sel) < 3:
        return None
    flair = float(np.median(ctx.z_crop("flair", sel)))
    t2 = float(np.median(ctx.z_crop("t2", sel)))
    return graded(
        "flair_hyperintensity",
        max(flair, t2),
        cfg.flair_review,
        cfg.flair_fail,
        "z",
        lambda v: (
            f"the whole tumour is {flair:+.1f} SD (FLAIR) and {t2:+.1f} SD (T2) from normal-appearing brain "
            "(median)"
        ),
        "edema and tumour are T2/FLAIR-hyperintense, so the labels cover normal brain (misplaced or "
        "over-segmented)",
        higher_is_worse=False,
    )


def undersegmentation(ctx: Context, cfg: GateConfig) -> Check | None:
    """Fraction of the band just outside the tumour border that is FLAIR-hyperintense like the lesion
    (above half the lesion's median FLAIR excess over normal brain): the abnormality goes on."""
    inside = ctx.wt_crop & ctx.brain_crop
    ring = ctx.ring_crop
    if ctx.stats is None or np.count_nonzero(inside) < 3 or np.count_nonzero(ring) < 3:
        return None
    lesion = float(np.median(ctx.z_crop("flair", inside)))
    if lesion < cfg.flair_review:
        return None  # the labels are not FLAIR-hyperintense: the FLAIR check speaks for this case
    frac = float(np.mean(ctx.z_crop("flair", ring) > 0.5 * lesion))
    mm = NAB_MARGIN * float(ctx.spacing_mm.min())
    return graded(
        "undersegmentation",
        frac,
        cfg.undersegmentation_review,
        cfg.undersegmentation_fail,
        "fraction",
        lambda v: (
            f"{100 * v:.0f}% of the {mm:.0f} mm band just outside the tumour border is FLAIR-hyperintense "
            f"like the lesion (> {0.5 * lesion:.1f} SD)"
        ),
        "the abnormality continues beyond the labels (under-segmented)",
    )


def _enhancement(ctx: Context, mask: np.ndarray) -> np.ndarray:
    return ctx.z_crop("t1c", mask) - ctx.z_crop("t1", mask)


def enhancement(ctx: Context, cfg: GateConfig) -> list[Check]:
    """ET brighter on T1c than on T1, more than necrosis; enhancing tissue left unlabelled."""
    if ctx.stats is None:
        return []
    lab = ctx.labels[ctx.crop]
    brain = ctx.brain_crop
    et, ncr = (lab == ENHANCING) & brain, (lab == NECROSIS) & brain
    ml = ctx.counts_ml
    checks: list[Check] = []
    et_enh = None
    rest = ctx.wt_crop & brain & ~(lab == ENHANCING)
    if ml["et"] >= cfg.et_min_ml and np.count_nonzero(et) >= 3:
        # Enhancement of ET against the rest of the lesion, not against normal brain: a T1-hypointense
        # lesion (Brats18_2013_11_1: every compartment -1 SD on T1c) enhances at its rim while staying
        # darker than normal brain; what the protocol asks is that ET take up contrast where the rest of
        # the tumour does not.
        base = float(np.median(_enhancement(ctx, rest))) if np.count_nonzero(rest) >= 3 else 0.0
        et_enh = float(np.median(_enhancement(ctx, et))) - base
        checks.append(
            graded(
                "et_enhancement",
                et_enh,
                cfg.et_enhancement_review,
                None,
                "z",
                lambda v: (
                    f"enhancing tumour ({ml['et']:.1f} ml) enhances by {v:+.1f} SD more than the rest "
                    "of the lesion (T1c minus T1, each relative to normal brain)"
                ),
                "the tissue labelled enhancing does not enhance",
                higher_is_worse=False,
            )
        )
        if ml["ncr"] >= cfg.et_min_ml and np.count_nonzero(ncr) >= 3:
            diff = et_enh + base - float(np.median(_enhancement(ctx, ncr)))
            checks.append(
                graded(
                    "et_vs_necrosis",
                    diff,
                    cfg.et_vs_necrosis_review,
                    cfg.et_vs_necrosis_fail,
                    "z",
                    lambda v: (
                        f"the tissue labelled enhancing enhances {abs(v):.1f} SD "
                        f"{'more' if v >= 0 else 'less'} than the tissue labelled necrosis (T1c minus T1)"
                    ),
                    "enhancing tumour must enhance more than necrosis: the two look swapped or misplaced",
                    higher_is_worse=False,
                )
            )
    other = ctx.wt_crop & brain & ~(lab == ENHANCING)
    if np.count_nonzero(other):
        unl = float(np.count_nonzero(_enhancement(ctx, other) > cfg.enhancement_z)) * ctx.sample_ml
        checks.append(
            graded(
                "unlabelled_enhancement",
                unl,
                cfg.unlabelled_enhancement_review_ml,
                None,
                "ml",
                lambda v: (
                    f"{v:.1f} ml of tumour enhances on T1c (> {cfg.enhancement_z:g} SD above T1) but is "
                    f"labelled necrosis or edema (labelled enhancing tumour: {ml['et']:.1f} ml)"
                ),
                "enhancing tumour is missing from the labels",
            )
        )
    return checks
