"""Export a registered model to a single-file ONNX model, verify parity, publish it in the model home.

Publishing is atomic: files are written to a temporary directory that is renamed into place only after
ONNX Runtime reproduces torch's stars on real preprocessed inputs within ``PARITY_TOLERANCE``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dqe.models.artifacts import CARD_NAME, CONTRACT_NAME, ONNX_NAME, ModelArtifacts, model_dir
from dqe.models.contract import CONTRACT_V1, PreprocessingContract
from dqe.models.errors import DQEError
from dqe.models.network import build_network, load_state_dict
from dqe.models.phantom import make_phantom
from dqe.models.preprocess import build_views
from dqe.models.registry import DEFAULT_MODEL_ID, WeightsEntry, get_entry, locate_weights, sha256_file

logger = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-5  # stars
OPSET = 18


class ParityError(DQEError):
    """ONNX Runtime does not reproduce torch within the tolerance; nothing was published."""

    code = "FAILED_PRECONDITION"


def parity_inputs(
    contract: PreprocessingContract = CONTRACT_V1, extra_cases: Sequence[Path] = ()
) -> np.ndarray:
    """Preprocessed views used to check parity: three phantom exams, plus any real case folders given."""
    views: list[np.ndarray] = []
    for seed, lesion in ((0, "sphere"), (1, "lobulated"), (2, "multifocal")):
        ph = make_phantom(seed=seed, lesion=lesion, shape=tuple(contract.expected_grid))  # type: ignore[arg-type]
        v, _ = build_views([ph.t1c, ph.t1, ph.t2, ph.flair], ph.segmentation, contract)
        views.extend(v)
    for folder in extra_cases:
        from dqe.models.case import (  # lazy: NIfTI stack (nibabel, scipy) loads only where a case is decoded
            Case,  # optional: only when real cases are given  # lazy: decoding stack (nibabel, scipy) only where a case is decoded
        )

        case = Case.from_folder(folder)
        v, _ = build_views(case.images, case.labels, contract)
        views.extend(v)
    return np.stack(views).astype(np.float32)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout (Python and C level: torch.onnx prints its progress) to stderr, so
    the stdout of a command that prints JSON carries only that JSON, even when it exports on first use."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _export_onnx(net: torch.nn.Module, path: Path, opset: int) -> None:
    with _stdout_to_stderr():
        _export_onnx_program(net, path, opset)


def _export_onnx_program(net: torch.nn.Module, path: Path, opset: int) -> None:
    net = net.eval()
    example = torch.zeros(2, _in_channels(net), 240, 240)
    batch = torch.export.Dim("batch", min=1, max=1024)
    height = torch.export.Dim("height", min=32, max=1024)
    width = torch.export.Dim("width", min=32, max=1024)
    program = torch.onnx.export(
        net,
        (example,),
        dynamo=True,
        external_data=False,
        opset_version=opset,
        input_names=["views"],
        output_names=["stars"],
        dynamic_shapes={"x": {0: batch, 2: height, 3: width}},
        optimize=True,
    )
    assert program is not None
    program.save(str(path), external_data=False)


def _in_channels(net: torch.nn.Module) -> int:
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            return int(module.in_channels)
    raise ValueError("network has no Conv2d layer")


def check_parity(net: torch.nn.Module, onnx_path: Path, inputs: np.ndarray) -> float:
    """Largest |torch - ONNX Runtime| in stars over ``inputs`` (run one view at a time in torch)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = np.concatenate([net(torch.from_numpy(v[None])).numpy().ravel() for v in inputs])
    got = session.run(None, {session.get_inputs()[0].name: inputs})[0].ravel()
    return float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64))))


def export_model(
    model_id: str = DEFAULT_MODEL_ID,
    home: Path | None = None,
    entry: WeightsEntry | None = None,
    contract: PreprocessingContract = CONTRACT_V1,
    extra_cases: Sequence[Path] = (),
    opset: int = OPSET,
    force: bool = False,
    card_extra: dict[str, Any] | None = None,
) -> ModelArtifacts:
    """Build ``model.onnx`` + ``contract.json`` + ``card.json`` for ``model_id`` and publish them.

    Raises:
        ParityError: ONNX Runtime differs from torch by more than ``PARITY_TOLERANCE`` stars.
        NotFound / IntegrityError: the weights are missing or fail their checksum.
    """
    entry = entry or get_entry(model_id)
    target = model_dir(model_id, home)
    if target.exists() and not force and (target / CARD_NAME).is_file():
        return ModelArtifacts.load(target)
    weights = locate_weights(entry)
    net = build_network(entry.architecture, entry.in_channels)
    net.load_state_dict(load_state_dict(weights), strict=True)
    net.eval()

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model_id}-", dir=target.parent))
    try:
        onnx_path = staging / ONNX_NAME
        logger.info("exporting %s to ONNX (opset %d)", model_id, opset)
        _export_onnx(net, onnx_path, opset)
        inputs = parity_inputs(contract, extra_cases)
        diff = check_parity(net, onnx_path, inputs)
        logger.info("parity torch vs ONNX Runtime: max |diff| = %.3g stars over %d views", diff, len(inputs))
        if not diff <= PARITY_TOLERANCE:
            raise ParityError(
                f"ONNX Runtime differs from torch by {diff:.3g} stars (tolerance {PARITY_TOLERANCE}); not published"
            )
        contract.to_json(staging / CONTRACT_NAME)
        card = {
            "model_id": model_id,
            "architecture": entry.architecture,
            "in_channels": entry.in_channels,
            "source": entry.source,
            "license": entry.license,
            "notes": entry.notes,
            "weights_sha256": entry.sha256,
            "onnx_sha256": sha256_file(onnx_path),
            "opset": opset,
            "input": {
                "name": "views",
                "shape": ["batch", entry.in_channels, "height", "width"],
                "dtype": "float32",
            },
            "output": {"name": "stars", "shape": ["batch", 1], "dtype": "float32"},
            "exporter": f"torch {torch.__version__} torch.onnx.export(dynamo=True, external_data=False)",
            "parity": {
                "max_abs_diff_stars": diff,
                "tolerance_stars": PARITY_TOLERANCE,
                "n_views": int(len(inputs)),
                "inputs": f"views of 3 seeded phantoms + {len(extra_cases)} real case(s), via contract {contract.version}",
            },
            "contract_version": contract.version,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **(card_extra or {}),
        }
        (staging / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ModelArtifacts.load(target)
