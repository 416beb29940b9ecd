"""A run's checkpoint (``checkpoints/last.pt``): what it holds, how it is written and how a resume reads it.

The checkpoint carries torch's global RNG state, so a resumed run draws exactly what an uninterrupted one
would have drawn.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from dqe.models.contract import PreprocessingContract
from dqe.training.config import TrainConfig

CHECKPOINT = Path("checkpoints") / "last.pt"
WEIGHTS = "model.pth"


def checkpoint_state(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[dict[str, float]],
    cfg: TrainConfig,
    data_hash: str,
    contract: PreprocessingContract,
) -> dict[str, Any]:
    """Everything a resume needs after ``epoch`` completed epochs, with torch's RNG state as of now."""
    return {
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "history": history,
        "config": cfg.to_dict(),
        "config_digest": cfg.digest(),
        "data_hash": data_hash,
        "torch_rng": torch.get_rng_state(),
        "architecture": cfg.model.architecture,
        "in_channels": contract.n_channels,
        "contract": contract.to_dict(),
    }


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file, then a rename), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state saved at ``path``, on the CPU (tensors and plain containers only)."""
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def restore_checkpoint(
    state: dict[str, Any], net: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[int, list[dict[str, float]]]:
    """Load ``state`` into ``net`` and ``optimizer`` and restore torch's global RNG.

    Returns:
        The number of completed epochs and their metrics rows.
    """
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    epoch, history = int(state["epoch"]), list(state["history"])
    torch.set_rng_state(state["torch_rng"])
    return epoch, history
