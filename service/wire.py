"""The wire contract's conversions: domain types <-> ``dqe.v1`` messages, for the servicer and the client.

One module for both directions, so the server and the SDK cannot drift apart. Imports protobuf and numpy
and the core's result types only (no grpc, no engine).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dqe.models.errors import DQEError, InvalidInput
from dqe.models.qc.types import Check, GateResult, Verdict
from dqe.models.result import ScoreResult
from dqe.service._proto import quality_estimation_pb2 as pb

_VERDICTS = {"pass": pb.VERDICT_PASS, "review": pb.VERDICT_REVIEW, "fail": pb.VERDICT_FAIL}
_SEVERITIES = {"info": pb.SEVERITY_INFO, "review": pb.SEVERITY_REVIEW, "fail": pb.SEVERITY_FAIL}
_VERDICT_NAMES = {v: k for k, v in _VERDICTS.items()}
_SEVERITY_NAMES = {v: k for k, v in _SEVERITIES.items()}
_DTYPES: dict[int, np.dtype[Any]] = {pb.DTYPE_FLOAT32: np.dtype("<f4"), pb.DTYPE_FLOAT16: np.dtype("<f2")}


def gate_to_proto(gate: Any) -> pb.QCGate:
    """A :class:`dqe.models.qc.types.GateResult` as a ``QCGate`` message."""
    verdict = getattr(gate.verdict, "value", gate.verdict)
    msg = pb.QCGate(
        verdict=_VERDICTS.get(str(verdict), pb.VERDICT_UNSPECIFIED),
        gate_score=float(gate.gate_score),
        reasons=[str(r) for r in gate.reasons],
        star_threshold=float(getattr(gate, "star_threshold", 0.0)),
        elapsed_ms=float(getattr(gate, "elapsed_ms", 0.0)),
    )
    for c in gate.checks:
        msg.checks.append(
            pb.QCCheck(
                name=c.name,
                value=float(c.value),
                threshold=float(c.threshold),
                passed=bool(c.passed),
                severity=_SEVERITIES.get(str(c.severity), pb.SEVERITY_UNSPECIFIED),
                message=c.message,
                unit=c.unit,
            )
        )
    return msg


def result_to_proto(result: ScoreResult, model: pb.ModelRef, request_id: str = "") -> pb.ScoreResponse:
    """A :class:`dqe.service.engine.ScoreResult` as a ``ScoreResponse``."""
    msg = pb.ScoreResponse(
        case_id=result.case_id,
        mean_stars=result.mean_stars,
        views=[pb.ViewScore(view=v, stars=s) for v, s in result.views.items()],
        warnings=list(result.warnings),
        model=model,
        timings_ms={k: float(v) for k, v in result.timings_ms.items()},
        request_id=request_id,
    )
    if result.center_of_mass is not None:
        x, y, z = result.center_of_mass
        msg.center_of_mass.CopyFrom(pb.CenterOfMass(x=x, y=y, z=z))
    if result.gate is not None:
        msg.gate.CopyFrom(gate_to_proto(result.gate))
    return msg


def views_from_tensor(tensor: pb.Tensor, n_views: int, n_channels: int, min_hw: Sequence[int]) -> np.ndarray:
    """The ``(n_views, n_channels, H, W)`` float32 array a ``Tensor`` holds.

    Raises:
        InvalidInput: unknown dtype, wrong rank or shape, byte count not matching the shape, non-finite values.
    """
    if tensor.dtype not in _DTYPES:
        raise InvalidInput(
            f"views.dtype is {pb.DType.Name(tensor.dtype) if tensor.dtype in pb.DType.values() else tensor.dtype}; "
            "expected DTYPE_FLOAT32 or DTYPE_FLOAT16",
            field="views.dtype",
        )
    shape = tuple(int(s) for s in tensor.shape)
    if len(shape) != 4 or shape[:2] != (n_views, n_channels):
        raise InvalidInput(
            f"views.shape is {list(shape)}; expected [{n_views}, {n_channels}, H, W]", field="views.shape"
        )
    if shape[2] < min_hw[0] or shape[3] < min_hw[1]:
        raise InvalidInput(
            f"views.shape is {list(shape)}; views are padded up to at least {list(min_hw)} by the contract",
            field="views.shape",
        )
    dtype = _DTYPES[tensor.dtype]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(tensor.data) != expected:
        raise InvalidInput(
            f"views.data has {len(tensor.data)} bytes; shape {list(shape)} of {dtype.name} needs {expected}",
            field="views.data",
        )
    array = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    if not np.isfinite(array).all():
        raise InvalidInput(
            f"views.data has {int((~np.isfinite(array)).sum())} NaN/Inf values", field="views.data"
        )
    return array.astype(np.float32)


def error_to_proto(exc: DQEError) -> pb.ItemError:
    return pb.ItemError(code=exc.code, kind=exc.kind, field=exc.field or "", message=exc.message)


def gate_from_proto(msg: pb.QCGate) -> GateResult:
    """A :class:`dqe.models.qc.types.GateResult` from a ``QCGate`` message."""
    checks = [
        Check(
            name=c.name,
            value=c.value,
            threshold=c.threshold,
            passed=c.passed,
            severity=_SEVERITY_NAMES.get(c.severity, "unspecified"),
            message=c.message,
            unit=c.unit,
        )
        for c in msg.checks
    ]
    return GateResult(
        verdict=Verdict(_VERDICT_NAMES.get(msg.verdict, "review")),
        gate_score=msg.gate_score,
        reasons=list(msg.reasons),
        checks=checks,
        star_threshold=msg.star_threshold,
        elapsed_ms=msg.elapsed_ms,
    )


def result_from_proto(msg: pb.ScoreResponse) -> tuple[ScoreResult, dict[str, Any]]:
    """The :class:`ScoreResult` a ``ScoreResponse`` carries, and how the server ran it (backend, ...)."""
    com = None
    if msg.HasField("center_of_mass"):
        com = (msg.center_of_mass.x, msg.center_of_mass.y, msg.center_of_mass.z)
    result = ScoreResult(
        mean_stars=msg.mean_stars,
        views={v.view: v.stars for v in msg.views},
        center_of_mass=com,
        warnings=list(msg.warnings),
        model_id=msg.model.model_id,
        model_sha256=msg.model.model_sha256,
        timings_ms=dict(msg.timings_ms),
        case_id=msg.case_id,
        gate=gate_from_proto(msg.gate) if msg.HasField("gate") else None,
    )
    runtime = {
        "backend": msg.model.backend,
        "providers": list(msg.model.providers),
        "precision": msg.model.precision,
    }
    return result, runtime


def tensor_from_views(views: np.ndarray) -> pb.Tensor:
    """A little-endian ``Tensor`` for a float32 or float16 array (any shape).

    Raises:
        InvalidInput: another dtype.
    """
    views = np.asarray(views)
    dtypes = {np.dtype(np.float32): pb.DTYPE_FLOAT32, np.dtype(np.float16): pb.DTYPE_FLOAT16}
    if views.dtype not in dtypes:
        raise InvalidInput(f"views have dtype {views.dtype}; expected float32 or float16", field="views")
    data = np.ascontiguousarray(views, dtype=views.dtype.newbyteorder("<")).tobytes()
    return pb.Tensor(data=data, shape=list(views.shape), dtype=dtypes[views.dtype])
