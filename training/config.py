"""Training configuration: frozen dataclasses read from YAML, with ``section.key=value`` overrides.

A config file has the sections below; unknown keys are errors, so a typo cannot silently fall back to a
default. ``training/configs/paper.yaml`` is the paper's recipe, ``training/configs/smoke.yaml`` a tiny run.
The resolved config (file + overrides) is saved in every run directory and is what ``--resume`` reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dqe.models.contract import CONTRACT_V1, PreprocessingContract
from dqe.training.losses import check_loss_name

LABEL_ENCODINGS = ("brats", "wt", "tissue")
NORMALIZATIONS = ("percentile", "minmax")
OPTIMIZERS = ("ranger21", "adamw", "sgd")
TARGETS = ("rater", "mean")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ModelConfig:
    """The network.

    Attributes:
        architecture: ``densenet121`` (the paper's pick) or ``densenet201``.
        init: ``null`` (random), ``released`` (the published ``dqe-brainles-0.0.3`` weights) or a path to a
            ``.pth`` state dict / training checkpoint.
        freeze_until: name of the first trainable block of ``features`` (e.g. ``denseblock4``); everything
            before it is frozen and run in eval mode. ``null`` trains the whole network.
        bn_eval: keep every BatchNorm in eval mode (running statistics) while training; useful when
            fine-tuning on a handful of samples.
    """

    architecture: str = "densenet121"
    init: str | None = None
    freeze_until: str | None = None
    bn_eval: bool = False


@dataclass(frozen=True)
class ContractConfig:
    """How views are built (turned into a :class:`PreprocessingContract`, saved with the model).

    Attributes:
        labels: ``brats`` (TC/WT/ET, 7 channels), ``wt`` (one binary whole-tumour channel, 5 channels) or
            ``tissue`` (one channel coding the tissue labels; needs contract support, see :func:`build_contract`).
        normalization: ``percentile`` (joint 0.5/99.5 percentiles, the default) or ``minmax`` (per channel).
        overrides: any other :class:`PreprocessingContract` field, e.g. ``spatial_size`` for small grids.
    """

    labels: str = "brats"
    normalization: str = "percentile"
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SyntheticConfig:
    """A generated ratings table of phantom exams (for smoke runs and tests); see :mod:`dqe.training.synthetic`."""

    exams: int = 6
    grid: tuple[int, int, int] = (64, 64, 48)
    raters: int = 2
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    """Where the ratings come from and how they become targets.

    Attributes:
        ratings: CSV or Parquet table (columns in :data:`dqe.training.data.COLUMNS`); relative paths inside it
            are resolved against the table's folder. Ignored when ``synthetic`` is set.
        synthetic: generate a phantom ratings table in the run directory instead.
        targets: ``rater`` (one sample per individual rating, as the released model was trained) or ``mean``
            (one sample per rated view with the raters' mean).
        val_fraction: fraction of exams held out, split by exam with ``seed``.
        val_exams: explicit held-out exam ids (overrides ``val_fraction``).
        cache_dir: where preprocessed views are cached (default ``RUN_DIR/cache``).
    """

    ratings: str | None = None
    synthetic: SyntheticConfig | None = None
    targets: str = "rater"
    val_fraction: float = 0.2
    val_exams: tuple[str, ...] = ()
    cache_dir: str | None = None


@dataclass(frozen=True)
class AugmentConfig:
    """The augmentation pipeline: a list of ``{name, p, ...}`` (see :data:`dqe.training.transforms.TRANSFORMS`)."""

    enabled: bool = True
    transforms: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser: ``ranger21`` (pytorch-optimizer), ``adamw`` or ``sgd`` (with ``momentum``)."""

    name: str = "ranger21"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.95


@dataclass(frozen=True)
class TrainLoopConfig:
    """The loop.

    Attributes:
        epochs: passes over the training samples (paper: 500, last checkpoint kept, no model selection).
        batch_size: samples per step (paper: 80).
        num_workers: DataLoader worker processes for augmentation (0 = in the main process).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        amp: bfloat16 autocast on CUDA.
        eval_batch_size: views per forward pass when evaluating.
        threads: torch intra-op threads on CPU (0 = torch's default).
        eval_every: validate every this many epochs (and always after the last); rows in between have
            NaN in the validation columns.
        checkpoint_every: write ``checkpoints/last.pt`` every this many epochs (and after the last).
    """

    epochs: int = 500
    batch_size: int = 80
    num_workers: int = 4
    device: str = "auto"
    amp: bool = False
    eval_batch_size: int = 32
    threads: int = 0
    eval_every: int = 1
    checkpoint_every: int = 1


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run."""

    name: str = "dqe"
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    contract: ContractConfig = field(default_factory=ContractConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    loss: str = "mse"  # a regression loss of the registry (dqe.training.losses.LOSSES): mse, l1, huber

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def digest(self) -> str:
        """sha256 of the canonical JSON of the config (run identity, ignoring nothing)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def validate(self) -> TrainConfig:
        """Check enumerations and ranges.

        Raises:
            ValueError: naming the key and the value found.
        """
        checks = [
            ("model.architecture", self.model.architecture.lower(), ("densenet121", "densenet201")),
            ("contract.labels", self.contract.labels, LABEL_ENCODINGS),
            ("contract.normalization", self.contract.normalization, NORMALIZATIONS),
            ("optim.name", self.optim.name.lower(), OPTIMIZERS),
            ("data.targets", self.data.targets, TARGETS),
            ("train.device", self.train.device, DEVICES),
        ]
        for key, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{key} is {value!r}; expected one of {list(allowed)}")
        check_loss_name(self.loss, "regression")
        if not 0.0 <= self.data.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction is {self.data.val_fraction}; expected within [0, 1)")
        if self.train.eval_every < 1 or self.train.checkpoint_every < 1:
            raise ValueError(
                f"train.eval_every and train.checkpoint_every must be >= 1; got {self.train.eval_every}, "
                f"{self.train.checkpoint_every}"
            )
        if self.train.epochs < 1 or self.train.batch_size < 1:
            raise ValueError(
                f"train.epochs and train.batch_size must be >= 1; got {self.train.epochs}, {self.train.batch_size}"
            )
        if self.optim.lr <= 0:
            raise ValueError(f"optim.lr is {self.optim.lr}; expected > 0")
        return self


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively (for YAML/JSON)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass inside ``X`` or ``X | None`` annotations, else ``None``."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg) and isinstance(arg, type):
                return arg
    return None


def _is_tuple(tp: Any) -> bool:
    if typing.get_origin(tp) is tuple:
        return True
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return any(typing.get_origin(a) is tuple for a in typing.get_args(tp))
    return False


def from_dict(cls: type, data: dict[str, Any] | None, where: str = "") -> Any:
    """Fill dataclass ``cls`` from a nested dict, rejecting unknown keys.

    Raises:
        ValueError: unknown key (naming it and the known ones) or a section that is not a mapping.
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"config section {where or 'root'!r} must be a mapping; got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(
            f"config {where or 'root'} has unknown keys {sorted(unknown)}; expected {sorted(known)}"
        )
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        tp = hints[key]
        sub = _dataclass_of(tp)
        path = f"{where}.{key}" if where else key
        if sub is not None and value is not None:
            kwargs[key] = from_dict(sub, value, path)
        elif _is_tuple(tp) and isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=3"`` -> (``["train", "epochs"]``, 3); the value is parsed as YAML.

    Raises:
        ValueError: no ``=`` in the text.
    """
    import yaml

    if "=" not in text:
        raise ValueError(f"override {text!r} is not KEY=VALUE (e.g. train.epochs=3)")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of a config dict with ``section.key=value`` overrides applied."""
    out = json.loads(json.dumps(data))
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config file and apply overrides.

    Relative ``data.ratings`` paths are resolved against the config file's folder.

    Raises:
        FileNotFoundError: no such file.
        ValueError: invalid content.
    """
    import yaml

    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping")
    raw = apply_overrides(raw, overrides or [])
    cfg: TrainConfig = from_dict(TrainConfig, raw)
    ratings = cfg.data.ratings
    if ratings and not Path(ratings).is_absolute():
        resolved = (path.parent / ratings).resolve()
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, ratings=str(resolved)))
    return cfg.validate()


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def replace(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """``cfg`` with ``section.key=value`` overrides applied."""
    out: TrainConfig = from_dict(TrainConfig, apply_overrides(cfg.to_dict(), overrides))
    return out.validate()


def build_contract(cfg: ContractConfig) -> PreprocessingContract:
    """The preprocessing contract a config asks for (saved beside the exported model).

    ``tissue`` needs a contract that can write one channel with several values; the current
    :class:`PreprocessingContract` only writes binary channels, so it is accepted only when the contract
    has a ``label_encoding`` field (see the training README notes).

    Raises:
        ValueError: unknown encoding/normalisation, an unsupported ``tissue`` request or a bad override.
    """
    data = CONTRACT_V1.to_dict()
    if cfg.labels == "wt":
        data["label_channels"] = ["WT"]
        data["label_map"] = {"WT": [1, 2, 3, 4]}
    elif cfg.labels == "tissue":
        if "label_encoding" not in PreprocessingContract.__dataclass_fields__:
            raise ValueError(
                "contract.labels 'tissue' (one channel coding necrosis/edema/enhancing as distinct values) needs "
                "a label_encoding field in dqe.models.contract.PreprocessingContract, which this version lacks; use "
                "'wt' for a single binary whole-tumour channel or 'brats' for TC/WT/ET"
            )
        data["label_channels"] = ["tissue"]
        data["label_map"] = {"tissue": [1, 2, 3, 4]}
        data["label_encoding"] = "tissue"
    elif cfg.labels != "brats":
        raise ValueError(f"contract.labels is {cfg.labels!r}; expected one of {list(LABEL_ENCODINGS)}")
    if cfg.normalization not in NORMALIZATIONS:
        raise ValueError(
            f"contract.normalization is {cfg.normalization!r}; expected one of {list(NORMALIZATIONS)}"
        )
    data["normalization"] = cfg.normalization
    data["lower_percentile"] = float(cfg.lower_percentile)
    data["upper_percentile"] = float(cfg.upper_percentile)
    data.update(cfg.overrides)
    tag = f"{cfg.labels}-{cfg.normalization}"
    if tag != "brats-percentile" or cfg.overrides:
        data["version"] = f"{CONTRACT_V1.version}+{tag}"
    try:
        return PreprocessingContract.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"contract overrides are invalid: {exc}") from None
