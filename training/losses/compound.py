"""Compound losses (Kofler et al. 2021, paper 000, Eq. (1)): ``L = sum_i alpha_i sum_j w_ij loss_ij``.

``alpha_i`` weighs label channel ``i`` (BraTS regions WT, TC, ET), ``w_ij`` loss ``j`` on that channel. Every
per-channel term sees one channel of region logits (sigmoid) and its binary target. The paper's four
candidates are presets in ``training/configs/compound_losses.yaml``; ``dqe_weight`` adds the DQE term
(:class:`dqe.training.losses.dqe.DQELoss`), which reads all channels at once and needs the MR images.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from monai.losses import DiceLoss
from torch.nn.modules.loss import _Loss

from dqe.models.errors import InvalidInput
from dqe.training.losses.generalized_dice import BinaryGeneralizedDiceLoss
from dqe.training.losses.lovasz import LovaszSoftmaxLoss
from dqe.training.losses.region_wise import RegionWiseLoss
from dqe.training.losses.sensitivity_specificity import SensitivitySpecificityLoss

PRESETS_FILE = Path(__file__).resolve().parent.parent / "configs" / "compound_losses.yaml"

# Each factory builds a loss of one sigmoid channel: (B, 1, ...) logits against (B, 1, ...) 0/1 targets.
CHANNEL_TERMS: dict[str, Callable[[], torch.nn.Module]] = {
    "gdice_w": lambda: BinaryGeneralizedDiceLoss(sigmoid=True),
    "bce": torch.nn.BCEWithLogitsLoss,
    "ss": lambda: SensitivitySpecificityLoss(sigmoid=True),
    "dice": lambda: DiceLoss(sigmoid=True),
    "jaccard": lambda: DiceLoss(sigmoid=True, jaccard=True),
    "lovasz": lambda: LovaszSoftmaxLoss(sigmoid=True),
    "rrw": lambda: RegionWiseLoss("rrw", binary=True),
    "boundary": lambda: RegionWiseLoss("boundary", binary=True),
}


class CompoundLoss(_Loss):
    """Paper 000's Eq. (1) over sigmoid region channels, plus an optional DQE term.

    Args:
        channels: one ``{"weight": alpha_i, "losses": {term: w_ij}}`` per channel of ``input``, in channel
            order (terms from :data:`CHANNEL_TERMS`); a mapping ``{name: spec}`` keeps names for logs.
        dqe_weight: weight of the DQE term (0 = none; then no network is loaded).
        dqe: keyword arguments of :class:`DQELoss` (``sigmoid=True`` and the channel names are filled in).

    ``forward(input, target, images=None)``: ``images`` ``(B, 4, X, Y, Z)`` is needed when ``dqe_weight > 0``.
    """

    def __init__(
        self,
        channels: Mapping[str, Mapping[str, Any]] | list[Mapping[str, Any]],
        dqe_weight: float = 0.0,
        dqe: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        items = (
            list(channels.items())
            if isinstance(channels, Mapping)
            else [(str(i), c) for i, c in enumerate(channels)]
        )
        self.names = [name for name, _ in items]
        self.alphas: list[float] = []
        self.weights: list[dict[str, float]] = []
        terms: dict[str, torch.nn.Module] = {}
        for name, spec in items:
            unknown = set(spec) - {"weight", "losses"}
            if unknown:
                raise InvalidInput(
                    f"channel {name!r} has unknown keys {sorted(unknown)}; expected weight, losses"
                )
            losses = dict(spec.get("losses", {}))
            bad = set(losses) - set(CHANNEL_TERMS)
            if bad:
                raise InvalidInput(
                    f"channel {name!r}: unknown losses {sorted(bad)}; known: {sorted(CHANNEL_TERMS)}"
                )
            self.alphas.append(float(spec.get("weight", 1.0)))
            self.weights.append({k: float(v) for k, v in losses.items()})
            for term in losses:
                terms.setdefault(term, CHANNEL_TERMS[term]())
        self.terms = torch.nn.ModuleDict(terms)
        self.dqe_weight = float(dqe_weight)
        self.dqe: torch.nn.Module | None = None
        if self.dqe_weight > 0:
            from dqe.training.losses.dqe import DQELoss  # lazy: estimator loads only with a DQE term

            options = {"sigmoid": True, "regions": tuple(self.names), **dict(dqe or {})}
            self.dqe = DQELoss(**options)

    def channel_losses(self, input: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``alpha_i sum_j w_ij loss_ij`` per channel name (before summing)."""
        if input.shape[1] != len(self.alphas) or target.shape != input.shape:
            raise InvalidInput(
                f"input {tuple(input.shape)} / target {tuple(target.shape)}: expected {len(self.alphas)} channels "
                f"({self.names}) and equal shapes",
                field="loss",
            )
        out = {}
        for i, name in enumerate(self.names):
            x, y = input[:, i : i + 1], target[:, i : i + 1].to(input.dtype)
            out[name] = self.alphas[i] * sum(w * self.terms[t](x, y) for t, w in self.weights[i].items())
        return out

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, images: torch.Tensor | None = None
    ) -> torch.Tensor:
        total = torch.stack(list(self.channel_losses(input, target).values())).sum()
        if self.dqe is not None:
            if images is None:
                raise InvalidInput("dqe_weight > 0 needs the MR images: call loss(input, target, images=...)")
            total = total + self.dqe_weight * self.dqe(input, images)
        return total


def load_presets(path: str | Path = PRESETS_FILE) -> dict[str, dict[str, Any]]:
    """The named compound specs of a YAML file (``{name: {channels: ..., dqe_weight: ...}}``)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: expected a mapping of preset names to compound specs")
    return data
