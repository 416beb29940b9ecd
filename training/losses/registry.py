"""Build a loss from its registered name or a compound spec (torch and MONAI are imported here)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from monai.losses import GeneralizedDiceLoss

from dqe.training.losses import LOSSES, check_loss_name
from dqe.training.losses.compound import CompoundLoss, load_presets
from dqe.training.losses.dice import DiceBCELoss, soft_dice, soft_jaccard
from dqe.training.losses.lovasz import LovaszHingeLoss, LovaszSoftmaxLoss
from dqe.training.losses.region_wise import RegionWiseLoss
from dqe.training.losses.sensitivity_specificity import SensitivitySpecificityLoss


def _dqe(**kwargs: Any) -> torch.nn.Module:
    from dqe.training.losses.dqe import DQELoss  # lazy: the frozen estimator loads only when asked for

    return DQELoss(**{"sigmoid": True, **kwargs})


# Segmentation defaults assume region logits (BraTS WT/TC/ET, one sigmoid per channel), as dqe seg-train emits.
FACTORIES: dict[str, Callable[..., torch.nn.Module]] = {
    "mse": torch.nn.MSELoss,
    "l1": torch.nn.L1Loss,
    "huber": torch.nn.HuberLoss,
    "dice": lambda **kw: soft_dice(**{"sigmoid": True, **kw}),
    "dice_batch": lambda **kw: soft_dice(**{"sigmoid": True, "per_image": False, **kw}),
    "jaccard": lambda **kw: soft_jaccard(**{"sigmoid": True, **kw}),
    "gdice": lambda **kw: GeneralizedDiceLoss(**{"sigmoid": True, **kw}),
    "dice_bce": DiceBCELoss,
    "lovasz": lambda **kw: LovaszSoftmaxLoss(**{"sigmoid": True, **kw}),
    "lovasz_hinge": LovaszHingeLoss,
    "ss": lambda **kw: SensitivitySpecificityLoss(**{"sigmoid": True, **kw}),
    "rrw": lambda **kw: RegionWiseLoss("rrw", binary=True, **kw),
    "boundary": lambda **kw: RegionWiseLoss("boundary", binary=True, **kw),
    "dqe": _dqe,
}


def build_loss(spec: str | Mapping[str, Any], task: str = "segmentation") -> torch.nn.Module:
    """A loss module from a name (``"dice_bce"``), a named preset with options (``{"name": "gdice_bce",
    "dqe_weight": 0.5}``), keyword options (``{"name": "dice", "per_image": False}``) or an inline compound spec
    (``{"channels": {...}, "dqe_weight": ...}``).

    Raises:
        ValueError: unknown name (listing the registry) or options the loss does not take.
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    options = dict(spec)
    if "channels" in options and "name" not in options:
        return CompoundLoss(**options)
    name = check_loss_name(str(options.pop("name", "")), task)
    presets = load_presets()
    if name in presets:
        return CompoundLoss(**{**presets[name], **options})
    try:
        return FACTORIES[name](**options)
    except TypeError as exc:
        raise ValueError(f"loss {name!r} ({LOSSES[name].description}): {exc}") from None
