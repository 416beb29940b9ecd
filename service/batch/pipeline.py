"""The local engine: three overlapped stages with bounded memory.

1. A producer thread walks the cases in order and hands each to :func:`~dqe.service.batch.prepare.prepare_case`
   (image decoding, validation, preprocessing, metrics and mosaics in a worker pool of ``workers`` threads),
   so case i+1 is decoded while case i runs through the network.
2. The calling thread takes prepared cases in order and runs all views of a case in one engine call
   (:func:`~dqe.service.batch.scoring.infer_case`).
3. A finisher thread adds the gate verdicts (in the worker pool) and builds the records
   (:func:`~dqe.service.batch.scoring.finish_case`) while the next case is inferred.

Prepared cases wait in a queue of at most ``prefetch`` items, so at most ``prefetch + 3`` cases are in memory
(one being prepared, ``prefetch`` waiting, one in inference, one being finished). Records are yielded case by
case, in order, so the caller can journal them before going on; if inference is interrupted, the records of
the case already finished are yielded before the exception propagates.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from dqe.service.batch.dataset import CaseSpec
from dqe.service.batch.prepare import PrepareOptions, prepare_case
from dqe.service.batch.scoring import GateFn, finish_case, infer_case

if TYPE_CHECKING:
    from dqe.service.engine import Engine

logger = logging.getLogger(__name__)

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def run_local(
    specs: Sequence[CaseSpec],
    engine: Engine,
    options: PrepareOptions,
    gate: GateFn | None = None,
    workers: int = 2,
    prefetch: int = 1,
    extra: dict[str, Any] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Yield the records of each case of ``specs``, in order.

    Args:
        specs: cases with their pending jobs.
        engine: the scoring engine (its session is shared by the threads; ONNX Runtime's run is thread-safe).
        options: what stage 1 computes.
        gate: ``evaluate_case`` of the QC gate, or ``None``.
        workers: threads decoding and preparing segmentations (>= 1).
        prefetch: prepared cases allowed to wait for inference (>= 1).
        extra: fields copied into every record.

    Closing the generator early (or an exception in the consumer) stops the producer and joins it.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="dqe-batch")

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for spec in specs:
                if stop.is_set():
                    return
                if not put(prepare_case(spec, engine, pool, options)):
                    return
            put(_DONE)
        except BaseException as exc:  # a bug in stage 1: surface it in the consumer
            put(_Failure(exc))

    producer = threading.Thread(target=produce, name="dqe-batch-prefetch", daemon=True)
    producer.start()
    # The finisher is not one of the pool's threads, so it may wait on gate tasks it submits to the pool.
    finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dqe-batch-finish")
    pending: Future[list[dict[str, Any]]] | None = None
    try:
        while True:
            try:
                item = q.get()
                if item is _DONE:
                    break
                if isinstance(item, _Failure):
                    raise item.exc
                inferred = infer_case(engine, item)
            except BaseException:
                if pending is not None:  # journal what is already finished before giving up
                    done, pending = pending, None
                    yield done.result()
                raise
            future = finisher.submit(finish_case, engine, inferred, gate, pool, extra)
            if pending is not None:
                yield pending.result()
            pending = future
        if pending is not None:
            done, pending = pending, None
            yield done.result()
    finally:
        stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                break
        producer.join(timeout=60)
        finisher.shutdown(wait=True, cancel_futures=True)
        pool.shutdown(wait=True, cancel_futures=True)
