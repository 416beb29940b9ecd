"""Soft Dice and soft Jaccard (Bertels et al. 2019): MONAI's ``DiceLoss``, per image or over the batch.

MONAI already implements both surrogates (``DiceLoss`` and ``DiceLoss(jaccard=True)``); these factories only
name the paper's two aggregation modes: ``per_image=True`` averages one Dice per image and channel
(MONAI ``batch=False``), ``per_image=False`` pools the voxels of the whole batch first (``batch=True``), which
Bertels et al. show optimises the dataset-level score rather than the mean per-image score.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.losses import DiceLoss
from torch.nn.modules.loss import _Loss


def soft_dice(per_image: bool = True, **kwargs: Any) -> DiceLoss:
    """Soft Dice loss ``1 - 2|X.Y| / (|X| + |Y|)`` (smoothed by MONAI's ``smooth_nr``/``smooth_dr``)."""
    return DiceLoss(batch=not per_image, **kwargs)


def soft_jaccard(per_image: bool = True, **kwargs: Any) -> DiceLoss:
    """Soft Jaccard loss ``1 - |X.Y| / (|X| + |Y| - |X.Y|)``."""
    return DiceLoss(batch=not per_image, jaccard=True, **kwargs)


class DiceBCELoss(_Loss):
    """Soft Dice (MONAI ``DiceLoss(sigmoid=True)``) + binary cross-entropy on logits, for multi-label channels.

    MONAI's ``DiceCELoss`` is not this on several channels: it switches to softmax cross-entropy whenever there is
    more than one channel, which treats overlapping BraTS regions (WT contains TC contains ET) as exclusive classes.
    """

    def __init__(self, per_image: bool = True, lambda_dice: float = 1.0, lambda_bce: float = 1.0) -> None:
        super().__init__()
        self.dice = soft_dice(per_image, sigmoid=True)
        self.bce = torch.nn.BCEWithLogitsLoss()
        self.lambda_dice, self.lambda_bce = lambda_dice, lambda_bce

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(input.dtype)
        return self.lambda_dice * self.dice(input, target) + self.lambda_bce * self.bce(input, target)
