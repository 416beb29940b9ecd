"""Checks on the quality model's own output: view disagreement and the star threshold."""

from __future__ import annotations

import logging

from dqe.models.qc.checks.common import graded
from dqe.models.qc.config import GateConfig
from dqe.models.qc.types import Check

logger = logging.getLogger(__name__)


def view_spread(views: dict[str, float], cfg: GateConfig) -> Check | None:
    """Disagreement between the axial, coronal and sagittal star ratings."""
    if len(views) < 2:
        return None
    vals = list(views.values())
    spread = float(max(vals) - min(vals))
    return graded(
        "view_disagreement",
        spread,
        cfg.view_spread_review,
        None,
        "stars",
        lambda v: "views disagree by {:.2f} stars ({})".format(
            v, ", ".join(f"{k} {s:.2f}" for k, s in views.items())
        ),
        "the quality model's views disagree",
    )


def stars(mean_stars: float, cfg: GateConfig) -> Check:
    """Mean predicted star rating vs the configured threshold."""
    return graded(
        "stars",
        mean_stars,
        cfg.star_threshold,
        None,
        "stars",
        lambda v: (
            f"the quality model rates the segmentation {v:.2f} stars (review below {cfg.star_threshold:g})"
        ),
        higher_is_worse=False,
    )
