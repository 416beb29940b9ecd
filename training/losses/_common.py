"""Shared input handling for the losses: MONAI's conventions, in one place.

``input`` is ``(B, C, H, W[, D])`` logits or probabilities; ``target`` is one-hot ``(B, C, ...)`` or labels
``(B, 1, ...)`` (with ``to_onehot_y``). ``sigmoid`` / ``softmax`` say which activation turns logits into
probabilities (neither: ``input`` already holds probabilities).
"""

from __future__ import annotations

import torch
from monai.networks import one_hot
from torch.nn.modules.loss import _Loss

from dqe.models.errors import InvalidInput


def activate(input: torch.Tensor, sigmoid: bool, softmax: bool) -> torch.Tensor:
    """Probabilities from ``input``.

    Raises:
        InvalidInput: both activations requested, or softmax over a single channel.
    """
    if sigmoid and softmax:
        raise InvalidInput("sigmoid and softmax are exclusive", field="loss")
    if sigmoid:
        return torch.sigmoid(input)
    if softmax:
        if input.shape[1] == 1:
            raise InvalidInput("softmax over a single channel is constant 1", field="loss")
        return torch.softmax(input, dim=1)
    return input


def onehot_target(input: torch.Tensor, target: torch.Tensor, to_onehot_y: bool) -> torch.Tensor:
    """``target`` as a one-hot tensor shaped like ``input`` (same dtype).

    Raises:
        InvalidInput: the shapes do not match (naming both).
    """
    if input.ndim not in (4, 5):
        raise InvalidInput(
            f"input has shape {tuple(input.shape)}; expected (B, C, H, W) or (B, C, H, W, D)", field="loss"
        )
    if to_onehot_y:
        if target.shape[1] != 1:
            raise InvalidInput(
                f"to_onehot_y needs labels shaped (B, 1, ...); got {tuple(target.shape)}", field="loss"
            )
        target = one_hot(target.long(), num_classes=input.shape[1], dim=1)
    if target.shape != input.shape:
        raise InvalidInput(
            f"target has shape {tuple(target.shape)}; input has {tuple(input.shape)}", field="loss"
        )
    return target.to(input.dtype)


def drop_background(
    probs: torch.Tensor, target: torch.Tensor, include_background: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel 0 removed from both unless ``include_background`` (MONAI's meaning)."""
    if include_background or probs.shape[1] == 1:
        return probs, target
    return probs[:, 1:], target[:, 1:]


def reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """``mean`` / ``sum`` / ``none`` over a tensor of per-item losses.

    Raises:
        InvalidInput: unknown reduction.
    """
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise InvalidInput(f"reduction is {reduction!r}; expected one of ['mean', 'sum', 'none']", field="loss")


class ActivatedLoss(_Loss):
    """Base of the losses here that take MONAI's four input options; :meth:`prepare` applies them."""

    def __init__(
        self,
        sigmoid: bool = False,
        softmax: bool = False,
        to_onehot_y: bool = False,
        include_background: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=reduction)
        self.sigmoid, self.softmax = sigmoid, softmax
        self.to_onehot_y, self.include_background = to_onehot_y, include_background

    def prepare(self, input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities and one-hot target, background dropped unless ``include_background``."""
        target = onehot_target(input, target, self.to_onehot_y)
        probs = activate(input, self.sigmoid, self.softmax)
        return drop_background(probs, target, self.include_background)
