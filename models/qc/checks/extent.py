"""Extent checks: tumour outside the brain, tumour share of the brain, tumour volume."""

from __future__ import annotations

import logging

import numpy as np

from dqe.models.qc.checks.common import REVIEW, graded
from dqe.models.qc.config import GateConfig
from dqe.models.qc.context import Context
from dqe.models.qc.morphology import box_dilate
from dqe.models.qc.types import Check

logger = logging.getLogger(__name__)


def tumour_outside_brain(ctx: Context, cfg: GateConfig) -> Check | None:
    """Fraction of whole-tumour voxels more than one lattice voxel outside the brain mask."""
    if ctx.wt_count == 0:
        return None
    near_brain = box_dilate(ctx.brain_crop, 1)
    outside = int(np.count_nonzero(ctx.wt_crop & ~near_brain))
    frac = outside / ctx.wt_count
    ml = outside * ctx.sample_ml
    return graded(
        "tumour_outside_brain",
        frac,
        cfg.outside_brain_review,
        cfg.outside_brain_fail,
        "fraction",
        lambda v: (
            f"{100 * v:.1f}% of the whole tumour ({ml:.1f} ml) lies outside the brain "
            "(beyond the skull-stripped brain surface)"
        ),
        "gliomas are intra-axial: the labels spill out of the brain",
    )


def tumour_brain_fraction(ctx: Context, cfg: GateConfig) -> Check | None:
    """Whole-tumour volume as a fraction of the brain volume."""
    if ctx.brain_ml <= 0:
        return None
    frac = ctx.counts_ml["wt"] / ctx.brain_ml
    return graded(
        "tumour_brain_fraction",
        frac,
        cfg.brain_fraction_review,
        cfg.brain_fraction_fail,
        "fraction",
        lambda v: (
            f"the whole tumour ({ctx.counts_ml['wt']:.0f} ml) is {100 * v:.0f}% of the brain volume "
            f"({ctx.brain_ml:.0f} ml)"
        ),
        "implausibly large for a glioma",
    )


def tumour_volume(ctx: Context, cfg: GateConfig) -> Check:
    """Absolute whole-tumour volume in ml (too large, or implausibly small)."""
    ml = ctx.counts_ml["wt"]
    if ml < cfg.volume_min_ml:
        return Check(
            "tumour_volume",
            ml,
            cfg.volume_min_ml,
            False,
            REVIEW,
            f"the whole tumour is only {ml:.2f} ml; a glioma segmentation this small is unusual",
            "ml",
        )
    return graded(
        "tumour_volume",
        ml,
        cfg.volume_review_ml,
        cfg.volume_fail_ml,
        "ml",
        lambda v: f"the whole tumour measures {v:.1f} ml",
        "implausibly large for a glioma",
    )
