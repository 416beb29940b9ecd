"""``ScoreBatch``: one bidirectional stream of cases and views, scored by a bounded window of workers.

A stream with nothing in flight that sends nothing for ``stream_idle_s`` is ended with DEADLINE_EXCEEDED, so
idle streams cannot hold handler threads for ever; how many may be open at once is the servicer's
``max_streams`` (refused at once beyond it).
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from dqe.models.errors import CallCancelled, DeadlineExpired, DQEError, InvalidInput
from dqe.service._proto import quality_estimation_pb2 as pb
from dqe.service.serving.interceptor import Undecodable, current_request_id
from dqe.service.serving.runtime import CallInfo
from dqe.service.wire import error_to_proto

if TYPE_CHECKING:
    from dqe.service.serving.servicer import QualityEstimationServicer

logger = logging.getLogger(__name__)


class BatchStream:
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
        self.idle_s = cfg.stream_idle_s
        self.last_activity = time.monotonic()
        self.in_flight = 0
        self._lock = threading.Lock()

    def responses(self) -> Iterator[pb.ScoreBatchResponse]:
        ctx = contextvars.copy_context()
        reader = threading.Thread(target=ctx.run, args=(self._read,), name="dqe-stream-reader", daemon=True)
        reader.start()
        try:
            while True:
                try:
                    item = self.results.get(timeout=min(0.5, self.idle_s))
                except queue.Empty:
                    self._check_idle()
                    continue
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                with self._lock:
                    self.in_flight -= 1
                    self.last_activity = time.monotonic()
                self.slots.release()
                yield item
        finally:
            self.stop.set()
            self.pool.shutdown(wait=False, cancel_futures=True)

    def _check_idle(self) -> None:
        """End the stream when the caller left, or when nothing is in flight and it sent nothing for too long."""
        if not self.call.is_active():
            raise CallCancelled("the ScoreBatch caller went away")
        with self._lock:
            idle = self.in_flight == 0 and time.monotonic() - self.last_activity > self.idle_s
        if idle:
            raise DeadlineExpired(
                f"ScoreBatch stream sent nothing for {self.idle_s:g} s with nothing in flight; closed",
                field="stream_idle_s",
            )

    def _read(self) -> None:
        pending: list[Future[None]] = []
        try:
            for index, request in enumerate(self.requests):
                while not self.slots.acquire(timeout=0.5):
                    if self.stop.is_set() or not self.call.is_active():
                        return
                if self.stop.is_set():
                    return
                with self._lock:
                    self.in_flight += 1
                    self.last_activity = time.monotonic()
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
        case_id = ""
        try:
            if isinstance(
                request, Undecodable
            ):  # bytes that are not a ScoreBatchRequest: this item fails alone
                raise request.error()
            kind = request.WhichOneof("item")
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
