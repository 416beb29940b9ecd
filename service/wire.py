"""The wire contract's conversions: domain types <-> ``dqe.v1`` messages, for the servicer and the client.

One module for both directions, so the server and the SDK cannot drift apart. Imports protobuf and numpy
and the core's result types only (no grpc, no engine).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dqe.models.errors import DQEError, InvalidInput
from dqe.models.qc.types import Check, EvidenceSlice, GateResult, PredictedDice, RegionResult, Verdict
from dqe.models.result import ScoreResult
from dqe.service._proto import quality_estimation_pb2 as pb

_VERDICTS = {"pass": pb.VERDICT_PASS, "review": pb.VERDICT_REVIEW, "fail": pb.VERDICT_FAIL}
_SEVERITIES = {"info": pb.SEVERITY_INFO, "review": pb.SEVERITY_REVIEW, "fail": pb.SEVERITY_FAIL}
_VERDICT_NAMES = {v: k for k, v in _VERDICTS.items()}
_SEVERITY_NAMES = {v: k for k, v in _SEVERITIES.items()}
_DTYPES: dict[int, np.dtype[Any]] = {pb.DTYPE_FLOAT32: np.dtype("<f4"), pb.DTYPE_FLOAT16: np.dtype("<f2")}


def _verdict(value: Any) -> Any:
    return _VERDICTS.get(str(getattr(value, "value", value)), pb.VERDICT_UNSPECIFIED)


def check_to_proto(c: Any) -> pb.QCCheck:
    """A :class:`dqe.models.qc.types.Check` as a ``QCCheck`` (``p_value`` set only when the check has one)."""
    msg = pb.QCCheck(
        name=c.name,
        value=float(c.value),
        threshold=float(c.threshold),
        passed=bool(c.passed),
        severity=_SEVERITIES.get(str(c.severity), pb.SEVERITY_UNSPECIFIED),
        message=c.message,
        unit=c.unit,
        region=str(getattr(c, "region", "") or ""),
        family=str(getattr(c, "family", "") or ""),
    )
    p = getattr(c, "p_value", None)
    if p is not None:
        msg.p_value = float(p)
    return msg


def region_to_proto(r: RegionResult) -> pb.QCRegion:
    """A :class:`dqe.models.qc.types.RegionResult` as a ``QCRegion``."""
    msg = pb.QCRegion(
        region=r.region,
        verdict=_verdict(r.verdict),
        p_value=float(r.p_value),
        checks=[check_to_proto(c) for c in r.checks],
        evidence_slices=[
            pb.EvidenceSlice(axis=e.axis, index=int(e.index), strength=float(e.strength))
            for e in r.evidence_slices
        ],
    )
    if r.predicted_dice is not None:
        d = r.predicted_dice
        msg.predicted_dice.CopyFrom(
            pb.PredictedDice(
                dice=float(d.dice), low=float(d.low), high=float(d.high), coverage=float(d.coverage)
            )
        )
    if r.consensus_dice is not None:
        msg.consensus_dice = float(r.consensus_dice)
    return msg


_CALIBRATION_KEYS = ("size", "min_alpha", "sites", "description")


def calibration_to_proto(cal: Mapping[str, Any]) -> pb.QCCalibration:
    """The gate's calibration record as ``QCCalibration``: ``size`` (or ``n``), ``min_alpha`` (or the gate's
    ``smallest_alpha``), ``sites``, ``description`` (or the gate's ``source``); every other key, the gate's
    own names included, goes to ``extra`` as JSON text."""
    size = cal.get("size", cal.get("n"))
    msg = pb.QCCalibration(
        size=int(size) if isinstance(size, int | float) else 0,
        min_alpha=float(cal.get("min_alpha", cal.get("smallest_alpha")) or 0.0),
        sites=[str(s) for s in (cal.get("sites") or [])],
        description=str(cal.get("description", cal.get("source")) or ""),
    )
    for key, value in cal.items():
        if key not in (*_CALIBRATION_KEYS, "n"):
            msg.extra[str(key)] = (
                value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
            )
    return msg


def gate_to_proto(gate: Any) -> pb.QCGate:
    """A :class:`dqe.models.qc.types.GateResult` as a ``QCGate`` message (new fields only when present)."""
    msg = pb.QCGate(
        verdict=_verdict(gate.verdict),
        gate_score=float(gate.gate_score),
        reasons=[str(r) for r in gate.reasons],
        star_threshold=float(getattr(gate, "star_threshold", 0.0)),
        elapsed_ms=float(getattr(gate, "elapsed_ms", 0.0)),
        checks=[check_to_proto(c) for c in gate.checks],
        combination=str(getattr(gate, "combination", "") or ""),
        regions=[region_to_proto(r) for r in getattr(gate, "regions", [])],
    )
    for name in ("alpha", "p_value"):
        value = getattr(gate, name, None)
        if value is not None:
            setattr(msg, name, float(value))
    cal = getattr(gate, "calibration", None)
    if cal:
        msg.calibration.CopyFrom(calibration_to_proto(cal))
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


def check_from_proto(c: pb.QCCheck) -> Check:
    """A :class:`Check` from a ``QCCheck`` (``p_value`` ``None`` when unset)."""
    return Check(
        name=c.name,
        value=c.value,
        threshold=c.threshold,
        passed=c.passed,
        severity=_SEVERITY_NAMES.get(c.severity, "unspecified"),
        message=c.message,
        unit=c.unit,
        region=c.region,
        family=c.family,
        p_value=c.p_value if c.HasField("p_value") else None,
    )


def region_from_proto(r: pb.QCRegion) -> RegionResult:
    """A :class:`RegionResult` from a ``QCRegion``."""
    pdice = None
    if r.HasField("predicted_dice"):
        d = r.predicted_dice
        pdice = PredictedDice(region=r.region, dice=d.dice, low=d.low, high=d.high, coverage=d.coverage)
    return RegionResult(
        region=r.region,
        verdict=Verdict(_VERDICT_NAMES.get(r.verdict, "review")),
        p_value=r.p_value,
        checks=[check_from_proto(c) for c in r.checks],
        predicted_dice=pdice,
        evidence_slices=[EvidenceSlice(e.axis, int(e.index), e.strength) for e in r.evidence_slices],
        consensus_dice=r.consensus_dice if r.HasField("consensus_dice") else None,
    )


def calibration_from_proto(msg: pb.QCCalibration) -> dict[str, Any]:
    """The calibration record (inverse of :func:`calibration_to_proto`; ``extra`` values parsed as JSON)."""
    out: dict[str, Any] = {
        "size": int(msg.size),
        "min_alpha": msg.min_alpha,
        "sites": list(msg.sites),
        "description": msg.description,
    }
    for key, text in msg.extra.items():
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def gate_from_proto(msg: pb.QCGate) -> GateResult:
    """A :class:`dqe.models.qc.types.GateResult` from a ``QCGate`` message."""
    return GateResult(
        verdict=Verdict(_VERDICT_NAMES.get(msg.verdict, "review")),
        gate_score=msg.gate_score,
        reasons=list(msg.reasons),
        checks=[check_from_proto(c) for c in msg.checks],
        star_threshold=msg.star_threshold,
        elapsed_ms=msg.elapsed_ms,
        alpha=msg.alpha if msg.HasField("alpha") else None,
        p_value=msg.p_value if msg.HasField("p_value") else None,
        combination=msg.combination,
        regions=[region_from_proto(r) for r in msg.regions],
        calibration=calibration_from_proto(msg.calibration) if msg.HasField("calibration") else {},
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
