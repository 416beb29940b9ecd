"""Soft Dice and soft Jaccard (Bertels et al. 2019): MONAI's ``DiceLoss``, per image or over the batch.

MONAI already implements both surrogates (``DiceLoss`` and ``DiceLoss(jaccard=True)``); these factories only
name the paper's two aggregation modes: ``per_image=True`` averages one Dice per image and channel
(MONAI ``batch=False``), ``per_image=False`` pools the voxels of the whole batch first (``batch=True``), which
Bertels et al. show optimises the dataset-level score rather than the mean per-image score.
"""

from __future__ import annotations

from typing import Any

from monai.losses import DiceLoss


def soft_dice(per_image: bool = True, **kwargs: Any) -> DiceLoss:
    """Soft Dice loss ``1 - 2|X.Y| / (|X| + |Y|)`` (smoothed by MONAI's ``smooth_nr``/``smooth_dr``)."""
    return DiceLoss(batch=not per_image, **kwargs)


def soft_jaccard(per_image: bool = True, **kwargs: Any) -> DiceLoss:
    """Soft Jaccard loss ``1 - |X.Y| / (|X| + |Y| - |X.Y|)``."""
    return DiceLoss(batch=not per_image, jaccard=True, **kwargs)
