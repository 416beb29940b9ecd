"""Exported model artifacts in the model home: ``model.onnx``, ``contract.json`` and ``card.json``.

The model home is ``$DQE_HOME`` or the user cache directory (``~/.cache/dqe`` on Linux). Each model lives in
``<home>/models/<model_id>/``. This module needs neither torch nor onnxruntime.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dqe.models.contract import PreprocessingContract
from dqe.models.errors import IntegrityError, ModelNotReady
from dqe.models.registry import sha256_file

ONNX_NAME = "model.onnx"
CONTRACT_NAME = "contract.json"
CARD_NAME = "card.json"


def model_home() -> Path:
    """``$DQE_HOME`` if set, else the platform's user cache directory for ``dqe``."""
    env = os.environ.get("DQE_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("dqe"))


def model_dir(model_id: str, home: Path | None = None) -> Path:
    if not model_id or "/" in model_id or model_id.startswith("."):
        raise ValueError(f"model id {model_id!r} is not a plain name")
    return (home or model_home()) / "models" / model_id


@dataclass(frozen=True)
class ModelArtifacts:
    """A published model: its ONNX file, preprocessing contract and card."""

    model_id: str
    directory: Path
    contract: PreprocessingContract
    card: dict[str, Any]

    @property
    def onnx_path(self) -> Path:
        return self.directory / ONNX_NAME

    @property
    def onnx_sha256(self) -> str:
        return str(self.card["onnx_sha256"])

    @property
    def weights_sha256(self) -> str:
        return str(self.card.get("weights_sha256", ""))

    @classmethod
    def load(cls, directory: Path, verify: bool = True) -> ModelArtifacts:
        """Read a published model directory.

        Raises:
            ModelNotReady: a file is missing.
            IntegrityError: ``model.onnx`` does not match the sha256 in its card.
        """
        missing = [n for n in (ONNX_NAME, CONTRACT_NAME, CARD_NAME) if not (directory / n).is_file()]
        if missing:
            raise ModelNotReady(f"model directory {str(directory)!r} lacks {missing}; run `dqe model export`")
        card = json.loads((directory / CARD_NAME).read_text())
        if verify:
            found = sha256_file(directory / ONNX_NAME)
            if found != card.get("onnx_sha256"):
                raise IntegrityError(
                    f"{directory / ONNX_NAME} has sha256 {found}; its card records {card.get('onnx_sha256')}"
                )
        contract = PreprocessingContract.from_json(directory / CONTRACT_NAME)
        return cls(model_id=card["model_id"], directory=directory, contract=contract, card=card)


def find_model(model_id: str, home: Path | None = None) -> ModelArtifacts | None:
    """The published model ``model_id`` in the model home, or ``None`` when it has not been built."""
    directory = model_dir(model_id, home)
    if not (directory / CARD_NAME).is_file():
        return None
    return ModelArtifacts.load(directory)


def ensure_model(model_id: str, home: Path | None = None, build: bool = True) -> ModelArtifacts:
    """The published model, exported on first use when torch is available.

    Raises:
        ModelNotReady: not built and it cannot be built here (no torch / reference package).
    """
    found = find_model(model_id, home)
    if found is not None:
        return found
    if not build:
        raise ModelNotReady(
            f"model {model_id!r} is not built in {str(model_home())!r}; run `dqe model export`"
        )
    try:
        from dqe.models.export import (  # lazy: torch (export extra only): never loaded by the server or the client
            export_model,  # lazy: torch (export/train extras only): keeps the CLI, the server and the client torch-free
        )
    except ImportError as exc:
        raise ModelNotReady(
            f"model {model_id!r} is not built and export needs the export extra ({exc}); "
            "run `pip install 'dqe-service[export]'` then `dqe model export`"
        ) from exc
    return export_model(model_id, home=home)
