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
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from dqe.models.case import FIELDS, Case
from dqe.models.errors import CallCancelled, InvalidInput
from dqe.models.nifti import DecodeLimits, Volume, decode_nifti, load_nifti_fd
from dqe.models.qc.alpha import check_alpha, with_alpha
from dqe.models.qc.config import GateConfig
from dqe.models.qc.explain import gate_with_evidence
from dqe.service._proto import quality_estimation_pb2 as pb
from dqe.service._proto import quality_estimation_pb2_grpc as pb_grpc
from dqe.service.dicom_scoring import score_instances
from dqe.service.serving.interceptor import Undecodable, current_request_id
from dqe.service.serving.runtime import CallInfo, Reservation, Runtime
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


def _instance_bytes(messages: Iterator[pb.DicomInstance | Undecodable]) -> Iterator[bytes]:
    """The bytes of each ``DicomInstance``; a message that did not parse (the interceptor reads streams
    leniently) ends the call with INVALID_ARGUMENT."""
    for message in messages:
        if isinstance(message, Undecodable):
            raise message.error()
        yield message.data


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
        ticket = self.rt.streams.claim()
        try:
            yield from BatchStream(
                self, request_iterator, CallInfo(context, self.rt.config.max_call_s)
            ).responses()
        finally:
            ticket.release()

    def ScoreStudy(
        self, request_iterator: Iterator[pb.DicomInstance], context: grpc.ServicerContext
    ) -> pb.ScoreStudyResponse:
        # Thin adapter: the study's budgets, decoding and reports are dqe.service.dicom_scoring's; the bytes
        # received count against the server-wide budget of ScoreCase requests (max_pending_mb) until the end
        engine, _ = self.rt.ready()
        call = CallInfo(context, self.rt.config.max_call_s)
        held = Reservation(self.rt.pending)
        try:
            out = score_instances(
                _instance_bytes(request_iterator),
                engine,
                check=lambda: call.check("receive"),
                reserve=held.reserve,
                gate_config=with_alpha(self.rt.config.alpha),  # the server's DQE_ALPHA, as ScoreCase
            )
        finally:
            held.release()
        return pb.ScoreStudyResponse(
            result=result_to_proto(out.result, model_ref(engine), current_request_id()),
            study_instance_uid=out.study_uid,
            structured_report=out.sr,
            key_object_selection=out.kos or b"",
        )

    def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        engine, batcher = self.rt.ready()
        cfg = self.rt.config
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
            max_receive_message_bytes=cfg.max_message_bytes,
            server_paths_enabled=self.rt.paths.enabled,
            max_volume_voxels=cfg.max_volume_voxels,
            max_grid_side=cfg.max_grid_side,
            max_view_side=cfg.max_view_side,
            max_streams=cfg.max_streams,
            max_call_seconds=cfg.max_call_s,
            decode_budget_bytes=cfg.decode_budget_bytes,
        )

    # ------------------------------------------------------------------ scoring
    def _score_case(self, request: pb.ScoreCaseRequest, call: CallInfo) -> pb.ScoreResponse:
        start = time.perf_counter()
        engine, _ = self.rt.ready()
        source = request.WhichOneof("source")
        if source is None:
            raise InvalidInput("request has neither files nor paths; set one", field="source")
        gate_cfg = self._gate_config(request.options) if request.options.run_gate else None
        # Bounded decode queue: refused at once when full, or when the wait it predicts exceeds the call's
        # deadline, instead of letting the caller wait for that deadline.
        # Slots the interceptor took: a decode slot when the call arrived, a receiving slot before it read the
        # request (Runtime.turn, which also refused it if the decoding queued ahead outlasts its deadline).
        # Both are released as soon as the decoding is over.
        tickets = [self.rt.decodes.claim(), self.rt.receiving.held_ticket()]
        size = request.ByteSize()

        def release() -> None:
            for ticket in tickets:
                if ticket is not None:
                    ticket.release()

        try:
            self.rt.pending.reserve(size)
        except BaseException:
            release()
            raise
        ctx = contextvars.copy_context()
        try:
            future = self.rt.decode_pool.submit(ctx.run, self._prepare_case, request, call)
        except BaseException:
            release()
            self.rt.pending.release(size)
            raise

        def done(_f: Future[_Prepared]) -> None:
            release()
            self.rt.pending.release(size)

        future.add_done_callback(done)
        prepared = call.wait(future, "decoding")
        del future
        return self._finish(
            engine, prepared, call, start, run_gate=request.options.run_gate, gate_cfg=gate_cfg
        )

    def _score_views(self, request: pb.ScoreViewsRequest, call: CallInfo) -> pb.ScoreResponse:
        start = time.perf_counter()
        engine, _ = self.rt.ready()
        if not request.HasField("views"):
            raise InvalidInput("request has no views tensor", field="views")
        contract = engine.contract
        t0 = time.perf_counter()
        shape = list(request.views.shape)
        side = self.rt.config.max_view_side
        if len(shape) == 4 and max(shape[2:]) > side:
            raise InvalidInput(
                f"views.shape is {shape[:8]}; this server accepts views of at most {side} x {side}",
                field="views.shape",
            )
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
        """Decode, validate and slice one case (runs in the decode pool) within the server's decode budget."""
        call.check("decoding")
        t0 = time.perf_counter()
        cfg = self.rt.config
        reservation = Reservation(self.rt.budget)
        try:
            if request.WhichOneof("source") == "files":
                vols = self._decode_files(request.files, reservation, call)
                default_id = "case"
            else:
                with self.rt.paths.open_case(request.paths) as opened:
                    default_id = opened.case_id
                    jobs = {k: partial(_load_fd, opened.fds[k], k, opened.sources[k]) for k in FIELDS}
                    vols = _decode_all(jobs, self._limits(reservation), call)
            case = Case.from_volumes(
                vols,
                case_id=request.case_id or default_id,
                contract=self._contract(),
                max_side=cfg.max_grid_side,
                max_voxels=cfg.max_volume_voxels,
            )
            del vols
            t1 = time.perf_counter()
            call.check("preprocessing")
            engine, _ = self.rt.ready()
            views, com = engine.preprocess(case)
        finally:
            reservation.release()
        t2 = time.perf_counter()
        self.rt.observe_decode(t2 - t0)
        return _Prepared(
            views=views,
            com=com,
            case=case if request.options.run_gate else None,
            case_id=case.case_id,
            warnings=list(case.warnings),
            timings={"decode": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3},
        )

    def _limits(self, reservation: Reservation) -> DecodeLimits:
        cfg = self.rt.config
        return DecodeLimits(
            max_voxels=cfg.max_volume_voxels,
            max_side=cfg.max_grid_side,
            max_file_bytes=cfg.max_message_bytes,
            reserve=reservation.reserve,
            pool=self.rt.buffers,
        )

    def _decode_files(
        self, files: pb.NiftiFiles, reservation: Reservation, call: CallInfo
    ) -> dict[str, Volume]:
        missing = [f for f in FIELDS if not len(getattr(files, f))]
        if missing:
            raise InvalidInput(
                f"files.{missing[0]} is empty; all of {list(FIELDS)} are needed", field=f"files.{missing[0]}"
            )
        return _decode_all(
            {k: partial(_decode_bytes, getattr(files, k), k) for k in FIELDS},
            self._limits(reservation),
            call,
        )

    def _contract(self) -> Any:
        engine, _ = self.rt.ready()
        return engine.contract

    def _gate_config(self, options: pb.ScoreOptions) -> GateConfig:
        """The gate configuration of a call: ``options.alpha`` when set, else the server's ``DQE_ALPHA``.

        Raises:
            InvalidInput: alpha outside (0, 1) or below the calibration's smallest supported level.
        """
        server = with_alpha(self.rt.config.alpha)
        if not options.HasField("alpha"):
            return server
        return dataclasses.replace(server, alpha=check_alpha(options.alpha, server))

    def _finish(
        self,
        engine: Engine,
        prepared: _Prepared,
        call: CallInfo,
        start: float,
        run_gate: bool,
        gate_cfg: GateConfig | None = None,
    ) -> pb.ScoreResponse:
        call.check("inference")
        stars, queue_ms, inference_ms = self._infer(prepared.views, call)
        timings = dict(prepared.timings)
        timings.update({"queue": queue_ms, "inference": inference_ms})
        result = engine.result_from_stars(stars, prepared.com, prepared.warnings, timings, prepared.case_id)
        if run_gate and prepared.case is not None:
            t0 = time.perf_counter()
            result.gate, _ = gate_with_evidence(prepared.case, result, gate_cfg)
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


def _load_fd(fd: int, name: str, source: str, limits: DecodeLimits) -> Volume:
    return load_nifti_fd(fd, name, source, limits)


def _decode_bytes(raw: bytes, name: str, limits: DecodeLimits) -> Volume:
    return decode_nifti(raw, name, "", limits)


def _decode_all(
    jobs: Mapping[str, Callable[[DecodeLimits], Volume]], limits: DecodeLimits, call: CallInfo
) -> dict[str, Volume]:
    """Run the decode ``jobs`` in up to four threads (igzip and zlib release the GIL); between chunks each
    checks the call's deadline and whether another job failed, so a failure or a deadline stops all of them.

    Raises:
        the first job's error (the others stop at their next chunk).
    """
    failed = threading.Event()

    def check() -> None:
        if failed.is_set():
            raise _SiblingFailed("another file of this case failed to decode")
        call.check("decoding")

    def run(job: Callable[[DecodeLimits], Volume]) -> Volume:
        try:
            return job(bounded)
        except BaseException:
            failed.set()
            raise

    bounded = dataclasses.replace(limits, check=check)
    ctx = contextvars.copy_context()
    with ThreadPoolExecutor(max_workers=min(4, len(jobs)), thread_name_prefix="dqe-decode-file") as pool:
        futures = {k: pool.submit(ctx.copy().run, run, job) for k, job in jobs.items()}
        errors = [f.exception() for f in futures.values()]
        real = [e for e in errors if e is not None and not isinstance(e, _SiblingFailed)]
        if real or any(errors):
            del futures
            raise (real or [e for e in errors if e is not None])[0]
        return {k: f.result() for k, f in futures.items()}


class _SiblingFailed(CallCancelled):
    """Stops a file's decoding because another file of the same case already failed."""


__all__ = ["SERVICE_NAME", "QualityEstimationServicer"]
