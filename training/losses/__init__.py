"""Segmentation and regression losses, one per module, and the one registry both trainers read.

Importing this package imports no torch: :data:`LOSSES` names every loss with its task and a one-line
description, so configs are validated (and ``dqe --help`` runs) without torch; :func:`dqe.training.losses.registry.build_loss`
builds one. Segmentation losses follow MONAI's conventions (``_Loss``, ``(B, C, H, W[, D])`` inputs,
``sigmoid``/``softmax``/``include_background``/``reduction``) and reuse MONAI's losses where MONAI has them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LossInfo:
    """One registry entry: ``task`` is ``regression`` (the DQE trainer) or ``segmentation`` (``dqe seg-train``)."""

    task: str
    description: str


LOSSES: dict[str, LossInfo] = {
    "mse": LossInfo("regression", "mean squared error of stars (the paper's loss)"),
    "l1": LossInfo("regression", "mean absolute error of stars"),
    "huber": LossInfo("regression", "Huber loss of stars (delta 1 star)"),
    "dice": LossInfo("segmentation", "soft Dice per image (MONAI DiceLoss)"),
    "dice_batch": LossInfo("segmentation", "soft Dice over the batch (MONAI DiceLoss batch=True)"),
    "jaccard": LossInfo("segmentation", "soft Jaccard per image (MONAI DiceLoss jaccard=True)"),
    "gdice": LossInfo("segmentation", "generalised Dice (MONAI GeneralizedDiceLoss)"),
    "dice_bce": LossInfo("segmentation", "Dice + BCE baseline (MONAI DiceLoss + BCE on logits, per channel)"),
    "lovasz": LossInfo("segmentation", "Lovasz-softmax (sigmoid channels)"),
    "lovasz_hinge": LossInfo("segmentation", "Lovasz hinge per binary channel"),
    "ss": LossInfo("segmentation", "sensitivity-specificity"),
    "rrw": LossInfo("segmentation", "region-wise loss with rectified RW maps, per binary channel"),
    "boundary": LossInfo("segmentation", "region-wise loss with the Boundary-loss map, per binary channel"),
    "dqe": LossInfo("segmentation", "(6 - DQE stars) / 5 of the frozen released estimator"),
    "gdice_bce": LossInfo("segmentation", "paper 000 candidate: GDICE W + BCE on WT, TC, ET"),
    "gdice_ss_bce": LossInfo("segmentation", "paper 000 candidate: GDICE W + SS + BCE on WT, TC, ET"),
    "channel_wise": LossInfo(
        "segmentation", "paper 000 candidate: WT gdice_ss_bce, TC gdice_bce, ET GDICE W"
    ),
    "channel_wise_weighted": LossInfo("segmentation", "paper 000 candidate: channel_wise with TC and ET x5"),
}


def loss_names(task: str | None = None) -> list[str]:
    """Registered loss names, of one task or all."""
    return sorted(name for name, info in LOSSES.items() if task is None or info.task == task)


def check_loss_name(name: str, task: str) -> str:
    """``name`` if registered for ``task``.

    Raises:
        ValueError: naming the value and listing the registry (by task).
    """
    info = LOSSES.get(name)
    if info is None or info.task != task:
        raise ValueError(
            f"loss is {name!r}; expected one of {loss_names(task)} for {task} "
            f"(registry: {', '.join(f'{n} [{i.task}]' for n, i in sorted(LOSSES.items()))})"
        )
    return name
