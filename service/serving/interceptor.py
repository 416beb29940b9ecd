"""The one place where errors become gRPC status codes, plus auth, request ids, metrics and call logs.

Every call goes through :class:`ServiceInterceptor`, which reads what a method gets from its entry in the
method-policy table (:data:`dqe.service.serving.policy.METHODS`), never from its name:

* a request id (the caller's ``x-request-id`` metadata when it is 1-64 characters of ``[A-Za-z0-9._:-]``,
  else a fresh one, with the caller's value logged beside it, truncated) is sent back in the initial
  metadata, set in a context variable for log records and the response, and logged with the outcome;
* when a bearer token is configured, calls to methods whose policy has ``auth`` (all but health) must carry
  ``authorization: Bearer <token>``. The token is checked here, from the metadata, before gRPC reads the
  request: a call without a valid token gets a handler that takes the request as a stream and never reads it,
  so its message is neither received into Python, deserialised nor decoded (gRPC core still buffers what
  HTTP/2 flow control lets the client send before the UNAUTHENTICATED status resets the stream: at most the
  stream's window, a few MiB);
* ``control`` methods (health ``Check``, ``GetModelInfo``) run on their own small thread pool, answered whatever the
  scoring load;
* a scoring call is admitted when it arrives, before its request is read: it takes a handler-thread slot (at
  most ``max_scoring_calls``) and its queue's slot (:meth:`Runtime.admit`: pending ScoreCase decodes, open
  ScoreBatch streams) and holds them until it ends. When either is full the call is refused with
  RESOURCE_EXHAUSTED at once, without reading its request, on a small refusal pool of its own, so a burst
  beyond capacity costs neither memory for its request bodies nor handler threads;
* a :class:`dqe.models.errors.DQEError` becomes its ``code`` with a message naming the field and the value
  (trailing metadata ``dqe-error-field`` / ``dqe-error-kind``); anything else becomes INTERNAL with the
  traceback logged and only the request id sent.
"""

from __future__ import annotations

import contextlib
import contextvars
import hmac
import logging
import re
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from dqe.models.errors import CallCancelled, DQEError, InvalidInput, Overloaded, Unauthenticated
from dqe.service.serving.policy import METHODS, MethodPolicy, policy_for
from dqe.service.serving.runtime import ADMITTED, Slots, Ticket, drop_traceback
from dqe.service.serving.telemetry import Metrics

logger = logging.getLogger(__name__)

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("dqe_request_id", default="-")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
MAX_STATUS_CHARS = 1000  # status messages are cut to this (they may quote client values)


def current_request_id() -> str:
    """The id of the call this thread is handling (``"-"`` outside a call)."""
    return REQUEST_ID.get()


def error_message(exc: DQEError) -> str:
    """The status message: the error's message, prefixed with its field when the message does not name it,
    cut to 1000 characters."""
    text = (
        f"{exc.field}: {exc.message}" if exc.field and not exc.message.startswith(exc.field) else exc.message
    )
    return text if len(text) <= MAX_STATUS_CHARS else text[:MAX_STATUS_CHARS] + "...[truncated]"


def request_id(given: Any) -> tuple[str, str]:
    """The id to use for a call and the client's rejected value (``""`` when it was used or absent)."""
    value = "" if given is None else str(given)
    if value and _REQUEST_ID.fullmatch(value):
        return value, ""
    return uuid.uuid4().hex[:16], value[:64] + ("...[truncated]" if len(value) > 64 else "")


def status_code(exc: DQEError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN)


def abort_with(context: grpc.ServicerContext, exc: DQEError) -> None:
    """End the call with ``exc``'s status (raises, as ``context.abort`` does)."""
    context.set_trailing_metadata((("dqe-error-field", exc.field or ""), ("dqe-error-kind", exc.kind)))
    context.abort(status_code(exc), error_message(exc))


class ServiceInterceptor(grpc.ServerInterceptor):
    """Auth, request ids, error mapping, metrics and one log line per call."""

    def __init__(
        self,
        token: str = "",
        metrics: Metrics | None = None,
        control_pool: ThreadPoolExecutor | None = None,
        max_scoring_calls: int = 0,
        max_calls: int = 0,
        admission: Callable[[MethodPolicy], Ticket | None] | None = None,
        refusal_pool: ThreadPoolExecutor | None = None,
        turn: Callable[[MethodPolicy, grpc.ServicerContext], Ticket | None] | None = None,
        policies: Mapping[str, MethodPolicy] = METHODS,
    ) -> None:
        self._token = token.encode() if token else b""
        self._metrics = metrics
        self._control_pool = control_pool
        self._refusal_pool = refusal_pool
        self._admission = admission
        self._turn = turn
        self._policies = policies
        # Our own limit on calls in progress, in place of gRPC's maximum_concurrent_rpcs, which refuses health
        # checks too: control methods (health Check, GetModelInfo) are not counted; health watches are, as they hold a thread.
        self.calls = Slots(max_calls, "calls in progress", "max_concurrent_rpcs") if max_calls else None
        self.scoring = (
            Slots(max_scoring_calls, "scoring calls in progress", "handler_threads")
            if max_scoring_calls
            else None
        )

    # ------------------------------------------------------------------ grpc hook
    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        metadata = {k.lower(): v for k, v in (handler_call_details.invocation_metadata or ())}  # type: ignore[attr-defined]
        rid, rejected = request_id(metadata.get("x-request-id"))
        if rejected:
            logger.info(
                "request id %r from the client is not 1-64 of [A-Za-z0-9._:-]; using %s",
                rejected,
                rid,
                extra={"event": "request_id_replaced", "client_request_id": rejected, "request_id": rid},
            )
        policy = policy_for(method, self._policies)
        auth_error = self._auth_error(policy, metadata)
        if auth_error is not None:
            return self._refusal(handler, method, rid, auth_error, policy)
        pool = self._control_pool if policy.control else None
        counted = self.calls is not None and not policy.control
        if not counted and not policy.scoring and policy.queue is None and policy.turn is None:
            return _wrap(
                handler,
                lambda behavior, streaming: self._guard(behavior, streaming, method, rid, policy),
                pool,
                lenient_stream=policy.lenient_stream,
            )
        try:
            tickets = self._admit(policy)
        except Overloaded as exc:
            return self._refusal(handler, method, rid, exc, policy)
        if not policy.scoring and policy.queue is None and policy.turn is None:
            return self._hold(
                _wrap(
                    handler,
                    lambda behavior, streaming: self._guard(
                        behavior, streaming, method, rid, policy, tickets
                    ),
                    lenient_stream=policy.lenient_stream,
                ),
                tickets,
            )
        lenient = policy.lenient_stream
        if self._turn is not None and policy.turn is not None and handler.unary_unary is not None:
            handler = _received_in_turn(handler, lambda context: self._turn(policy, context))  # type: ignore[misc]
            lenient = (
                True  # a unary request taken as a stream: it still parses leniently, as unary requests do
            )
        wrapped = _wrap(
            handler,
            lambda behavior, streaming: self._guard(behavior, streaming, method, rid, policy, tickets),
            lenient_stream=lenient,
        )
        return self._hold(wrapped, tickets)

    @staticmethod
    def _hold(wrapped: grpc.RpcMethodHandler, tickets: tuple[Ticket, ...]) -> grpc.RpcMethodHandler:
        """``wrapped``, whose slots are also released when gRPC lets go of it without running its behaviour (a
        caller gone before its request arrived)."""
        behaviour = next(b for b in (wrapped.unary_unary, wrapped.unary_stream, wrapped.stream_unary,
                                     wrapped.stream_stream) if b is not None)  # fmt: skip
        weakref.finalize(behaviour, _release, tickets)
        return wrapped

    def _admit(self, policy: MethodPolicy) -> tuple[Ticket, ...]:
        """The slots a scoring call holds from its arrival (before its request is read) until it ends: a
        handler thread and its queue's slot (:meth:`Runtime.admit`).

        Raises:
            Overloaded: either is full; the call is refused at once, without reading its request.
        """
        tickets: list[Ticket] = []
        try:
            if self.calls is not None and not policy.control:
                tickets.append(self.calls.take())
            if self.scoring is not None and policy.scoring:
                tickets.append(self.scoring.take())
            queued = self._admission(policy) if self._admission is not None else None
            if queued is not None:
                tickets.append(queued)
        except Overloaded:
            _release(tickets)
            raise
        return tuple(tickets)

    def _refusal(
        self, handler: grpc.RpcMethodHandler, method: str, rid: str, error: DQEError, policy: MethodPolicy
    ) -> grpc.RpcMethodHandler:
        """A handler that ends the call with ``error`` without reading its request, on the refusal pool.

        It takes the request as a stream (whatever the method's real shape; the wire format is the same) and
        never iterates it, so gRPC never receives the message into Python nor calls a deserialiser; what gRPC
        core buffers is what HTTP/2 flow control let the client send before the status closed the stream. It
        runs on its own small pool, so a burst of refusals neither waits behind nor holds the handler threads.
        """

        def refuse(request_iterator: Any, context: grpc.ServicerContext) -> Any:
            token = self._enter(context, rid, policy)
            start = time.perf_counter()
            try:
                self._handle(error, context, method, rid)
            finally:
                self._exit(context, method, rid, start, token, policy)

        def refuse_stream(request_iterator: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            refuse(request_iterator, context)
            yield from ()

        kwargs = {"request_deserializer": _skip, "response_serializer": handler.response_serializer}
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                _on_pool(refuse_stream, self._refusal_pool), **kwargs
            )
        return grpc.stream_unary_rpc_method_handler(_on_pool(refuse, self._refusal_pool), **kwargs)

    def _auth_error(self, policy: MethodPolicy, metadata: dict[str, Any]) -> Unauthenticated | None:
        if not self._token or not policy.auth:
            return None
        value = metadata.get("authorization")
        if not value:
            return Unauthenticated(
                "missing 'authorization' metadata; expected 'Bearer <token>'", field="authorization"
            )
        scheme, _, given = str(value).partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token):
            return Unauthenticated("the bearer token in 'authorization' is not valid", field="authorization")
        return None

    # ------------------------------------------------------------------ wrapping
    def _guard(
        self,
        behavior: Callable[..., Any],
        streaming: bool,
        method: str,
        rid: str,
        policy: MethodPolicy,
        tickets: tuple[Ticket, ...] = (),
    ) -> Callable[..., Any]:
        if streaming:

            def stream_behavior(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                token = self._enter(context, rid, policy)
                admitted = ADMITTED.set(tickets)
                start = time.perf_counter()
                try:
                    if isinstance(request, Undecodable):
                        raise request.error()
                    yield from behavior(request, context)
                except BaseException as exc:
                    self._handle(exc, context, method, rid)
                finally:
                    _release((*tickets, *ADMITTED.get()))
                    with contextlib.suppress(ValueError):  # a generator closed from another thread's context
                        ADMITTED.reset(admitted)
                    self._exit(context, method, rid, start, token, policy)

            return stream_behavior

        def unary_behavior(request: Any, context: grpc.ServicerContext) -> Any:
            token = self._enter(context, rid, policy)
            admitted = ADMITTED.set(tickets)
            start = time.perf_counter()
            try:
                if isinstance(request, Undecodable):
                    raise request.error()
                return behavior(request, context)
            except BaseException as exc:
                self._handle(exc, context, method, rid)
            finally:
                _release((*tickets, *ADMITTED.get()))
                ADMITTED.reset(admitted)
                self._exit(context, method, rid, start, token, policy)

        return unary_behavior

    def _enter(self, context: grpc.ServicerContext, rid: str, policy: MethodPolicy) -> contextvars.Token[str]:
        token = REQUEST_ID.set(rid)
        with contextlib.suppress(ValueError):  # metadata already sent by the handler
            context.send_initial_metadata((("x-request-id", rid),))
        if self._metrics is not None and policy.in_flight:
            self._metrics.in_flight.inc()
        return token

    def _handle(self, exc: BaseException, context: grpc.ServicerContext, method: str, rid: str) -> None:
        if isinstance(exc, DQEError):
            # The traceback's frames hold the request's buffers: drop them now, not at the next full GC.
            drop_traceback(exc)
            abort_with(context, exc)
        if isinstance(exc, GeneratorExit) or _already_aborted(context):
            raise exc
        logger.error("unhandled error in %s [request %s]", method, rid, exc_info=exc)
        drop_traceback(exc)
        context.set_trailing_metadata((("dqe-error-kind", "InternalError"),))
        context.abort(
            grpc.StatusCode.INTERNAL, f"internal server error (request id {rid}); see the server log"
        )

    def _exit(
        self,
        context: grpc.ServicerContext,
        method: str,
        rid: str,
        start: float,
        token: contextvars.Token[str],
        policy: MethodPolicy,
    ) -> None:
        elapsed = time.perf_counter() - start
        code = _code_name(context)
        if self._metrics is not None:
            if policy.in_flight:
                self._metrics.in_flight.dec()
            self._metrics.requests.labels(method, code).inc()
            self._metrics.latency.labels(method).observe(elapsed)
            if code != "OK":
                self._metrics.errors.labels(method, code).inc()
        # Probes call health every few seconds: keep them out of the INFO log unless they fail.
        quiet = not policy.auth and code == "OK"
        logger.log(
            logging.DEBUG if quiet else logging.INFO,
            "rpc %s %s %.1f ms",
            method,
            code,
            elapsed * 1e3,
            extra={
                "event": "rpc",
                "method": method,
                "code": code,
                "duration_ms": round(elapsed * 1e3, 3),
                "peer": _peer(context),
            },
        )
        with contextlib.suppress(ValueError):  # a generator closed from another thread's context
            REQUEST_ID.reset(token)


def _already_aborted(context: grpc.ServicerContext) -> bool:
    try:
        return context.code() is not None  # type: ignore[attr-defined]
    except (AttributeError, NotImplementedError):
        return False


def _code_name(context: grpc.ServicerContext) -> str:
    try:
        code = context.code()  # type: ignore[attr-defined]
    except (AttributeError, NotImplementedError):
        code = None
    if code is None:
        return "OK"
    return str(code.name)


def _peer(context: grpc.ServicerContext) -> str:
    try:
        return str(context.peer())
    except Exception:
        return ""


def _received_in_turn(
    handler: grpc.RpcMethodHandler, turn: Callable[[grpc.ServicerContext], Ticket | None]
) -> grpc.RpcMethodHandler:
    """``handler`` (unary request, unary response) taking its request as a stream, read only once ``turn``
    returns: until then gRPC does not receive the message, and HTTP/2 flow control holds the body at the client
    (the wire format is the same for any client)."""
    unary = handler.unary_unary

    def behaviour(request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        ticket = turn(context)
        try:
            request = next(request_iterator, None)
        except grpc.RpcError:  # gRPC's request iterator raises this when the caller cancelled meanwhile
            raise CallCancelled("the caller went away before its request arrived") from None
        if ticket is not None:
            ticket.keep()
        if request is None:
            if not context.is_active():
                raise CallCancelled("the caller went away before its request arrived")
            raise InvalidInput("the call ended without a request message", field="request")
        if isinstance(request, Undecodable):
            raise request.error()
        return unary(request, context)

    return grpc.stream_unary_rpc_method_handler(
        behaviour,
        request_deserializer=handler.request_deserializer,  # made lenient by _wrap(lenient_stream=True)
        response_serializer=handler.response_serializer,
    )


class Undecodable:
    """What :func:`_lenient` returns for bytes that are not the method's request message."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def error(self) -> InvalidInput:
        return InvalidInput(
            f"the request is not a valid protobuf message for this method ({self.reason[:200]})",
            field="request",
        )


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` returning an :class:`Undecodable` instead of raising, so the call can be answered with
    INVALID_ARGUMENT (gRPC answers a deserialiser's exception with INTERNAL and logs a traceback)."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return Undecodable(f"{type(exc).__name__}: {exc}")

    return parse


def _release(tickets: tuple[Ticket, ...] | list[Ticket]) -> None:
    for ticket in tickets:
        ticket.release()


def _skip(data: bytes) -> bytes:
    """A request deserialiser that parses nothing (``None`` would read as a deserialisation failure)."""
    return b""


def _on_pool(behavior: Callable[..., Any], pool: ThreadPoolExecutor | None) -> Callable[..., Any]:
    """``behavior`` marked to run on ``pool`` (gRPC's ``experimental_thread_pool`` hook) when one is given."""
    if pool is not None:
        behavior.experimental_thread_pool = pool  # type: ignore[attr-defined]
    return behavior


def _wrap(
    handler: grpc.RpcMethodHandler,
    guard: Callable[[Callable[..., Any], bool], Callable[..., Any]],
    pool: ThreadPoolExecutor | None = None,
    lenient_stream: bool = False,
) -> grpc.RpcMethodHandler:
    """A copy of ``handler`` whose behaviour runs inside ``guard`` (on ``pool`` when given, unary only).

    A unary request that does not parse reaches the guard as an :class:`Undecodable` and becomes
    INVALID_ARGUMENT (gRPC would answer INTERNAL); stream items do so only with ``lenient_stream`` (the
    behaviour must expect :class:`Undecodable` items), else gRPC's own handling applies."""
    deserializer = handler.request_deserializer
    lenient = lenient_stream or not handler.request_streaming
    kwargs = {
        "request_deserializer": _lenient(deserializer) if lenient else deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _on_pool(guard(handler.unary_unary, False), pool), **kwargs
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(guard(handler.unary_stream, True), **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(guard(handler.stream_unary, False), **kwargs)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(guard(handler.stream_stream, True), **kwargs)
