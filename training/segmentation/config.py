"""``dqe seg-train`` configuration: frozen dataclasses read from YAML with ``section.key=value`` overrides.

Unknown keys are errors (the same reader as ``dqe train``). ``loss`` is a registered segmentation loss name
(:data:`dqe.training.losses.LOSSES`), a name with options (``{name: gdice_bce, dqe_weight: 0.5}``) or an
inline paper-000 compound (``{channels: {...}}``). The network emits region logits in ``regions`` order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dqe.training.config import apply_overrides, from_dict
from dqe.training.losses import check_loss_name

ARCHITECTURES = ("segresnet", "unet")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class SegDataConfig:
    """The exams.

    Attributes:
        root: a folder of BraTS-style case folders (four images + ``*_seg``); ``null`` with ``synthetic``.
        synthetic: number of seeded phantom exams written to ``RUN_DIR/phantoms`` (when ``root`` is null).
        synthetic_shape: the phantoms' grid in voxels.
        grid: the training grid (voxels); every exam is resized to it (images trilinear, labels nearest).
        val_cases: held-out case ids (folder names); else ``val_fraction`` of the cases, split with the seed.
        val_fraction: fraction held out when ``val_cases`` is empty.
        cache_rate: fraction of the deterministic transforms' output MONAI ``CacheDataset`` keeps in memory.
    """

    root: str | None = None
    synthetic: int = 0
    synthetic_shape: tuple[int, int, int] = (64, 64, 48)
    grid: tuple[int, int, int] = (64, 64, 48)
    val_cases: tuple[str, ...] = ()
    val_fraction: float = 0.25
    cache_rate: float = 1.0


@dataclass(frozen=True)
class SegModelConfig:
    """A MONAI 3-D network: ``segresnet`` (``init_filters``) or ``unet`` (channels ``init_filters * 2**k``)."""

    architecture: str = "segresnet"
    init_filters: int = 8


@dataclass(frozen=True)
class SegLoopConfig:
    """The loop (Adam with weight decay, cosine learning rate over ``epochs``)."""

    epochs: int = 40
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-5
    device: str = "auto"
    threads: int = 0
    eval_every: int = 1
    checkpoint_every: int = 1


@dataclass(frozen=True)
class SegTrainConfig:
    """A whole segmentation run."""

    name: str = "seg"
    seed: int = 0
    regions: tuple[str, ...] = ("WT", "TC", "ET")
    data: SegDataConfig = field(default_factory=SegDataConfig)
    model: SegModelConfig = field(default_factory=SegModelConfig)
    train: SegLoopConfig = field(default_factory=SegLoopConfig)
    loss: Any = "dice_bce"

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def validate(self) -> SegTrainConfig:
        """Check names and ranges.

        Raises:
            ValueError: naming the key and the value found (the loss error lists the registry).
        """
        if self.model.architecture not in ARCHITECTURES:
            raise ValueError(
                f"model.architecture is {self.model.architecture!r}; expected one of {list(ARCHITECTURES)}"
            )
        if self.train.device not in DEVICES:
            raise ValueError(f"train.device is {self.train.device!r}; expected one of {list(DEVICES)}")
        if set(self.regions) != {"WT", "TC", "ET"}:
            raise ValueError(f"regions is {list(self.regions)}; expected an order of WT, TC, ET")
        if isinstance(self.loss, str):
            check_loss_name(self.loss, "segmentation")
        elif isinstance(self.loss, dict) and "name" in self.loss:
            check_loss_name(str(self.loss["name"]), "segmentation")
        elif not (isinstance(self.loss, dict) and "channels" in self.loss):
            raise ValueError(
                f"loss is {self.loss!r}; expected a registered name, {{name: ...}} or {{channels: ...}}"
            )
        if any(int(g) % 8 for g in self.data.grid):
            raise ValueError(
                f"data.grid is {list(self.data.grid)}; every side must be a multiple of 8 (3 poolings)"
            )
        if self.data.root is None and self.data.synthetic < 2:
            raise ValueError("data.root is null and data.synthetic < 2: no exams to train on")
        if self.train.epochs < 1 or self.train.batch_size < 1 or self.train.lr <= 0:
            raise ValueError("train.epochs and train.batch_size must be >= 1 and train.lr > 0")
        if not 0.0 < self.data.val_fraction < 1.0 and not self.data.val_cases:
            raise ValueError(f"data.val_fraction is {self.data.val_fraction}; expected within (0, 1)")
        return self


def load_seg_config(path: str | Path | None, overrides: list[str] | None = None) -> SegTrainConfig:
    """A config from YAML (``None``: the defaults) with overrides (a relative ``data.root`` is taken from the
    working directory, like any path given on the command line).

    Raises:
        ValueError: invalid content.
    """
    import yaml

    raw: dict[str, Any] = {}
    if path is not None:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"config file {str(path)!r} must hold a mapping")
    raw = apply_overrides(raw, overrides or [])
    cfg: SegTrainConfig = from_dict(SegTrainConfig, raw)
    return cfg.validate()


def save_seg_config(cfg: SegTrainConfig, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
