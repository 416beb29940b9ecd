"""Lovász-softmax and Lovász hinge (Berman, Rannen Triki & Blaschko 2018; Bertels et al. 2019).

The Lovász extension of the Jaccard loss is piecewise linear in the per-voxel errors: sort the errors in
decreasing order and weight each by the increase of the Jaccard loss when that voxel joins the set of
mispredicted ones (:func:`lovasz_grad`, Berman et al.'s Algorithm 1). Lovász-softmax uses the errors
``|y - p|`` of the probabilities of one class; Lovász hinge (binary tasks) the hinge errors ``1 - s * y``
of logits ``s`` with signs ``y`` in {-1, +1}. ``per_image`` computes one loss per image and averages them;
otherwise the voxels of the whole batch form one set.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.modules.loss import _Loss

from dqe.training.losses._common import ActivatedLoss, onehot_target, reduce


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss for ground truth ``gt_sorted`` (0/1, 1-D).

    ``gt_sorted`` is ordered by decreasing error; element ``i`` is ``J(first i+1) - J(first i)`` where
    ``J`` is the Jaccard loss of the set of the first voxels taken as errors.
    """
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_flat(errors: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """``<sorted errors, lovasz_grad(sorted fg)>`` for one flat set of voxels."""
    errors_sorted, perm = torch.sort(errors, descending=True)
    return torch.dot(errors_sorted, lovasz_grad(fg[perm]))


class LovaszSoftmaxLoss(ActivatedLoss):
    """Lovász-softmax loss, the mean over classes of the Lovász extension of each class's Jaccard loss.

    Args:
        sigmoid: independent per-channel probabilities (multi-label, e.g. BraTS WT/TC/ET regions).
        softmax: mutually exclusive classes.
        to_onehot_y: ``target`` holds labels ``(B, 1, ...)``.
        include_background: keep channel 0.
        classes: ``present`` skips a class absent from the ground truth of a set (Berman et al.'s default),
            ``all`` keeps it.
        per_image: one loss per image (then reduced by ``reduction``), else one set over the batch.

    A perfect prediction (probabilities equal to the one-hot target) has loss 0.
    """

    def __init__(
        self,
        classes: str = "present",
        per_image: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if classes not in ("present", "all"):
            raise ValueError(f"classes is {classes!r}; expected 'present' or 'all'")
        self.classes, self.per_image = classes, per_image

    def _set_loss(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of one set: ``probs``/``target`` shaped ``(C, N)``."""
        losses = []
        for c in range(probs.shape[0]):
            fg = target[c]
            if self.classes == "present" and fg.sum() == 0:
                continue
            losses.append(lovasz_flat((fg - probs[c]).abs(), fg))
        if not losses:
            return probs.sum() * 0.0
        return torch.stack(losses).mean()

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, target = self.prepare(input, target)
        c = probs.shape[1]
        if self.per_image:
            values = torch.stack(
                [
                    self._set_loss(p.reshape(c, -1), t.reshape(c, -1))
                    for p, t in zip(probs, target, strict=True)
                ]
            )
            return reduce(values, self.reduction)
        flat_p = probs.transpose(0, 1).reshape(c, -1)
        flat_t = target.transpose(0, 1).reshape(c, -1)
        return self._set_loss(flat_p, flat_t)


class LovaszHingeLoss(_Loss):
    """Lovász hinge for binary segmentation: each channel of ``input`` holds logits of one binary task.

    ``target`` is 0/1 shaped like ``input``. The loss is ``<relu(sorted hinge errors), lovasz_grad>``;
    it is 0 when every logit has margin ``s * y >= 1`` on the right side.
    """

    def __init__(self, per_image: bool = False, reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)
        self.per_image = per_image

    def _set_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        signs = 2.0 * labels - 1.0
        errors = 1.0 - logits * signs
        errors_sorted, perm = torch.sort(errors, descending=True)
        return torch.dot(torch.relu(errors_sorted), lovasz_grad(labels[perm]))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = onehot_target(input, target, False)
        c = input.shape[1]
        if self.per_image:
            values = torch.stack(
                [
                    torch.stack([self._set_loss(x[k].reshape(-1), y[k].reshape(-1)) for k in range(c)]).mean()
                    for x, y in zip(input, target, strict=True)
                ]
            )
            return reduce(values, self.reduction)
        flat_x = input.transpose(0, 1).reshape(c, -1)
        flat_y = target.transpose(0, 1).reshape(c, -1)
        return torch.stack([self._set_loss(flat_x[k], flat_y[k]) for k in range(c)]).mean()
