"""The gRPC servicer: validate -> domain types -> engine (through the batcher) -> proto.

It holds no model logic: decoding and validation are :class:`service.case.Case`'s, views are the engine's
``preprocess``, stars come from ``engine.run`` via :class:`service.batching.DynamicBatcher`, and the result is
built by ``engine.result_from_stars`` exactly as in-process scoring builds it, so both give the same numbers.
Errors are raised as :class:`models.errors.DQEError` and mapped to status codes by the interceptor.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from models.errors import DQEError, InvalidInput, ModelNotReady, NotFound, PermissionDenied
from service._proto import quality_estimation_pb2 as pb
from service._proto import quality_estimation_pb2_grpc as pb_grpc
from service.batching import CallCancelled, DeadlineExpired, DynamicBatcher
from service.case import FIELDS, Case, discover_files
from service.config import ServerConfig
from service.interceptor import current_request_id

if TYPE_CHECKING:
    import grpc

    from service.engine import Engine, ScoreResult

logger = logging.getLogger(__name__)

SERVICE_NAME = "dqe.v1.QualityEstimation"
T = TypeVar("T")
_VERDICTS = {"pass": pb.VERDICT_PASS, "review": pb.VERDICT_REVIEW, "fail": pb.VERDICT_FAIL}
_SEVERITIES = {"info": pb.SEVERITY_INFO, "review": pb.SEVERITY_REVIEW, "fail": pb.SEVERITY_FAIL}
_DTYPES: dict[int, np.dtype[Any]] = {pb.DTYPE_FLOAT32: np.dtype("<f4"), pb.DTYPE_FLOAT16: np.dtype("<f2")}


# ---------------------------------------------------------------------------------------------- paths
class PathPolicy:
    """Confines server-side paths to configured roots.

    A path is refused (PERMISSION_DENIED) when it has a ``..`` component or when, after every symlink is
    resolved, it lies outside all roots; the check runs before existence is looked at, so callers cannot
    probe for files outside the roots. Relative paths are taken relative to the first root.
    """

    def __init__(self, roots: Sequence[str | os.PathLike[str]]) -> None:
        self.roots = tuple(Path(r).expanduser().resolve() for r in roots)

    @property
    def enabled(self) -> bool:
        return bool(self.roots)

    def resolve(self, path: str, field: str) -> Path:
        """The real path of ``path`` inside a root.

        Raises:
            PermissionDenied: server paths disabled, a ``..`` component, or outside the roots.
            InvalidInput: an empty path or one with a NUL byte.
        """
        if not self.enabled:
            raise PermissionDenied(
                "server-side paths are disabled on this server (start it with --allowed-root DIR)",
                field=field,
            )
        if not path or "\x00" in path:
            raise InvalidInput(f"path {path!r} is empty or contains a NUL byte", field=field)
        candidate = Path(path)
        if ".." in candidate.parts:
            raise PermissionDenied(
                f"path {path!r} contains '..'; give a path inside the allowed roots", field=field
            )
        if not candidate.is_absolute():
            candidate = self.roots[0] / candidate
        real = candidate.resolve()
        if not any(real == root or real.is_relative_to(root) for root in self.roots):
            raise PermissionDenied(
                f"path {path!r} resolves outside the allowed roots (symlinks are followed)", field=field
            )
        return real

    def case_files(self, paths: pb.ServerPaths) -> tuple[dict[str, Path], str]:
        """The five confined files of a ``ServerPaths`` message and the default case id.

        Raises:
            PermissionDenied, InvalidInput: see :meth:`resolve`.
            NotFound: the folder or a file does not exist.
        """
        explicit = {f: getattr(paths, f) for f in FIELDS if getattr(paths, f)}
        files: dict[str, Path] = {}
        case_id = ""
        if paths.case_dir:
            folder = self.resolve(paths.case_dir, "paths.case_dir")
            found = discover_files(folder, require_segmentation="segmentation" not in explicit)
            # Files inside the folder may themselves be symlinks that leave the roots.
            files = {k: self.resolve(str(v), f"paths.{k}") for k, v in found.items()}
            case_id = Path(paths.case_dir).name
        for name, value in explicit.items():
            files[name] = self.resolve(value, f"paths.{name}")
        missing = [f for f in FIELDS if f not in files]
        if missing:
            raise InvalidInput(
                f"paths name no {missing[0]} file; give case_dir or all of {list(FIELDS)}",
                field=f"paths.{missing[0]}",
            )
        for name, p in files.items():
            if not p.is_file():
                raise NotFound(f"{name}: file {str(p)!r} does not exist", field=f"paths.{name}")
        if not case_id:
            case_id = files["segmentation"].name.split(".")[0]
        return files, case_id


# ---------------------------------------------------------------------------------------------- runtime
@dataclass
class Runtime:
    """What the servicer needs; the engine and batcher appear once the model is loaded and warm."""

    config: ServerConfig
    decode_pool: ThreadPoolExecutor
    paths: PathPolicy
    engine: Engine | None = None
    batcher: DynamicBatcher | None = None
    gate_unavailable: str = ""
    _gate_lock: threading.Lock = field(default_factory=threading.Lock)

    def ready(self) -> tuple[Engine, DynamicBatcher]:
        """The engine and batcher.

        Raises:
            ModelNotReady: still loading or warming up (clients should retry).
        """
        if self.engine is None or self.batcher is None:
            raise ModelNotReady("the model is loading or warming up; retry shortly", field="server")
        return self.engine, self.batcher

    def gate_function(self) -> Callable[[Case, ScoreResult], Any] | None:
        """``service.qc.gate.evaluate_case`` or ``None`` when this build has no gate (logged once)."""
        try:
            from service.qc.gate import evaluate_case
        except ImportError as exc:
            with self._gate_lock:
                if not self.gate_unavailable:
                    self.gate_unavailable = (
                        f"QC gate is not available on this server ({exc}); gate fields left empty"
                    )
                    logger.warning("%s", self.gate_unavailable)
            return None
        return evaluate_case  # type: ignore[no-any-return]


class CallInfo:
    """Deadline and liveness of the call being served."""

    def __init__(self, context: grpc.ServicerContext | None) -> None:
        remaining = context.time_remaining() if context is not None else None
        self.deadline = time.monotonic() + remaining if remaining is not None else None
        self._context = context

    def is_active(self) -> bool:
        return self._context is None or bool(self._context.is_active())

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self, stage: str) -> None:
        """Raise if the deadline already passed or the caller left (work for it is dropped)."""
        left = self.remaining()
        if left is not None and left <= 0:
            raise DeadlineExpired(
                f"the call's deadline passed before {stage}; work dropped", field="deadline"
            )
        if not self.is_active():
            raise CallCancelled(f"the caller went away before {stage}; work dropped")

    def wait(self, future: Future[T], stage: str) -> T:
        """``future.result()`` within the deadline (the future is cancelled when it runs out)."""
        try:
            return future.result(timeout=self.remaining())
        except FutureTimeout:
            future.cancel()
            raise DeadlineExpired(f"the call's deadline passed during {stage}", field="deadline") from None


# ---------------------------------------------------------------------------------------------- conversions
def gate_to_proto(gate: Any) -> pb.QCGate:
    """A :class:`service.qc.types.GateResult` as a ``QCGate`` message."""
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


def model_ref(engine: Engine) -> pb.ModelRef:
    return pb.ModelRef(
        model_id=engine.model_id,
        model_sha256=engine.model_sha256,
        backend=engine.backend.name,
        providers=list(engine.backend.providers),
        precision=engine.config.precision,
    )


def result_to_proto(result: ScoreResult, engine: Engine, request_id: str = "") -> pb.ScoreResponse:
    """A :class:`service.engine.ScoreResult` as a ``ScoreResponse``."""
    msg = pb.ScoreResponse(
        case_id=result.case_id,
        mean_stars=result.mean_stars,
        views=[pb.ViewScore(view=v, stars=s) for v, s in result.views.items()],
        warnings=list(result.warnings),
        model=model_ref(engine),
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


# ---------------------------------------------------------------------------------------------- servicer
@dataclass
class _Prepared:
    views: list[np.ndarray]
    com: tuple[int, int, int] | None
    case: Case | None
    case_id: str
    warnings: list[str]
    timings: dict[str, float]


class QualityEstimationServicer(pb_grpc.QualityEstimationServicer):
    """Implements ``dqe.v1.QualityEstimation`` over a :class:`Runtime`."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    # ------------------------------------------------------------------ RPCs
    def ScoreCase(self, request: pb.ScoreCaseRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        return self._score_case(request, CallInfo(context))

    def ScoreViews(self, request: pb.ScoreViewsRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        return self._score_views(request, CallInfo(context))

    def ScoreBatch(
        self, request_iterator: Iterator[pb.ScoreBatchRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ScoreBatchResponse]:
        self.rt.ready()
        yield from _BatchStream(self, request_iterator, CallInfo(context)).responses()

    def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        engine, batcher = self.rt.ready()
        info = engine.info()
        contract = engine.contract
        return pb.ModelInfo(
            model_id=engine.model_id,
            onnx_sha256=engine.model_sha256,
            weights_sha256=str(info.get("weights_sha256", "")),
            contract_version=contract.version,
            views=list(contract.views),
            channels=list(contract.channels),
            spatial_size=list(contract.spatial_size),
            contract_json=json.dumps(contract.to_dict(), sort_keys=True),
            card_json=json.dumps(info.get("card", {}), sort_keys=True, default=str),
            runtime=model_ref(engine),
            max_batch_size=batcher.max_batch_size,
            max_receive_message_bytes=self.rt.config.max_message_bytes,
            server_paths_enabled=self.rt.paths.enabled,
        )

    # ------------------------------------------------------------------ scoring
    def _score_case(self, request: pb.ScoreCaseRequest, call: CallInfo) -> pb.ScoreResponse:
        start = time.perf_counter()
        engine, _ = self.rt.ready()
        source = request.WhichOneof("source")
        if source is None:
            raise InvalidInput("request has neither files nor paths; set one", field="source")
        ctx = contextvars.copy_context()
        prepared = call.wait(
            self.rt.decode_pool.submit(ctx.run, self._prepare_case, request, call), "decoding"
        )
        return self._finish(engine, prepared, call, start, run_gate=request.options.run_gate)

    def _score_views(self, request: pb.ScoreViewsRequest, call: CallInfo) -> pb.ScoreResponse:
        start = time.perf_counter()
        engine, _ = self.rt.ready()
        if not request.HasField("views"):
            raise InvalidInput("request has no views tensor", field="views")
        contract = engine.contract
        t0 = time.perf_counter()
        views = views_from_tensor(
            request.views, len(contract.views), contract.n_channels, contract.spatial_size
        )
        com = None
        if request.HasField("center_of_mass"):
            c = request.center_of_mass
            com = (int(c.x), int(c.y), int(c.z))
        prepared = _Prepared(
            views=list(views),
            com=com,
            case=None,
            case_id=request.case_id or "case",
            warnings=[],
            timings={"decode": (time.perf_counter() - t0) * 1e3},
        )
        return self._finish(engine, prepared, call, start, run_gate=False)

    def _prepare_case(self, request: pb.ScoreCaseRequest, call: CallInfo) -> _Prepared:
        """Decode, validate and slice one case (runs in the decode pool)."""
        call.check("decoding")
        t0 = time.perf_counter()
        if request.WhichOneof("source") == "files":
            files = request.files
            data = {f: getattr(files, f) for f in FIELDS}
            missing = [f for f in FIELDS if not data[f]]
            if missing:
                raise InvalidInput(
                    f"files.{missing[0]} is empty; all of {list(FIELDS)} are needed",
                    field=f"files.{missing[0]}",
                )
            case = Case.from_bytes(data, case_id=request.case_id or "case", contract=self._contract())
        else:
            paths, default_id = self.rt.paths.case_files(request.paths)
            case = Case.from_files(**paths, case_id=request.case_id or default_id, contract=self._contract())  # type: ignore[arg-type]
        t1 = time.perf_counter()
        call.check("preprocessing")
        engine, _ = self.rt.ready()
        views, com = engine.preprocess(case)
        t2 = time.perf_counter()
        return _Prepared(
            views=views,
            com=com,
            case=case if request.options.run_gate else None,
            case_id=case.case_id,
            warnings=list(case.warnings),
            timings={"decode": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3},
        )

    def _contract(self) -> Any:
        engine, _ = self.rt.ready()
        return engine.contract

    def _finish(
        self, engine: Engine, prepared: _Prepared, call: CallInfo, start: float, run_gate: bool
    ) -> pb.ScoreResponse:
        call.check("inference")
        stars, queue_ms, inference_ms = self._infer(prepared.views, call)
        timings = dict(prepared.timings)
        timings.update({"queue": queue_ms, "inference": inference_ms})
        result = engine.result_from_stars(stars, prepared.com, prepared.warnings, timings, prepared.case_id)
        if run_gate and prepared.case is not None:
            evaluate = self.rt.gate_function()
            if evaluate is None:
                result.warnings.append(self.rt.gate_unavailable)
            else:
                t0 = time.perf_counter()
                result.gate = evaluate(prepared.case, result)
                result.timings_ms["gate"] = (time.perf_counter() - t0) * 1e3
        result.timings_ms["server_total"] = (time.perf_counter() - start) * 1e3
        return result_to_proto(result, engine, current_request_id())

    def _infer(self, views: list[np.ndarray], call: CallInfo) -> tuple[np.ndarray, float, float]:
        """Stars for a case's views through the batcher (one item per distinct view shape)."""
        _, batcher = self.rt.ready()
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, v in enumerate(views):
            groups.setdefault(tuple(v.shape), []).append(i)
        futures = [
            (
                idx,
                batcher.submit(
                    np.stack([views[i] for i in idx]), deadline=call.deadline, is_active=call.is_active
                ),
            )
            for idx in groups.values()
        ]
        stars = np.zeros(len(views), dtype=np.float32)
        queue_ms = inference_ms = 0.0
        for idx, future in futures:
            outcome = call.wait(future, "inference")
            stars[idx] = outcome.stars
            queue_ms = max(queue_ms, outcome.queue_ms)
            inference_ms = max(inference_ms, outcome.inference_ms)
        return stars, queue_ms, inference_ms


class _BatchStream:
    """One ScoreBatch call: a reader thread feeds items to a bounded window of workers; results stream back
    as they finish (matched by index)."""

    def __init__(
        self, servicer: QualityEstimationServicer, requests: Iterator[pb.ScoreBatchRequest], call: CallInfo
    ) -> None:
        self.servicer = servicer
        self.requests = requests
        self.call = call
        cfg = servicer.rt.config
        self.window = max(2, min(cfg.max_batch_size, cfg.max_queue // 3) // 3 * 2)
        self.results: queue.Queue[pb.ScoreBatchResponse | BaseException | None] = queue.Queue()
        self.slots = threading.Semaphore(self.window)
        self.pool = ThreadPoolExecutor(max_workers=self.window, thread_name_prefix="dqe-stream")
        self.stop = threading.Event()

    def responses(self) -> Iterator[pb.ScoreBatchResponse]:
        ctx = contextvars.copy_context()
        reader = threading.Thread(target=ctx.run, args=(self._read,), name="dqe-stream-reader", daemon=True)
        reader.start()
        try:
            while True:
                item = self.results.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                self.slots.release()
                yield item
        finally:
            self.stop.set()
            self.pool.shutdown(wait=False, cancel_futures=True)

    def _read(self) -> None:
        pending: list[Future[None]] = []
        try:
            for index, request in enumerate(self.requests):
                while not self.slots.acquire(timeout=0.5):
                    if self.stop.is_set() or not self.call.is_active():
                        return
                if self.stop.is_set():
                    return
                ctx = contextvars.copy_context()
                pending.append(self.pool.submit(ctx.run, self._one, index, request))
            for f in pending:
                f.result()
        except BaseException as exc:  # the request stream broke (client cancelled, deserialisation error)
            if not self.stop.is_set():
                self.results.put(
                    exc if isinstance(exc, DQEError) else CallCancelled(f"request stream ended: {exc}")
                )
            return
        self.results.put(None)

    def _one(self, index: int, request: pb.ScoreBatchRequest) -> None:
        kind = request.WhichOneof("item")
        case_id = ""
        try:
            if kind == "case":
                case_id = request.case.case_id
                result = self.servicer._score_case(request.case, self.call)
            elif kind == "views":
                case_id = request.views.case_id
                result = self.servicer._score_views(request.views, self.call)
            else:
                raise InvalidInput("batch item has neither case nor views", field="item")
            response = pb.ScoreBatchResponse(index=index, case_id=result.case_id, result=result)
        except DQEError as exc:
            response = pb.ScoreBatchResponse(index=index, case_id=case_id, error=error_to_proto(exc))
        except Exception as exc:
            logger.error("batch item %d failed [request %s]", index, current_request_id(), exc_info=exc)
            err = pb.ItemError(
                code="INTERNAL", kind="InternalError", message="internal server error; see the server log"
            )
            response = pb.ScoreBatchResponse(index=index, case_id=case_id, error=err)
        self.results.put(response)


__all__ = [
    "SERVICE_NAME",
    "CallInfo",
    "PathPolicy",
    "QualityEstimationServicer",
    "Runtime",
    "result_to_proto",
    "views_from_tensor",
]
