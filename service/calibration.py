"""Measure each precision mode's error against fp32 on real cases and record it in the model card.

The figures land in ``card.json`` under ``precision_errors[<mode>]`` (``bf16``, ``fp16``, ``fp32-openvino``):
max and mean |delta| in stars per view and per case mean, against the ONNX Runtime fp32 reference-parity
mode on the same preprocessed views. The card is rewritten atomically (temporary file + ``os.replace``,
under a lock on the model folder) after checking that ``model.onnx`` still matches the card's ``onnx_sha256``, which is
kept unchanged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dqe.models.artifacts import CARD_NAME, ModelArtifacts
from dqe.models.case import Case, classify_filename, discover_files
from dqe.models.errors import DQEError, InvalidInput
from dqe.models.registry import DEFAULT_MODEL_ID
from dqe.service.backends import mode_config
from dqe.service.engine import Engine, EngineConfig
from dqe.service.hardware import detect

if TYPE_CHECKING:
    from dqe.service.engine import Engine, EngineConfig

logger = logging.getLogger(__name__)

BUDGET_STARS = 0.01
# Folders that hold segmentations next to (or one level above) a folder of images.
SEGMENTATION_DIRS = ("segmentation", "segmentations", "fusion", "outputs", "labels")


@dataclass(frozen=True)
class RealCase:
    """One (images, segmentation) pair: ``files`` maps t1c/t1/t2/flair/segmentation to paths."""

    name: str
    files: dict[str, Path]


def _nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith((".nii", ".nii.gz"))


def discover_cases(root: str | Path) -> list[RealCase]:
    """Every (images, segmentation) pair under ``root``.

    A folder whose file names give exactly one t1c, t1, t2 and flair is a set of images; its
    segmentations are the files in it named as segmentations plus every NIfTI file in a folder named
    ``segmentation``/``fusion``/``outputs``/... beside it or beside its parent (BraTS Toolkit and BraTS
    output layouts). Folders that are not image sets (brain masks, atlases) are skipped.
    """

    root = Path(root)
    cases: list[RealCase] = []
    if not root.is_dir():
        return cases
    for folder in sorted(p for p in [root, *root.rglob("*")] if p.is_dir()):
        try:
            images = discover_files(folder, require_segmentation=False)
        except DQEError:
            continue
        images = {k: v for k, v in images.items() if k != "segmentation"}
        segs = [
            p for p in sorted(folder.iterdir()) if _nifti(p) and classify_filename(p.name) == "segmentation"
        ]
        for base in (folder.parent, folder.parent.parent):
            for name in SEGMENTATION_DIRS:
                extra = base / name
                if extra.is_dir() and extra != folder:
                    segs.extend(p for p in sorted(extra.iterdir()) if _nifti(p))
        seen: set[Path] = set()
        for seg in segs:
            if seg in seen:
                continue
            seen.add(seg)
            label = str(seg.relative_to(root)).split(".")[0]
            cases.append(RealCase(name=label, files={**images, "segmentation": seg}))
    return cases


def preprocessed_views(engine: Engine, cases: Sequence[RealCase]) -> np.ndarray:
    """``(n_cases, 3, C, H, W)`` float32 views of ``cases`` (decoded and preprocessed once)."""

    out = []
    for case in cases:
        views, _ = engine.preprocess(Case.from_files(**case.files, case_id=case.name))  # type: ignore[arg-type]
        out.append(np.stack(views))
    return np.stack(out)


def stars_per_case(engine: Engine, views: np.ndarray) -> np.ndarray:
    """``(n_cases, 3)`` stars, one 3-view batch per case as the service runs them."""
    return np.stack([engine.run(v) for v in views])


def error_stats(stars: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Max and mean |delta| in stars per view and per case mean of ``stars`` against ``reference``."""
    delta = np.abs(stars.astype(np.float64) - reference.astype(np.float64))
    case_delta = np.abs(stars.astype(np.float64).mean(axis=1) - reference.astype(np.float64).mean(axis=1))
    return {
        "max_abs_stars": float(delta.max()),
        "mean_abs_stars": float(delta.mean()),
        "max_abs_mean_stars": float(case_delta.max()),
        "n_views": int(delta.size),
        "n_cases": int(stars.shape[0]),
    }


def available_modes() -> list[str]:
    """The non-reference modes this machine runs: ``fp32-openvino``, ``bf16``, ``fp16`` as supported."""

    hw = detect()
    modes = []
    if hw.openvino is not None:
        modes.append("fp32-openvino")
    if hw.bf16_support()[0]:
        modes.append("bf16")
    if hw.fp16_support()[0]:
        modes.append("fp16")
    return modes


def calibrate(
    modes: Sequence[str],
    cases: Sequence[RealCase],
    model_id: str | None = None,
    threads: int = 0,
    budget: float = BUDGET_STARS,
    source: str = "",
) -> dict[str, dict[str, Any]]:
    """Each mode's error against ONNX Runtime fp32 on ``cases``: ``{mode: card entry}``.

    Raises:
        UnsupportedMode: a mode this machine cannot run.
        InvalidInput: no cases.
    """

    if not cases:
        raise InvalidInput("no real cases to calibrate on", field="cases")
    base = EngineConfig(model_id=model_id or DEFAULT_MODEL_ID, intra_op_threads=threads, providers=("cpu",))
    reference = Engine(base)
    views = preprocessed_views(reference, cases)
    ref_stars = stars_per_case(reference, views)
    hw = detect()
    entries: dict[str, dict[str, Any]] = {}
    for mode in modes:
        precision, backend = mode_config(mode)
        engine = Engine(_config(base, precision, backend))
        stats = error_stats(stars_per_case(engine, views), ref_stars)
        runtime = engine.backend.describe()
        entries[mode] = {
            **stats,
            "backend": engine.backend.name,
            "precision": engine.backend.precision,
            "providers": list(engine.backend.providers),
            "runtime_version": runtime.get("openvino") or _ort_version(),
            "against": "fp32 onnxruntime CPUExecutionProvider on the same preprocessed views",
            "budget_stars": budget,
            "within_budget": stats["max_abs_stars"] <= budget,
            "cpu": hw.cpu.model,
            "cpu_flags": hw.cpu.summary()["flags"],
            "cases": source or f"{len(cases)} real segmentations",
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        logger.info(
            "mode %s: max |delta| %.3g stars, mean %.3g over %d views",
            mode,
            stats["max_abs_stars"],
            stats["mean_abs_stars"],
            stats["n_views"],
        )
    return entries


def _config(base: EngineConfig, precision: str, backend: str) -> EngineConfig:
    import dataclasses

    providers = ("auto",) if precision == "fp16" else ("cpu",)
    return dataclasses.replace(base, precision=precision, backend=backend, providers=providers)


def _ort_version() -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__}"


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory lock, os.replace is still atomic
        yield
        return
    fd = os.open(directory, os.O_RDONLY)  # lock the folder itself: no lock file is left behind
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_precision_errors(directory: str | Path, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Merge ``entries`` into ``card.json``'s ``precision_errors`` by an atomic rewrite; returns the card.

    Raises:
        dqe.models.errors.IntegrityError: ``model.onnx`` does not match the card's ``onnx_sha256`` (nothing is
            written).
        ModelNotReady: the directory is not a published model.
    """

    directory = Path(directory)
    with _locked(directory):
        art = ModelArtifacts.load(directory, verify=True)  # raises on a stale or tampered model.onnx
        card = json.loads((directory / CARD_NAME).read_text())
        recorded = dict(card.get("precision_errors") or {})
        recorded.update(entries)
        card["precision_errors"] = recorded
        mode = (directory / CARD_NAME).stat().st_mode & 0o777
        fd, tmp = tempfile.mkstemp(prefix=".card.", suffix=".json", dir=directory)
        try:
            os.chmod(tmp, mode)  # mkstemp makes 0600; keep the card readable as it was
            with os.fdopen(fd, "w") as fh:
                json.dump(card, fh, indent=2)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, directory / CARD_NAME)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    logger.info("recorded precision errors %s in %s", sorted(entries), art.directory / CARD_NAME)
    return card
