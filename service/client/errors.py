"""Server errors as the :class:`dqe.models.errors.DQEError` subclasses local scoring raises."""

from __future__ import annotations

import logging

import grpc

import dqe.models.errors as errors
from dqe.models.errors import DQEError
from dqe.service._proto import quality_estimation_pb2 as pb

logger = logging.getLogger(__name__)

_CODE_CLASSES: dict[str, type[DQEError]] = {
    "INVALID_ARGUMENT": errors.InvalidInput,
    "NOT_FOUND": errors.NotFound,
    "PERMISSION_DENIED": errors.PermissionDenied,
    "UNAUTHENTICATED": errors.Unauthenticated,
    "UNAVAILABLE": errors.ModelNotReady,
    "RESOURCE_EXHAUSTED": errors.Overloaded,
    "FAILED_PRECONDITION": errors.UnsupportedMode,
}


class RemoteError(DQEError):
    """A server error with a status code outside the domain hierarchy (DEADLINE_EXCEEDED, INTERNAL, ...)."""

    def __init__(
        self, message: str, *, code: str, field: str | None = None, kind: str = "RemoteError"
    ) -> None:
        super().__init__(message, field=field)
        self.code = code
        self._kind = kind

    @property
    def kind(self) -> str:
        return self._kind


def error_from_rpc(err: grpc.RpcError) -> DQEError:
    """The :class:`DQEError` a failed call stands for (class from the server's ``dqe-error-kind``)."""
    code = err.code().name if callable(getattr(err, "code", None)) else "UNKNOWN"  # type: ignore[attr-defined]
    details = str(err.details() or "") if callable(getattr(err, "details", None)) else str(err)  # type: ignore[attr-defined]
    trailing = {}
    if callable(getattr(err, "trailing_metadata", None)):
        trailing = {k: v for k, v in (err.trailing_metadata() or ())}  # type: ignore[attr-defined]
    field_name = str(trailing.get("dqe-error-field") or "") or None
    kind = str(trailing.get("dqe-error-kind") or "")
    if field_name and details.startswith(f"{field_name}: "):
        details = details[len(field_name) + 2 :]
    cls = getattr(errors, kind, None) if kind else None
    if isinstance(cls, type) and issubclass(cls, DQEError) and cls.code == code:
        return cls(details, field=field_name)
    if code in _CODE_CLASSES:
        return _CODE_CLASSES[code](details, field=field_name)
    return RemoteError(
        details or code, code=code, field=field_name, kind=kind or code.title().replace("_", "")
    )


def item_error(e: pb.ItemError) -> DQEError:
    cls = getattr(errors, e.kind, None)
    if isinstance(cls, type) and issubclass(cls, DQEError) and cls.code == e.code:
        return cls(e.message, field=e.field or None)
    return RemoteError(e.message, code=e.code, field=e.field or None, kind=e.kind or e.code)
