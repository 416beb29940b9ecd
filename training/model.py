"""The network for training: MONAI DenseNet from :mod:`dqe.models.network`, optional released weights, an
optional frozen prefix, and the optimisers of the paper (Ranger21, AdamW, SGD with momentum)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from dqe.models.network import build_network, load_state_dict
from dqe.models.registry import DEFAULT_MODEL_ID, get_entry, locate_weights
from dqe.training.config import ModelConfig, OptimConfig

logger = logging.getLogger(__name__)

RELEASED = "released"


def released_weights() -> Path:
    """The checksum-verified weights file of the published default model."""

    return locate_weights(get_entry(DEFAULT_MODEL_ID))


def init_path(init: str | None) -> Path | None:
    if init is None:
        return None
    return released_weights() if init == RELEASED else Path(init)


def build_model(cfg: ModelConfig, in_channels: int) -> nn.Module:
    """A DenseNet regressor, initialised as ``cfg.init`` says.

    Raises:
        ValueError: the initial weights do not fit the architecture / channel count.
        NotFound / IntegrityError: the released weights are missing or fail their checksum.
    """
    net = build_network(cfg.architecture, in_channels)
    path = init_path(cfg.init)
    if path is not None:
        try:
            net.load_state_dict(load_state_dict(path), strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"model.init {str(path)!r} does not fit {cfg.architecture} with {in_channels} input channels: "
                f"{str(exc).splitlines()[0]}"
            ) from None
        logger.info("initialised %s from %s", cfg.architecture, path)
    return net


class SplitNetwork(nn.Module):
    """The same DenseNet seen as ``suffix(prefix(x))``: ``prefix`` (frozen, eval mode) is every child of
    ``features`` before ``freeze_until``; ``suffix`` is the rest plus ``class_layers``.

    The wrapped network keeps its parameters and state-dict keys, so checkpoints load into a plain
    :func:`dqe.models.network.build_network` model and export unchanged.
    """

    def __init__(self, net: nn.Module, freeze_until: str | None = None, bn_eval: bool = False) -> None:
        super().__init__()
        self.net = net
        self.bn_eval = bn_eval
        children = list(net.features.named_children())  # type: ignore[union-attr]
        names = [n for n, _ in children]
        if freeze_until is None:
            cut = 0
        elif freeze_until in names:
            cut = names.index(freeze_until)
        else:
            raise ValueError(f"model.freeze_until {freeze_until!r} is not one of {names}")
        self.cut = cut
        self.freeze_until = freeze_until
        self.prefix = nn.Sequential(*[m for _, m in children[:cut]])
        self.suffix_features = nn.Sequential(*[m for _, m in children[cut:]])
        for p in self.prefix.parameters():
            p.requires_grad_(False)

    @property
    def frozen(self) -> bool:
        return self.cut > 0

    def train(self, mode: bool = True) -> SplitNetwork:
        super().train(mode)
        self.prefix.eval()
        if self.bn_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen prefix's output (no gradient)."""
        with torch.no_grad():
            return self.prefix(x)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Stars ``(N,)`` from prefix features."""
        out = self.net.class_layers(self.suffix_features(h))  # type: ignore[operator]
        return out.reshape(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x) if self.frozen else x)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.net.parameters() if p.requires_grad]


def build_optimizer(cfg: OptimConfig, params: list[nn.Parameter], total_steps: int) -> torch.optim.Optimizer:
    """The optimiser named in ``cfg``; Ranger21 needs the total number of steps for its warm-up/-down.

    Raises:
        ValueError: unknown name.
    """
    name = cfg.name.lower()
    if name == "ranger21":
        from pytorch_optimizer import Ranger21

        return Ranger21(params, num_iterations=max(total_steps, 1), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"optim.name is {cfg.name!r}; expected ranger21, adamw or sgd")


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU.

    Raises:
        ValueError: ``cuda`` requested but not available.
    """
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but torch sees no CUDA device")
    return torch.device(requested)
