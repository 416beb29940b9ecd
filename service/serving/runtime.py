"""What a call needs from the running server: the loaded engine and batcher, and the call's deadline."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from dqe.models.buffers import BufferPool
from dqe.models.errors import CallCancelled, DeadlineExpired, InvalidInput, ModelNotReady, Overloaded
from dqe.service.serving.batcher import DynamicBatcher
from dqe.service.serving.paths import PathPolicy
from dqe.service.serving.policy import MethodPolicy
from dqe.service.settings import ServerConfig

if TYPE_CHECKING:
    import grpc

    from dqe.service.engine import Engine

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Slots:
    """A counter of things in flight with a hard maximum.

    :meth:`take` refuses at once when all slots are held; :meth:`take_waiting` waits for one, first come first
    served, and may lease it: a leased slot not yet :meth:`Ticket.keep`-ed within the lease is taken back for the
    next waiter (a caller that stalls cannot hold it forever).

    Args:
        limit: most holders at once.
        what: a phrase for the error message (``"ScoreBatch streams"``).
        setting: the setting that raises the limit (named in the message).
    """

    def __init__(self, limit: int, what: str, setting: str) -> None:
        self.limit = limit
        self.what = what
        self.setting = setting
        self.held = 0
        self._lock = threading.Condition(threading.Lock())
        self._leased: dict[Ticket, float] = {}

    def take(self) -> Ticket:
        """Take one slot, held until the returned ticket is released.

        Raises:
            Overloaded: all ``limit`` slots are held.
        """
        with self._lock:
            if self.held >= self.limit:
                raise Overloaded(
                    f"{self.what}: all {self.limit} are in use; retry with backoff (server setting {self.setting})",
                    field=self.setting,
                )
            self.held += 1
        return Ticket(self)

    def take_waiting(self, call: CallInfo, stage: str, lease_s: float = 0.0) -> Ticket:
        """Take one slot, waiting while all are held; with ``lease_s`` the slot is taken back from this holder
        when it has not called :meth:`Ticket.keep` within ``lease_s`` seconds and another caller waits.

        Raises:
            DeadlineExpired, CallCancelled: the call's deadline passed or its caller left while it waited.
        """
        with self._lock:
            while self.held >= self.limit and not self._revoke_expired():
                call.check(stage)
                left = call.remaining()
                self._lock.wait(0.25 if left is None else min(0.25, max(left, 0.001)))
            self.held += 1
            ticket = Ticket(self)
            if lease_s > 0:
                self._leased[ticket] = time.monotonic() + lease_s
        return ticket

    def _revoke_expired(self) -> bool:
        """Take back one slot whose lease ran out (lock held); whether one was."""
        now = time.monotonic()
        for ticket, until in self._leased.items():
            if until <= now:
                logger.warning(
                    "%s: a holder did not finish within its lease; its slot goes to the next caller",
                    self.what,
                )
                ticket._release_locked()
                return True
        return False

    def held_ticket(self) -> Ticket | None:
        """The slot the interceptor took for this call (see :data:`ADMITTED`), if it took one."""
        return next((t for t in ADMITTED.get() if t.slots is self), None)

    def claim(self) -> Ticket:
        """The slot the interceptor took for this call when it arrived (see :data:`ADMITTED`), else a new one
        (in-process use without the interceptor).

        Raises:
            Overloaded: no ticket was taken on arrival and all ``limit`` slots are held.
        """
        return self.held_ticket() or self.take()


class Ticket:
    """One held slot of a :class:`Slots`. :meth:`release` is idempotent: the servicer releases a slot as soon
    as the stage it guards is over (a ScoreCase's decoding), the interceptor when the call ends, and a
    finaliser if the call's behaviour never ran (gRPC dropped the call after the interceptor admitted it)."""

    __slots__ = ("slots", "_held")

    def __init__(self, slots: Slots) -> None:
        self.slots = slots
        self._held = True

    def keep(self) -> None:
        """End the lease: the holder got what it waited for and keeps the slot until it releases it."""
        with self.slots._lock:
            self.slots._leased.pop(self, None)

    def release(self) -> None:
        with self.slots._lock:
            self._release_locked()

    def _release_locked(self) -> None:
        self.slots._leased.pop(self, None)
        if self._held:
            self._held = False
            self.slots.held -= 1
            self.slots._lock.notify()


# The slots the interceptor took for the call this thread is serving (on arrival, and before reading its
# request); the servicer claims its own from here instead of taking a second one.
ADMITTED: contextvars.ContextVar[tuple[Ticket, ...]] = contextvars.ContextVar("dqe_admitted", default=())


class DecodeBudget:
    """Bytes of inflated NIfTI the server holds for calls being decoded, with a hard server-wide maximum.

    A call reserves each volume's declared size before inflating it and releases everything once its views are
    built (or it failed); a reservation that does not fit is refused at once.
    """

    def __init__(self, limit_bytes: int, what: str = "decoding", setting: str = "decode_budget_mb") -> None:
        self.limit = limit_bytes
        self.what = what
        self.setting = setting
        self.used = 0
        self.peak = 0
        self._lock = threading.Lock()

    def reserve(self, nbytes: int) -> None:
        """Reserve ``nbytes``.

        Raises:
            InvalidInput: more than the whole budget (this server can never decode it).
            Overloaded: the budget cannot hold it now.
        """
        if nbytes > self.limit:
            raise InvalidInput(
                f"{self.what}: {nbytes} bytes; this server holds at most {self.limit} at once "
                f"(setting {self.setting})",
                field="files",
            )
        with self._lock:
            if self.used + nbytes > self.limit:
                raise Overloaded(
                    f"{self.what}: {self.used} of {self.limit} bytes in use; {nbytes} more do not fit; retry "
                    f"with backoff (setting {self.setting})",
                    field=self.setting,
                )
            self.used += nbytes
            self.peak = max(self.peak, self.used)

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.used -= nbytes


class Reservation:
    """One call's share of a :class:`DecodeBudget`: reserve per volume, release all at once (thread-safe)."""

    def __init__(self, budget: DecodeBudget) -> None:
        self.budget = budget
        self.held = 0
        self._lock = threading.Lock()

    def reserve(self, nbytes: int) -> None:
        self.budget.reserve(nbytes)
        with self._lock:
            self.held += nbytes

    def release(self) -> None:
        with self._lock:
            held, self.held = self.held, 0
        if held:
            self.budget.release(held)


@dataclass
class Runtime:
    """What the servicer needs; the engine and batcher appear once the model is loaded and warm."""

    config: ServerConfig
    decode_pool: ThreadPoolExecutor
    paths: PathPolicy
    engine: Engine | None = None
    batcher: DynamicBatcher | None = None
    budget: DecodeBudget = field(default_factory=lambda: DecodeBudget(1 << 30))
    pending: DecodeBudget = field(
        default_factory=lambda: DecodeBudget(768 << 20, "ScoreCase requests pending", "max_pending_mb")
    )
    decodes: Slots = field(default_factory=lambda: Slots(64, "decoding", "max_pending_decodes"))
    receiving: Slots = field(default_factory=lambda: Slots(4, "requests received", "max_receiving"))
    receiving_views: Slots = field(
        default_factory=lambda: Slots(16, "ScoreViews requests received", "max_receiving_views")
    )
    streams: Slots = field(default_factory=lambda: Slots(64, "ScoreBatch streams", "max_streams"))
    # Decode buffers reused across calls (no fresh memory per request); bounded by the decode budget.
    buffers: BufferPool | None = None
    decode_s: float = 0.0  # moving average of one case's decode + preprocessing time (seconds)

    def observe_decode(self, seconds: float) -> None:
        """Feed one case's decode + preprocessing time into the moving average (weight 0.2)."""
        self.decode_s = seconds if self.decode_s == 0.0 else 0.8 * self.decode_s + 0.2 * seconds

    def expected_decode_wait(self) -> float:
        """Seconds a case queued now would wait before its decoding starts (from the moving average)."""
        ahead = max(self.decodes.held - self.config.decode_workers, 0)
        return ahead * self.decode_s / self.config.decode_workers

    def admit(self, policy: MethodPolicy) -> Ticket | None:
        """Take the queue slot a call's ``policy`` names (``queue``), when the call arrives (before its request is
        read; see :class:`dqe.service.serving.interceptor.ServiceInterceptor`): a decode slot for ``ScoreCase``,
        a stream slot for ``ScoreBatch``, nothing for methods without a queue.

        Raises:
            Overloaded: that queue is full (the caller gets RESOURCE_EXHAUSTED without sending its request).
        """
        return None if policy.queue is None else self.slots(policy.queue).take()

    def slots(self, name: str) -> Slots:
        """The slots a :class:`MethodPolicy` names (``decodes``, ``streams``, ``receiving``, ...)."""
        found = getattr(self, name)
        assert isinstance(found, Slots), name
        return found

    def turn(self, policy: MethodPolicy, context: grpc.ServicerContext) -> Ticket | None:
        """Wait until an admitted call may receive its request (called before the interceptor reads it): for one
        of the ``policy.turn`` slots (``ScoreCase``: ``max_receiving``, held until its decoding is over, so the
        bodies of the calls queued behind stay at the client by HTTP/2 flow control instead of piling up in the
        server; ``ScoreViews``: ``max_receiving_views``, held until it ends). The slot is leased for
        ``receive_lease_s``: a caller whose request has not arrived by then (a stalled or trickling sender)
        loses it to the next call and goes on waiting without it. Methods without ``turn`` do not wait.

        Returns:
            The receiving slot (the interceptor calls :meth:`Ticket.keep` once the request arrived), or ``None``.

        Raises:
            Overloaded: with ``policy.predict_wait``, the decoding queued ahead of the call (from the moving
                average of decode times) would outlast its deadline; refused now instead of at the deadline.
            DeadlineExpired, CallCancelled: the deadline passed or the caller left while it waited.
        """
        if policy.turn is None:
            return None
        call = CallInfo(context, self.config.max_call_s)
        if policy.predict_wait:
            wait, left = self.expected_decode_wait(), call.remaining()
            if left is not None and wait > left:
                raise Overloaded(
                    f"about {wait:.1f} s of decoding is queued ahead of this call, more than its {left:.1f} s "
                    "deadline; retry with backoff",
                    field="deadline",
                )
        return self._take_turn(self.slots(policy.turn), call, policy.turn_stage)

    def _take_turn(self, slots: Slots, call: CallInfo, stage: str) -> Ticket:
        ticket = slots.take_waiting(call, stage, self.config.receive_lease_s)
        ADMITTED.set((*ADMITTED.get(), ticket))
        return ticket

    def ready(self) -> tuple[Engine, DynamicBatcher]:
        """The engine and batcher.

        Raises:
            ModelNotReady: still loading or warming up (clients should retry).
        """
        if self.engine is None or self.batcher is None:
            raise ModelNotReady("the model is loading or warming up; retry shortly", field="server")
        return self.engine, self.batcher


# gRPC reports "no deadline" as a huge time_remaining() (about 9.2e18 s, gpr_inf_future); anything beyond a
# year is treated as none, so it can never overflow a timeout downstream.
NO_DEADLINE_S = 365 * 24 * 3600.0


class CallInfo:
    """Deadline and liveness of the call being served.

    Args:
        context: the call (``None`` for in-process use: no deadline, always active).
        max_call_s: the server's own limit on one call's processing time (0 = none). A call without a
            deadline (most generated stubs and generic clients send none) runs "as long as it takes", up to
            this limit; a call with a deadline keeps the earlier of the two.
    """

    def __init__(self, context: grpc.ServicerContext | None, max_call_s: float = 0.0) -> None:
        self.cancelled = threading.Event()
        remaining = context.time_remaining() if context is not None else None
        if remaining is not None and remaining > NO_DEADLINE_S:
            remaining = None
        if max_call_s > 0:
            remaining = max_call_s if remaining is None else min(remaining, max_call_s)
        self.deadline = time.monotonic() + remaining if remaining is not None else None
        self._context = context

    def is_active(self) -> bool:
        if self.cancelled.is_set():
            return False
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
        """``future.result()`` within the deadline; when it runs out the future is cancelled and running work
        is told to stop (:meth:`is_active` turns False, so decoding stops at its next chunk).

        Errors raised by the work are re-raised without their traceback (whose frames would keep request
        buffers alive until a full garbage collection).
        """
        try:
            return future.result(timeout=self.remaining())
        except FutureTimeout:
            future.cancel()
            self.cancelled.set()
            raise DeadlineExpired(f"the call's deadline passed during {stage}", field="deadline") from None
        except BaseException as exc:
            drop_traceback(exc)
            raise exc.with_traceback(None) from None
        finally:
            del future


def drop_traceback(exc: BaseException) -> None:
    """Clear the frames of ``exc``'s traceback (and of the exceptions chained to it) so that the buffers their
    locals hold are freed now, not at the next full garbage collection."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if current.__traceback__ is not None:
            traceback.clear_frames(current.__traceback__)
            current.__traceback__ = None
        nxt = current.__cause__ or current.__context__
        current.__cause__ = current.__context__ = None
        current = nxt
