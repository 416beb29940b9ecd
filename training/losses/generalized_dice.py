"""Generalised Dice of one binary channel against its complement (``GDICE W`` of paper 000).

The implementation Kofler et al. found to correlate best with expert ratings (wolny's pytorch-3dunet) turns a
single foreground channel into the two classes foreground / background and weights each by the inverse of its
squared reference volume, pooled over the batch. That is MONAI's ``GeneralizedDiceLoss`` (``w_type="square"``,
``batch=True``) on ``[p, 1 - p]``, which is what this loss computes, channel by channel, with ``smooth_nr = 0``
and ``smooth_dr = 1e-10`` in place of wolny's clamp of the denominator at 1e-6 (MONAI's default 1e-5 would be
comparable to the inverse-square-weighted sums themselves). Perfect prediction: 0.
"""

from __future__ import annotations

import torch
from monai.losses import GeneralizedDiceLoss
from torch.nn.modules.loss import _Loss

from dqe.training.losses._common import activate, onehot_target, reduce


class BinaryGeneralizedDiceLoss(_Loss):
    """Per channel: MONAI ``GeneralizedDiceLoss`` over (foreground, background); returns the mean over channels.

    ``input`` holds one binary task per channel (logits with ``sigmoid=True``, else probabilities).
    """

    def __init__(self, sigmoid: bool = False, batch: bool = True, reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)
        self.sigmoid = sigmoid
        self.gdl = GeneralizedDiceLoss(
            include_background=True, w_type="square", batch=batch, smooth_nr=0.0, smooth_dr=1e-10
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = onehot_target(input, target, False)
        probs = activate(input, self.sigmoid, False)
        values = []
        for c in range(probs.shape[1]):
            p, y = probs[:, c : c + 1], target[:, c : c + 1]
            values.append(self.gdl(torch.cat([p, 1.0 - p], 1), torch.cat([y, 1.0 - y], 1)))
        return reduce(torch.stack(values), self.reduction)
