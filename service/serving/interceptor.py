"""The one place where errors become gRPC status codes, plus auth, request ids, metrics and call logs.

Every call goes through :class:`ServiceInterceptor`:

* a request id (the caller's ``x-request-id`` metadata, else a fresh one) is sent back in the initial
  metadata, set in a context variable for log records and the response, and logged with the outcome;
* when a bearer token is configured, calls other than health checks must carry
  ``authorization: Bearer <token>`` (else UNAUTHENTICATED);
* a :class:`dqe.models.errors.DQEError` becomes its ``code`` with a message naming the field and the value
  (trailing metadata ``dqe-error-field`` / ``dqe-error-kind``); anything else becomes INTERNAL with the
  traceback logged and only the request id sent.
"""

from __future__ import annotations

import contextlib
import contextvars
import hmac
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from dqe.models.errors import DQEError, Unauthenticated
from dqe.service.serving.telemetry import Metrics

logger = logging.getLogger(__name__)

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("dqe_request_id", default="-")
AUTH_EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


def current_request_id() -> str:
    """The id of the call this thread is handling (``"-"`` outside a call)."""
    return REQUEST_ID.get()


def error_message(exc: DQEError) -> str:
    """The status message: the error's message, prefixed with its field when the message does not name it."""
    if exc.field and not exc.message.startswith(exc.field):
        return f"{exc.field}: {exc.message}"
    return exc.message


def status_code(exc: DQEError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN)


def abort_with(context: grpc.ServicerContext, exc: DQEError) -> None:
    """End the call with ``exc``'s status (raises, as ``context.abort`` does)."""
    context.set_trailing_metadata((("dqe-error-field", exc.field or ""), ("dqe-error-kind", exc.kind)))
    context.abort(status_code(exc), error_message(exc))


class ServiceInterceptor(grpc.ServerInterceptor):
    """Auth, request ids, error mapping, metrics and one log line per call."""

    def __init__(self, token: str = "", metrics: Metrics | None = None) -> None:
        self._token = token.encode() if token else b""
        self._metrics = metrics

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
        rid = str(metadata.get("x-request-id") or uuid.uuid4().hex[:16])[:64]
        auth_error = self._auth_error(method, metadata)
        return _wrap(
            handler, lambda behavior, streaming: self._guard(behavior, streaming, method, rid, auth_error)
        )

    def _auth_error(self, method: str, metadata: dict[str, Any]) -> Unauthenticated | None:
        if not self._token or method.startswith(AUTH_EXEMPT_PREFIXES):
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
        auth_error: DQEError | None,
    ) -> Callable[..., Any]:
        if streaming:

            def stream_behavior(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                token = self._enter(context, rid)
                start = time.perf_counter()
                try:
                    if auth_error is not None:
                        raise auth_error
                    yield from behavior(request, context)
                except BaseException as exc:
                    self._handle(exc, context, method, rid)
                finally:
                    self._exit(context, method, rid, start, token)

            return stream_behavior

        def unary_behavior(request: Any, context: grpc.ServicerContext) -> Any:
            token = self._enter(context, rid)
            start = time.perf_counter()
            try:
                if auth_error is not None:
                    raise auth_error
                return behavior(request, context)
            except BaseException as exc:
                self._handle(exc, context, method, rid)
            finally:
                self._exit(context, method, rid, start, token)

        return unary_behavior

    def _enter(self, context: grpc.ServicerContext, rid: str) -> contextvars.Token[str]:
        token = REQUEST_ID.set(rid)
        with contextlib.suppress(ValueError):  # metadata already sent by the handler
            context.send_initial_metadata((("x-request-id", rid),))
        if self._metrics is not None:
            self._metrics.in_flight.inc()
        return token

    def _handle(self, exc: BaseException, context: grpc.ServicerContext, method: str, rid: str) -> None:
        if isinstance(exc, DQEError):
            abort_with(context, exc)
        if isinstance(exc, GeneratorExit) or _already_aborted(context):
            raise exc
        logger.error("unhandled error in %s [request %s]", method, rid, exc_info=exc)
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
    ) -> None:
        elapsed = time.perf_counter() - start
        code = _code_name(context)
        if self._metrics is not None:
            self._metrics.in_flight.dec()
            self._metrics.requests.labels(method, code).inc()
            self._metrics.latency.labels(method).observe(elapsed)
            if code != "OK":
                self._metrics.errors.labels(method, code).inc()
        # Probes call health every few seconds: keep them out of the INFO log unless they fail.
        quiet = method.startswith(AUTH_EXEMPT_PREFIXES) and code == "OK"
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


def _wrap(
    handler: grpc.RpcMethodHandler, guard: Callable[[Callable[..., Any], bool], Callable[..., Any]]
) -> grpc.RpcMethodHandler:
    """A copy of ``handler`` whose behaviour runs inside ``guard``."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(guard(handler.unary_unary, False), **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(guard(handler.unary_stream, True), **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(guard(handler.stream_unary, False), **kwargs)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(guard(handler.stream_stream, True), **kwargs)
