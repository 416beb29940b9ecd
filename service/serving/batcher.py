"""Dynamic batching of views across concurrent requests, engine-agnostic.

Requests submit ``(k, C, H, W)`` float32 views and get a future; one collector thread groups queued views of
one shape into batches of at most ``max_batch_size`` views, waiting at most ``max_queue_delay_s`` after the
oldest queued item arrived, and hands each batch to one of ``workers`` runner threads that call
``run(batch) -> (N,) stars``. While every runner is busy, views keep queueing, so batches grow with load.
A request's views always stay in one batch; requests are taken in arrival order.

Work whose deadline passed (or whose caller went away) before its batch was formed is dropped, never run.
The queue is bounded in views: a submit that would overflow it raises :class:`dqe.models.errors.Overloaded`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from dqe.models.errors import CallCancelled, DeadlineExpired, InvalidInput, ModelNotReady, Overloaded

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchOutcome:
    """What one submitted item got back.

    Attributes:
        stars: ``(k,)`` float32 model outputs, in the submitted views' order.
        queue_ms: time from submit until its batch started running.
        inference_ms: time the batch's ``run`` took (shared by every item in the batch).
        batch_size: views in the batch that ran.
    """

    stars: np.ndarray
    queue_ms: float
    inference_ms: float
    batch_size: int


@dataclass(eq=False)
class _Item:
    views: np.ndarray
    deadline: float | None
    is_active: Callable[[], bool] | None
    future: Future[BatchOutcome]
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def n(self) -> int:
        return int(self.views.shape[0])

    @property
    def key(self) -> tuple[int, ...]:
        return tuple(self.views.shape[1:])


@dataclass
class BatcherStats:
    """Counters since start (read without locking; for tests and logs)."""

    batches: int = 0
    views: int = 0
    max_batch_seen: int = 0
    dropped_expired: int = 0
    dropped_cancelled: int = 0
    rejected_full: int = 0


BatchObserver = Callable[[int, list[float], float], None]
"""Called after each batch with (views in batch, queue waits in seconds per item, run time in seconds)."""


class DynamicBatcher:
    """Groups views from concurrent requests into batches for ``run``.

    Args:
        run: ``(N, C, H, W)`` float32 -> ``(N,)`` stars; called from runner threads, one batch per call.
        max_batch_size: most views per batch (a single larger request still runs, alone).
        max_queue_delay_s: longest the oldest queued item waits for a batch to fill.
        max_queue: most views waiting; beyond it ``submit`` raises ``Overloaded``.
        workers: runner threads (batches in flight at once).
        observer: optional metrics callback, see :data:`BatchObserver`.
        on_drop: optional callback with the reason (``"deadline"`` or ``"cancelled"``) per dropped item.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int = 24,
        max_queue_delay_s: float = 0.005,
        max_queue: int = 768,
        workers: int = 1,
        observer: BatchObserver | None = None,
        on_drop: Callable[[str], None] | None = None,
        name: str = "dqe-batcher",
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or workers < 1 or max_queue_delay_s < 0:
            raise ValueError("max_batch_size, max_queue and workers must be >= 1, max_queue_delay_s >= 0")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue = max_queue
        self._observer = observer
        self._on_drop = on_drop
        self._pending: deque[_Item] = deque()
        self._queued_views = 0
        self._cond = threading.Condition()
        self._closed = False
        self._slots = threading.Semaphore(workers)
        self._work: deque[list[_Item]] = deque()
        self._work_cond = threading.Condition()
        self.stats = BatcherStats()
        self._collector = threading.Thread(target=self._collect_loop, name=f"{name}-collect", daemon=True)
        self._runners = [
            threading.Thread(target=self._run_loop, name=f"{name}-run{i}", daemon=True)
            for i in range(workers)
        ]
        self._collector.start()
        for t in self._runners:
            t.start()

    # ------------------------------------------------------------------ public
    @property
    def queued_views(self) -> int:
        return self._queued_views

    def submit(
        self,
        views: np.ndarray,
        *,
        deadline: float | None = None,
        is_active: Callable[[], bool] | None = None,
    ) -> Future[BatchOutcome]:
        """Queue ``(k, C, H, W)`` float32 views of one shape.

        Args:
            deadline: ``time.monotonic()`` value after which the work is dropped instead of run.
            is_active: returns False once the caller has gone away (the work is then dropped).

        Raises:
            InvalidInput: not a 4-D float32 array with at least one view.
            Overloaded: the queue holds ``max_queue`` views already.
            ModelNotReady: the batcher is closed (server shutting down).
        """
        if views.ndim != 4 or views.shape[0] < 1 or views.dtype != np.float32:
            raise InvalidInput(
                f"views have shape {tuple(views.shape)} and dtype {views.dtype}; expected (k>=1, C, H, W) float32",
                field="views",
            )
        item = _Item(views=views, deadline=deadline, is_active=is_active, future=Future())
        with self._cond:
            if self._closed:
                raise ModelNotReady("the server is shutting down; retry on another replica", field="server")
            if self._queued_views + item.n > self.max_queue:
                self.stats.rejected_full += 1
                raise Overloaded(
                    f"inference queue is full ({self._queued_views} views waiting, limit {self.max_queue}); "
                    "retry with backoff",
                    field="queue",
                )
            self._pending.append(item)
            self._queued_views += item.n
            self._cond.notify_all()
        return item.future

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting work, run what is queued, and join the threads (at most ``timeout`` s each)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._collector.join(timeout)
        with self._work_cond:
            self._work.append([])  # one sentinel per runner, queued after the last batch
            for _ in self._runners[1:]:
                self._work.append([])
            self._work_cond.notify_all()
        for t in self._runners:
            t.join(timeout)

    # ------------------------------------------------------------------ collector
    def _collect_loop(self) -> None:
        while True:
            self._slots.acquire()  # a runner is free: only then form a batch, so views pile up under load
            batch = self._next_batch()
            if batch is None:
                self._slots.release()
                return
            live = self._drop_dead(batch)
            if not live:
                self._slots.release()
                continue
            with self._work_cond:
                self._work.append(live)
                self._work_cond.notify()

    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._pending:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._pending[0]
            key = first.key
            flush_at = first.enqueued + self.max_queue_delay_s
            while not self._closed:
                if sum(i.n for i in self._pending if i.key == key) >= self.max_batch_size:
                    break
                remaining = flush_at - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            taken: list[_Item] = []
            total = 0
            for item in self._pending:
                if item.key != key:
                    continue
                if taken and total + item.n > self.max_batch_size:
                    break
                taken.append(item)
                total += item.n
            ids = {id(item) for item in taken}
            self._pending = deque(i for i in self._pending if id(i) not in ids)
            self._queued_views -= total
            return taken

    def _drop_dead(self, items: list[_Item]) -> list[_Item]:
        now = time.monotonic()
        live = []
        for item in items:
            if not item.future.set_running_or_notify_cancel():  # the waiter gave up (its deadline, usually)
                expired = item.deadline is not None and now >= item.deadline
                self._dropped("deadline" if expired else "cancelled")
                continue
            if item.deadline is not None and now >= item.deadline:
                self._dropped("deadline")
                item.future.set_exception(
                    DeadlineExpired("the call's deadline passed while it waited for inference; work dropped")
                )
                continue
            if item.is_active is not None and not item.is_active():
                self._dropped("cancelled")
                item.future.set_exception(CallCancelled("the caller went away; work dropped"))
                continue
            live.append(item)
        return live

    def _dropped(self, reason: str) -> None:
        if reason == "deadline":
            self.stats.dropped_expired += 1
        else:
            self.stats.dropped_cancelled += 1
        if self._on_drop is not None:
            self._on_drop(reason)

    # ------------------------------------------------------------------ runners
    def _run_loop(self) -> None:
        while True:
            with self._work_cond:
                while not self._work:
                    self._work_cond.wait()
                items = self._work.popleft()
            if not items:
                return
            try:
                self._run_batch(items)
            finally:
                self._slots.release()

    def _run_batch(self, items: list[_Item]) -> None:
        batch = items[0].views if len(items) == 1 else np.concatenate([i.views for i in items])
        start = time.monotonic()
        try:
            stars = np.asarray(self._run(batch), dtype=np.float32).reshape(-1)
            if stars.shape[0] != batch.shape[0]:
                raise RuntimeError(f"run returned {stars.shape[0]} outputs for {batch.shape[0]} views")
        except BaseException as exc:
            logger.error("inference batch of %d views failed: %s", batch.shape[0], exc)
            for item in items:
                item.future.set_exception(exc)
            return
        run_s = time.monotonic() - start
        waits = [start - i.enqueued for i in items]
        self.stats.batches += 1
        self.stats.views += batch.shape[0]
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, batch.shape[0])
        offset = 0
        for item, wait in zip(items, waits, strict=True):
            item.future.set_result(
                BatchOutcome(
                    stars=stars[offset : offset + item.n].copy(),
                    queue_ms=wait * 1e3,
                    inference_ms=run_s * 1e3,
                    batch_size=int(batch.shape[0]),
                )
            )
            offset += item.n
        if self._observer is not None:
            try:
                self._observer(int(batch.shape[0]), waits, run_s)
            except Exception:  # metrics must never break inference
                logger.exception("batch observer failed")
