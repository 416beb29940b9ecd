"""Network factory and weight loading (torch + MONAI; used by export and training, never by serving)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from monai.networks.nets import DenseNet121, DenseNet201

ARCHITECTURES = {"densenet121": DenseNet121, "densenet201": DenseNet201}


def build_network(architecture: str = "densenet121", in_channels: int = 7) -> torch.nn.Module:
    """A 2-D MONAI DenseNet regressor with one output (stars), randomly initialised."""
    try:
        cls = ARCHITECTURES[architecture.lower()]
    except KeyError:
        raise ValueError(f"architecture {architecture!r} is not one of {sorted(ARCHITECTURES)}") from None
    return cls(spatial_dims=2, in_channels=in_channels, out_channels=1, pretrained=False)


def normalise_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the ``module.`` prefix that ``DataParallel`` checkpoints carry, whatever the device."""
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a ``.pth`` file (plain state dict or a training checkpoint with ``model``), on CPU."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return normalise_state_dict(state)


def load_network(
    path: str | Path, architecture: str = "densenet121", in_channels: int = 7
) -> torch.nn.Module:
    """A network with weights loaded strictly, in eval mode."""
    net = build_network(architecture, in_channels)
    net.load_state_dict(load_state_dict(path), strict=True)
    return net.eval()
