"""Put a trained run into production: ONNX export with the parity check, card with training provenance.

The published directory (``<model home>/models/<model_id>/``) holds ``model.onnx``, the run's
``contract.json`` and a ``card.json`` whose ``training`` section records the run (config digest, seed, data
hash, code version, held-out metrics). The engine loads it by id — ``Engine(EngineConfig(model_id=ID))`` or
``dqe serve --model ID`` — with no code change, whatever the run's contract (channels, normalisation).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dqe.models.contract import PreprocessingContract
from dqe.models.export import export_model
from dqe.models.registry import WeightsEntry, register, sha256_file
from dqe.training.trainer import CHECKPOINT, WEIGHTS, RunError

if TYPE_CHECKING:
    from dqe.models.artifacts import ModelArtifacts

logger = logging.getLogger(__name__)


def run_weights(run_dir: Path) -> Path:
    """The final weights of a finished run (``model.pth``).

    Raises:
        RunError: the run has not finished (only a checkpoint exists) or there is nothing at all.
    """
    weights = run_dir / WEIGHTS
    if weights.is_file():
        return weights
    if (run_dir / CHECKPOINT).is_file():
        raise RunError(
            f"run {str(run_dir)!r} has not finished (no {WEIGHTS}); resume it with `dqe train --resume`"
        )
    raise RunError(f"{str(run_dir)!r} holds no training run")


def training_card(run_dir: Path) -> dict[str, Any]:
    """The ``training`` section of the model card, from the run's records."""
    record = json.loads((run_dir / "run.json").read_text())
    keep = (
        "name", "seed", "config_digest", "data_hash", "code_version", "versions", "ratings", "n_ratings",
        "n_segmentations", "train_exams", "val_exams", "device", "started_at", "finished_at", "frozen_prefix",
        "final", "finetune",
    )  # fmt: skip
    card = {k: record[k] for k in keep if k in record}
    card["run_dir"] = str(run_dir.resolve())
    card["config"] = (run_dir / "config.yaml").read_text()
    return card


def publish_run(
    run_dir: str | Path,
    model_id: str,
    home: Path | None = None,
    force: bool = False,
    extra_cases: Sequence[Path] = (),
    notes: str = "",
) -> ModelArtifacts:
    """Export a finished run as model ``model_id`` (ONNX parity-checked) and register its weights.

    Raises:
        RunError: the run is unfinished.
        ParityError: ONNX Runtime does not reproduce torch; nothing is published.
        ValueError: ``model_id`` is not a plain name.
    """

    run_dir = Path(run_dir)
    weights = run_weights(run_dir)
    record = json.loads((run_dir / "run.json").read_text())
    contract = PreprocessingContract.from_dict(record["contract"])
    import yaml

    architecture = str(yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["architecture"])
    entry = WeightsEntry(
        model_id=model_id,
        sha256=sha256_file(weights),
        architecture=architecture,
        in_channels=contract.n_channels,
        path=str(weights.resolve()),
        source=f"dqe train run {run_dir.resolve()}",
        notes=notes or f"trained with the dqe training pipeline ({record.get('name', '')})",
    )
    register(entry)
    logger.info(
        "exporting run %s as %s (%s, %d channels)", run_dir, model_id, architecture, contract.n_channels
    )
    return export_model(
        model_id,
        home=home,
        entry=entry,
        contract=contract,
        extra_cases=extra_cases,
        force=force,
        card_extra={"training": training_card(run_dir)},
    )
