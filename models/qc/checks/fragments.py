"""Fragmentation checks: islands far from the main lesion."""

from __future__ import annotations

import logging

import numpy as np

from dqe.models.qc.checks.common import graded
from dqe.models.qc.config import GateConfig
from dqe.models.qc.context import Context
from dqe.models.qc.morphology import box_erode
from dqe.models.qc.types import Check

logger = logging.getLogger(__name__)


def _distant_components(ctx: Context, cfg: GateConfig) -> tuple[np.ndarray, int, float]:
    """Mask (crop) of components farther than ``fragment_distance_mm`` from the main lesion, their count
    (those of at least ``fragment_min_ml``) and their total volume in ml. Distances are Euclidean, in mm,
    from each island's voxels to the main lesion's surface (a k-d tree query with an upper bound)."""
    from scipy.spatial import cKDTree

    cc, n, sizes, main = ctx.components
    far = np.zeros_like(ctx.wt_crop)
    if n <= 1:
        return far, 0, 0.0
    main_mask = cc == main
    surface = main_mask & ~box_erode(main_mask, 1)
    tree = cKDTree(np.argwhere(surface) * ctx.spacing_mm)
    others = np.argwhere((cc > 0) & ~main_mask)
    owner = cc[tuple(others.T)]
    dist, _ = tree.query(others * ctx.spacing_mm, k=1, distance_upper_bound=cfg.fragment_distance_mm)
    nearest = np.full(n + 1, np.inf)
    np.minimum.at(nearest, owner, dist)
    is_far = nearest > cfg.fragment_distance_mm
    is_far[0] = is_far[main] = False
    far = is_far[cc]
    min_samples = cfg.fragment_min_ml / ctx.sample_ml
    count = int(np.count_nonzero(is_far & (sizes >= min_samples)))
    return far, count, float(sizes[is_far].sum()) * ctx.sample_ml


def fragmentation(ctx: Context, cfg: GateConfig) -> list[Check]:
    """Number and volume share of tumour islands away from the main lesion, and whether they look like
    normal brain on FLAIR."""
    if ctx.wt_count == 0:
        return []
    far, count, far_ml = _distant_components(ctx, cfg)
    wt_ml = ctx.wt_count * ctx.sample_ml
    share = far_ml / wt_ml
    d = cfg.fragment_distance_mm
    checks = [
        graded(
            "distant_fragments",
            count,
            cfg.fragment_count_review - 0.5,
            None,
            "count",
            lambda v: f"{int(v)} separate tumour islands lie more than {d:.0f} mm from the main lesion",
            "false-positive islands, or an unusually multifocal tumour",
        ),
        graded(
            "distant_fragment_share",
            share,
            cfg.fragment_share_review,
            None,
            "fraction",
            lambda v: (
                f"{100 * v:.1f}% of the tumour volume ({far_ml:.1f} ml) lies more than {d:.0f} mm "
                "from the main lesion"
            ),
            "false-positive islands, or an unusually multifocal tumour",
        ),
    ]
    if ctx.stats is not None and share >= cfg.fragment_flair_min_share:
        sel = far & ctx.brain_crop
        if np.count_nonzero(sel) >= 3:
            flair = float(np.median(ctx.z_crop("flair", sel)))
            checks.append(
                graded(
                    "distant_fragments_flair",
                    flair,
                    cfg.fragment_flair_fail,
                    cfg.fragment_flair_fail,
                    "z",
                    lambda v: (
                        f"the tumour islands away from the main lesion ({far_ml:.1f} ml) are {v:+.1f} SD "
                        "from normal brain on FLAIR (median)"
                    ),
                    "they look like normal brain: false positives",
                    higher_is_worse=False,
                )
            )
    return checks
