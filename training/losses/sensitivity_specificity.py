"""Sensitivity-specificity loss (Brosch et al. 2015; the ``SS`` candidate of Kofler et al. 2021, paper 000).

``r * sum((y - p)^2 y) / (sum(y) + smooth) + (1 - r) * sum((y - p)^2 (1 - y)) / (sum(1 - y) + smooth)``
per channel (and per image unless ``batch``), ``r = 0.1`` and ``smooth = 1`` as in the implementation the
paper used (junma's loss collection). MONAI has no such loss. Perfect prediction: 0.
"""

from __future__ import annotations

from typing import Any

import torch

from dqe.training.losses._common import ActivatedLoss, reduce


class SensitivitySpecificityLoss(ActivatedLoss):
    """See the module docstring; ``reduction`` acts over the ``(B, C)`` (or ``(C,)`` with ``batch``) values."""

    def __init__(
        self,
        r: float = 0.1,
        smooth: float = 1.0,
        batch: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.r, self.smooth, self.batch = r, smooth, batch

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, target = self.prepare(input, target)
        axes = [0, *range(2, probs.ndim)] if self.batch else list(range(2, probs.ndim))
        squared = (target - probs) ** 2
        background = 1.0 - target
        specificity = (squared * target).sum(axes) / (target.sum(axes) + self.smooth)
        sensitivity = (squared * background).sum(axes) / (background.sum(axes) + self.smooth)
        return reduce(self.r * specificity + (1.0 - self.r) * sensitivity, self.reduction)
