"""The gRPC servicer: validate -> domain types -> engine (through the batcher) -> proto.

It holds no model logic: decoding and validation are :class:`dqe.models.case.Case`'s, views are the engine's
``preprocess``, stars come from ``engine.run`` via :class:`dqe.service.serving.batcher.DynamicBatcher`, and the
result is built by ``engine.result_from_stars`` exactly as in-process scoring builds it, so both give the same
numbers. Conversions live in :mod:`dqe.service.wire`, server-side paths in
:mod:`dqe.service.serving.paths`, the ``ScoreBatch`` stream in :mod:`dqe.service.serving.streams`. Errors are
raised as :class:`dqe.models.errors.DQEError` and mapped to status codes by the interceptor.
"""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dqe.models.case import FIELDS, Case
from dqe.models.errors import InvalidInput
from dqe.models.qc.gate import evaluate_case
from dqe.service._proto import quality_estimation_pb2 as pb
from dqe.service._proto import quality_estimation_pb2_grpc as pb_grpc
from dqe.service.serving.interceptor import current_request_id
from dqe.service.serving.runtime import CallInfo, Runtime
from dqe.service.serving.streams import BatchStream
from dqe.service.wire import result_to_proto, views_from_tensor

if TYPE_CHECKING:
    import grpc

    from dqe.service.engine import Engine

SERVICE_NAME = "dqe.v1.QualityEstimation"


def model_ref(engine: Engine) -> pb.ModelRef:
    return pb.ModelRef(
        model_id=engine.model_id,
        model_sha256=engine.model_sha256,
        backend=engine.backend.name,
        providers=list(engine.backend.providers),
        precision=engine.config.precision,
    )


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
        return self._score_case(request, CallInfo(context, self.rt.config.max_call_s))

    def ScoreViews(self, request: pb.ScoreViewsRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        return self._score_views(request, CallInfo(context, self.rt.config.max_call_s))

    def ScoreBatch(
        self, request_iterator: Iterator[pb.ScoreBatchRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ScoreBatchResponse]:
        self.rt.ready()
        yield from BatchStream(
            self, request_iterator, CallInfo(context, self.rt.config.max_call_s)
        ).responses()

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
            t0 = time.perf_counter()
            result.gate = evaluate_case(prepared.case, result)
            result.timings_ms["gate"] = (time.perf_counter() - t0) * 1e3
        result.timings_ms["server_total"] = (time.perf_counter() - start) * 1e3
        return result_to_proto(result, model_ref(engine), current_request_id())

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


__all__ = ["SERVICE_NAME", "QualityEstimationServicer"]
