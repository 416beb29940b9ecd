"""Weights registry: where each model's trained weights come from, and their checksums.

The default entry is the weights file shipped inside the authors' PyPI package ``deep-quality-estimation``
0.0.3. It is located through the installed package (without importing it, which would import torch and
MONAI) and verified against its sha256 before anything uses it.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from dqe.models.errors import IntegrityError, NotFound


@dataclass(frozen=True)
class WeightsEntry:
    """One registered set of weights.

    ``package``/``resource`` locate a file inside an installed distribution; ``path`` a file on disk.
    """

    model_id: str
    sha256: str
    architecture: str = "densenet121"
    in_channels: int = 7
    package: str | None = None
    resource: str | None = None
    path: str | None = None
    license: str = ""
    source: str = ""
    notes: str = ""


DEFAULT_MODEL_ID = "dqe-brainles-0.0.3"

REGISTRY: dict[str, WeightsEntry] = {
    DEFAULT_MODEL_ID: WeightsEntry(
        model_id=DEFAULT_MODEL_ID,
        sha256="6d35ecc74095594d68d6ef2e1a49e7772c84aff9d8882dae84eb7c9516825f2c",
        package="deep_quality_estimation",
        resource="weights/dqe_weights.pth",
        license="Apache-2.0",
        source="PyPI deep-quality-estimation==0.0.3 (BrainLesion/deep_quality_estimation)",
        notes=(
            "Trained on individual neuroradiologists' ratings; the authors warn it is biased to overestimate "
            "segmentation quality because it saw few bad segmentations."
        ),
    )
}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def get_entry(model_id: str) -> WeightsEntry:
    try:
        return REGISTRY[model_id]
    except KeyError:
        raise NotFound(
            f"model {model_id!r} is not registered; known: {sorted(REGISTRY)}", field="model_id"
        ) from None


def register(entry: WeightsEntry) -> None:
    """Add an entry (e.g. a checkpoint from the training pipeline) for this process."""
    REGISTRY[entry.model_id] = entry


def locate_weights(entry: WeightsEntry, verify: bool = True) -> Path:
    """The weights file of ``entry``, checksum-verified.

    Raises:
        NotFound: the package is not installed or the file is missing.
        IntegrityError: the sha256 differs from the registered one.
    """
    if entry.path is not None:
        path = Path(entry.path)
    elif entry.package is not None and entry.resource is not None:
        spec = importlib.util.find_spec(entry.package)
        if spec is None or not spec.submodule_search_locations:
            raise NotFound(
                f"package {entry.package!r} is not installed; install the export extra "
                "(pip install 'dqe-service[export]') to build model {entry.model_id!r}",
                field="model_id",
            )
        path = Path(next(iter(spec.submodule_search_locations))) / entry.resource
    else:
        raise NotFound(f"model {entry.model_id!r} names no weights file", field="model_id")
    if not path.is_file():
        raise NotFound(
            f"weights file {str(path)!r} for model {entry.model_id!r} does not exist", field="model_id"
        )
    if verify:
        found = sha256_file(path)
        if found != entry.sha256:
            raise IntegrityError(
                f"weights file {str(path)!r} has sha256 {found}; registry expects {entry.sha256}",
                field="model_id",
            )
    return path
